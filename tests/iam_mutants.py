"""Mutation testing of the IAM policies as Terraform rendered them (issue 20): every small change
a careless edit of terraform/iam.tf could make to a rendered document (a statement dropped, its
effect turned, an action removed or a whole service allowed, a resource dropped or widened, a
condition dropped, loosened or negated, a principal widened), each judged by the same checks as
the real policies, through the same evaluator (tests/iam_evaluator.py).

A mutant is killed when a check fails on it. One that survives either widens nothing any request
can tell (an equivalent mutant) or shows a check missing: the test lists each survivor it expects,
with why, and fails on any other (and on a listed one that no longer survives).

The checks ask hundreds of requests of each mutant: the requests the checks asked of the real
policies are asked of the mutant in one exchange first (`iam_evaluator.prefetch`), then the checks
run as they are, reading those answers."""

from __future__ import annotations

import copy
import fnmatch
import json
from collections.abc import Callable, Iterator
from typing import Any

from tests import iam_evaluator

Policy = dict[str, Any]

# A principal each kind of principal could be widened to.
OTHER_PRINCIPAL = {
    "Service": "lambda.amazonaws.com",
    "AWS": "arn:aws:iam::210987654321:root",
    "Federated": "arn:aws:iam::210987654321:oidc-provider/elsewhere.example.com",
}
NEGATED = {
    "StringEquals": "StringNotEquals",
    "StringLike": "StringNotLike",
    "ArnEquals": "ArnNotEquals",
    "ArnLike": "ArnNotLike",
}


