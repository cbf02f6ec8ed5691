"""AWS's IAM policy evaluation, as a maintained library implements it: @cloud-copilot/iam-simulate
(npm; every condition operator, explicit deny over allow, resource and action matching), run by
tests/iam/evaluate.mjs in one long-lived `node` process for the whole test session.

Its packages are installed with `npm ci --prefix tests/iam` (`.ci/run` does it). Without node or
them, a test that needs the evaluator skips, saying so (not allowed in CI)."""

from __future__ import annotations

import atexit
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent / "iam"
ACCOUNT = "123456789012"
_process: list[subprocess.Popen[str]] = []
# A KMS key authorizes by its own key policy first: the default one, which lets the account's
# IAM policies decide (as the environment's key has it).
DEFAULT_KEY_POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Sid": "Enable IAM User Permissions",
            "Effect": "Allow",
            "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"},
            "Action": "kms:*",
            "Resource": "*",
        }
    ],
}


def _evaluator() -> subprocess.Popen[str]:
    if _process and _process[0].poll() is None:
        return _process[0]
    node = shutil.which("node")
    if node is None or not (HERE / "node_modules" / "@cloud-copilot" / "iam-simulate").is_dir():
        pytest.skip("the IAM evaluator needs node and its packages: npm ci --prefix tests/iam")
    # At a lower priority (coreutils' nice): the policy mutation run keeps it busy for a minute
    # or more, beside the other worker's Terraform and emulator.
    started = subprocess.Popen(
        ["nice", "-n", "10", node, str(HERE / "evaluate.mjs")],
        cwd=HERE,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    _process[:] = [started]
    atexit.register(started.kill)
    return started


# A condition key the library does not take: KMS's encryption context keys
# (`kms:EncryptionContext:KEY`; it matches a key's variable part only after a `/`). S3's is
# renamed to a global key with a variable part, the same way in the policy and in the request:
# a condition operator compares values whatever the key is called, so the decision is the same.
RENAMED = {"kms:EncryptionContext:aws:s3:arn": "aws:PrincipalTag/kms-encryption-context-s3-arn"}


def _renamed(value: Any) -> Any:
    if isinstance(value, dict):
        return {RENAMED.get(k, k): _renamed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_renamed(v) for v in value]
    return value


# Every answer, by its request: the library is deterministic, and the policy mutation run
# (tests/iam_mutants.py) asks the same requests of many policies.
_answers: dict[str, dict[str, Any]] = {}
# The requests asked while recording (`recording()`), cached or not, in order.
_recorded: list[list[dict[str, Any]]] = []


def _send(payload: Any) -> Any:
    process = _evaluator()
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write(json.dumps(payload) + "\n")
    process.stdin.flush()
    line = process.stdout.readline()
    assert line, "the IAM evaluator (node tests/iam/evaluate.mjs) stopped"
    return json.loads(line)


# Each policy document as given to the library, and each one's JSON, by the document's identity
# (each entry keeps its document alive, so that an id is never another's): a mutation run asks
# hundreds of requests of each of hundreds of documents. A document is not changed once asked of.
_given: dict[tuple[int, str], tuple[Any, Any]] = {}
_texts: dict[int, tuple[Any, str]] = {}


def _once(document: Any, how: str, rename: Any) -> Any:
    if not isinstance(document, dict):
        return rename(document)
    entry = _given.get((id(document), how))
    if entry is None or entry[0] is not document:
        entry = _given[(id(document), how)] = (document, rename(document))
    return entry[1]


def _text(document: dict[str, Any]) -> str:
    entry = _texts.get(id(document))
    if entry is None or entry[0] is not document:
        entry = _texts[id(document)] = (document, json.dumps(document, sort_keys=True))
    return entry[1]


def _key(asked: dict[str, Any]) -> str:
    policies = ("identity", "resourcePolicy")
    texts = {slot: _text(asked[slot]) for slot in policies if isinstance(asked[slot], dict)}
    return json.dumps({**asked, **texts}, sort_keys=True)


class Unevaluated(AssertionError):
    """The evaluator rejected a request (an error, or a context key it did not evaluate)."""


def _result(asked: dict[str, Any], answer: dict[str, Any]) -> str:
    if "error" in answer:
        raise Unevaluated(asked, answer["error"])
    if answer.get("ignored"):
        raise Unevaluated(asked, f"context keys {answer['ignored']} not evaluated")
    return str(answer["result"])


def _ask(asked: dict[str, Any]) -> str:
    for record in _recorded:
        record.append(asked)
    key = _key(asked)
    if key not in _answers:
        _answers[key] = _send(asked)
    return _result(asked, _answers[key])


def prefetch(requests: list[dict[str, Any]]) -> None:
    """Ask every request not answered yet in one exchange (an array), so that the checks then
    asking them one by one read the answers. A request the evaluator rejects is not an error
    here: the check that asks it fails, as it would have."""
    missing = {_key(asked): asked for asked in requests if _key(asked) not in _answers}
    if missing:
        answers = _send(list(missing.values()))
        assert isinstance(answers, list), answers
        _answers.update(zip(missing, answers, strict=True))


def answered_as(request: dict[str, Any], other: dict[str, Any]) -> None:
    """Answer `request` as `other` was answered (asked before): a request that differs from it
    only where the evaluation cannot tell."""
    _answers.setdefault(_key(request), _answers[_key(other)])


class recording:  # used as `with recording() as asked:`
    """The requests asked inside the block (in the shape `prefetch` takes)."""

    def __enter__(self) -> list[dict[str, Any]]:
        self.asked: list[dict[str, Any]] = []
        _recorded.append(self.asked)
        return self.asked

    def __exit__(self, *exc: object) -> None:
        _recorded.remove(self.asked)


def decide(
    identity: dict[str, Any] | None,
    action: str,
    resource: str,
    context: dict[str, str] | None = None,
    principal: str = f"arn:aws:iam::{ACCOUNT}:role/node",
) -> str:
    """ "Allowed", "ImplicitlyDenied" or "ExplicitlyDenied" for one request under `identity` (the
    principal's policy). An input the evaluator rejects (an unknown action, a context key the
    action does not take, a malformed policy) fails the test: it would otherwise read as a
    denial."""
    return _ask(request(identity, action, resource, context, principal))


def request(
    identity: dict[str, Any] | None,
    action: str,
    resource: str,
    context: dict[str, str] | None = None,
    principal: str = f"arn:aws:iam::{ACCOUNT}:role/node",
) -> dict[str, Any]:
    """The request `decide` asks (for `prefetch`)."""
    return {
        "identity": _once(identity, "", _renamed),
        "resourcePolicy": DEFAULT_KEY_POLICY if action.startswith("kms:") else None,
        "principal": principal,
        "action": action,
        "resource": resource,
        "account": ACCOUNT,
        "context": _renamed(context or {}),
    }


# A web identity token's claims as an account's own OpenID Connect provider passes them
# (`ISSUER:sub`, `ISSUER:aud`; ISSUER its host and path) are not keys the library takes for
# sts:AssumeRoleWithWebIdentity: it knows only the providers AWS lists, and would drop them
# unevaluated. They are renamed to the same claims of a provider it knows, in the trust policy and
# in the request alike (as RENAMED above).
KNOWN_PROVIDER = "accounts.google.com"


def _claims_renamed(value: Any, names: dict[str, str]) -> Any:
    if isinstance(value, dict):
        for key in value:
            assert key not in names.values(), f"{key} is the renamed claims' name already"
        return {names.get(k, k): _claims_renamed(v, names) for k, v in value.items()}
    if isinstance(value, list):
        return [_claims_renamed(v, names) for v in value]
    return value


def decide_trust(
    trust: dict[str, Any],
    principal: str,
    action: str,
    role: str,
    context: dict[str, str] | None = None,
) -> str:
    """ "Allowed", "ImplicitlyDenied" or "ExplicitlyDenied": whether `principal` (an OpenID
    Connect provider's ARN for a web identity token, or a service such as ec2.amazonaws.com) may
    assume the role `role` (its ARN) under the role's trust policy `trust`, with a token's claims
    in `context`. AWS evaluates a trust policy as the role's resource policy: a principal it names
    needs no policy of its own (none is given here), one it does not name is refused. A rejected
    input fails the test, as for `decide`."""
    names = claim_names(principal)
    return _ask(
        {
            "identity": None,
            "resourcePolicy": given_to_the_library(trust, principal, trust=True),
            "principal": principal,
            "action": action,
            "resource": role,
            "account": ACCOUNT,
            "context": _claims_renamed(context or {}, names),
        }
    )


def claim_names(principal: str) -> dict[str, str]:
    """The claim keys renamed for `principal` (an OpenID Connect provider's ARN; none for a
    service): how decide_trust gives a trust policy to the library."""
    issuer = principal.partition(":oidc-provider/")[2]
    claims = ("sub", "aud") if issuer else ()
    return {f"{issuer}:{claim}": f"{KNOWN_PROVIDER}:{claim}" for claim in claims}


def given_to_the_library(policy: dict[str, Any], principal: str, trust: bool) -> Any:
    """`policy` as a request hands it to the library: an identity policy with RENAMED keys, a
    trust policy with `principal`'s claims renamed."""
    if not trust:
        return _once(policy, "", _renamed)
    names = claim_names(principal)
    return _once(policy, json.dumps(names), lambda p: _claims_renamed(p, names))


def allowed(
    identity: dict[str, Any], action: str, resource: str, context: dict[str, str] | None = None
) -> bool:
    return decide(identity, action, resource, context) == "Allowed"