def _listed(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def widened(value: str, environment: str) -> list[str]:
    """What a resource ARN or a path-like condition value could be widened to: everything, each
    folder above it (`a/b/c` → `a/b/*` → `a/*`), any environment, any region and account."""
    wider: list[str] = [] if value == "*" else ["*"]
    path = value[:-2] if value.endswith("/*") else value
    while "/" in path:
        path = path.rsplit("/", 1)[0]
        wider.append(f"{path}/*")
    if f"/{environment}/" in value:
        wider.append(value.replace(f"/{environment}/", "/*/"))
    elif value.startswith(f"{environment}/"):
        wider.append("*/" + value.removeprefix(f"{environment}/"))
    parts = value.split(":", 5)
    if len(parts) == 6 and parts[0] == "arn":
        for index in (3, 4):  # region, account
            if parts[index] not in ("", "*"):
                wider.append(":".join([*parts[:index], "*", *parts[index + 1 :]]))
        if parts[2] == "s3" and "/" not in parts[5] and parts[5] != "*":
            wider.append(":".join([*parts[:5], "*"]))  # any bucket
    return [w for i, w in enumerate(wider) if w != value and w not in wider[:i]]


def mutants(policy: Policy, environment: str) -> Iterator[tuple[str, Policy]]:
    """(what changed, the mutant) for every mutation of `policy`'s statements."""
    statements = policy["Statement"]
    for index, statement in enumerate(_listed(statements)):
        name = statement.get("Sid") or f"statement {index + 1}"

        def changed(new: dict[str, Any] | None, index: int = index) -> Policy:
            mutant = copy.deepcopy(policy)
            rest = _listed(mutant["Statement"])
            mutant["Statement"] = (
                rest[:index] + ([new] if new is not None else []) + rest[index + 1 :]
            )
            return mutant

        def with_(key: str, value: Any, statement: dict[str, Any] = statement) -> dict[str, Any]:
            new = copy.deepcopy(statement)
            new[key] = value
            return new

        yield f"{name}: dropped", changed(None)
        effect = "Deny" if statement["Effect"] == "Allow" else "Allow"
        yield f"{name}: Effect {effect}", changed(with_("Effect", effect))
        actions = _listed(statement["Action"])
        for action in actions:
            if len(actions) > 1:
                yield (
                    f"{name}: without {action}",
                    changed(with_("Action", [a for a in actions if a != action])),
                )
        for service in sorted({a.split(":")[0] for a in actions if ":" in a}):
            if f"{service}:*" not in actions:
                yield f"{name}: + {service}:*", changed(with_("Action", [*actions, f"{service}:*"]))
        if "Resource" in statement:
            resources = _listed(statement["Resource"])
            for resource in resources:
                if len(resources) > 1:
                    yield (
                        f"{name}: without {resource}",
                        changed(with_("Resource", [r for r in resources if r != resource])),
                    )
                for wider in widened(resource, environment):
                    yield (
                        f"{name}: {resource} → {wider}",
                        changed(
                            with_("Resource", [wider if r == resource else r for r in resources])
                        ),
                    )
        principal = statement.get("Principal")
        if principal is not None and principal != "*":
            yield f"{name}: Principal *", changed(with_("Principal", "*"))
            for kind, named in principal.items():
                other = OTHER_PRINCIPAL[kind]
                yield (
                    f"{name}: Principal + {kind} {other}",
                    changed(with_("Principal", {**principal, kind: [*_listed(named), other]})),
                )
        for operator, keys in statement.get("Condition", {}).items():
            for key in keys:
                yield from _condition_mutants(statement, changed, name, operator, key, environment)


def _condition_mutants(
    statement: dict[str, Any],
    changed: Callable[[dict[str, Any] | None], Policy],
    name: str,
    operator: str,
    key: str,
    environment: str,
) -> Iterator[tuple[str, Policy]]:
    def condition(to: str | None, values: list[Any], keep: list[Any] | None = None) -> Policy:
        """`key` under `operator` left with `keep` (or taken out), and given `values` under
        `to` (beside what it has there)."""
        new = copy.deepcopy(statement)
        conditions = new["Condition"]
        if keep:
            conditions[operator][key] = keep
        else:
            del conditions[operator][key]
            if not conditions[operator]:
                del conditions[operator]
        if to is not None:
            there = _listed(conditions.get(to, {}).get(key, []))
            conditions.setdefault(to, {})[key] = [*there, *values]
        if not conditions:
            del new["Condition"]
        return changed(new)

    values = _listed(statement["Condition"][operator][key])
    yield f"{name}: without {operator} {key}", condition(None, [])
    if not operator.endswith("IfExists"):
        yield f"{name}: {operator}IfExists {key}", condition(f"{operator}IfExists", values)
    if operator in NEGATED:
        yield f"{name}: {NEGATED[operator]} {key}", condition(NEGATED[operator], values)
    if operator == "Bool":
        flipped = ["false" if str(v).lower() == "true" else "true" for v in values]
        yield f"{name}: {operator} {key} {flipped}", condition(operator, flipped)
    for value in values:
        rest = [v for v in values if v != value]
        if rest:
            yield f"{name}: {operator} {key} without {value}", condition(None, [], keep=rest)
        if operator in ("StringEquals", "StringLike"):
            longer = [] if str(value).endswith("*") else [f"{value}*"]
            for wider in [*longer, *widened(str(value), environment)]:
                yield (
                    f"{name}: {key} {value} → StringLike {wider}",
                    condition("StringLike", [wider], keep=rest),
                )


def _added(asked: dict[str, Any], policy: Policy, trust: bool) -> list[dict[str, Any]] | None:
    """Whether `asked` (a request the checks asked) is a request of `policy`: the statements a
    check added after policy's own ([] for none), or None when it is another policy's."""
    slot = "resourcePolicy" if trust else "identity"
    given = asked[slot]
    if not isinstance(given, dict):
        return None
    real = iam_evaluator.given_to_the_library(policy, asked["principal"], trust)
    if given is real or given == real:
        return []
    statements, own = _listed(given["Statement"]), _listed(real["Statement"])
    rest = {k: v for k, v in given.items() if k != "Statement"}
    if statements[: len(own)] != own or rest != {k: v for k, v in real.items() if k != "Statement"}:
        return None
    return statements[len(own) :]


def _actions(policy: Policy, mutant: Policy) -> list[str]:
    """The action patterns of the statements `mutant` changed, as they were and as they are."""
    before = [json.dumps(s, sort_keys=True) for s in _listed(policy["Statement"])]
    after = [json.dumps(s, sort_keys=True) for s in _listed(mutant["Statement"])]
    changed = [s for s in before if s not in after] + [s for s in after if s not in before]
    return [a.lower() for s in changed for a in _listed(json.loads(s)["Action"])]


def judge(
    policies: dict[str, Policy], check: Callable[[dict[str, Policy]], None], environment: str
) -> dict[str, bool]:
    """Every mutant of every policy (`NAME: what changed`) → whether `check` caught it. A policy
    whose name ends in "trust" is a role's trust policy. The real policies must pass `check`.

    A statement takes part only in the requests its Action matches (AWS's evaluation logic): a
    request no changed statement's action matches, before or after the change, is answered for
    the mutant as for the real policy; the others go to the evaluator."""
    with iam_evaluator.recording() as asked:
        check(policies)
    caught: dict[str, bool] = {}
    for name, policy in policies.items():
        trust = name.endswith("trust")
        slot = "resourcePolicy" if trust else "identity"
        ours = [
            (real, added) for real in asked if (added := _added(real, policy, trust)) is not None
        ]
        for change, mutant in mutants(policy, environment):
            patterns = _actions(policy, mutant)
            documents: dict[tuple[str, int], Any] = {}
            requests = []
            for real, added in ours:
                principal = real["principal"]
                document = documents.get((principal, id(added)))
                if document is None:
                    given = iam_evaluator.given_to_the_library(mutant, principal, trust)
                    if added:
                        given = {**given, "Statement": [*_listed(given["Statement"]), *added]}
                    document = documents[(principal, id(added))] = given
                request = {**real, slot: document}
                action = request["action"].lower()
                if any(fnmatch.fnmatchcase(action, p) for p in patterns):
                    requests.append(request)
                else:
                    iam_evaluator.answered_as(request, real)
            iam_evaluator.prefetch(requests)
            try:
                check({**policies, name: mutant})
            except iam_evaluator.Unevaluated:
                raise
            except AssertionError:
                caught[f"{name}: {change}"] = True
            else:
                caught[f"{name}: {change}"] = False
    return caught
