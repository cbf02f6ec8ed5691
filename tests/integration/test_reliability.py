"""Reliability and security, proven in the sandbox with the real Terraform and provider.

Interrupts reach Terraform as interrupts; two operators never corrupt one environment; AWS
failures are one-line errors in bounded time; the wrong account is refused; no key leaks.
"""

from __future__ import annotations

import base64
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest

from tests.conftest import enforce_iam, start_emulator
from tests.integration.sandbox_user import checkout, clients, kubeplat

pytestmark = pytest.mark.integration


def aws_clients(user: dict[str, str]) -> dict[str, object]:
    return clients(user, "s3", "ec2", "kms")


def vpcs(ec2: object) -> int:
    found = ec2.describe_vpcs(Filters=[{"Name": "tag:Environment", "Values": ["example"]}])  # type: ignore[attr-defined]
    return len(found["Vpcs"])


def write_env(user: dict[str, str], name: str, **changes: str) -> None:
    import re

    text = (Path(user["CHECKOUT"]) / "environments" / "example.tfvars").read_text()
    for key, value in {"environment": f'"{name}"', **changes}.items():
        pattern = re.compile(rf"^{key}\s*=.*$", re.MULTILINE)
        text = (
            pattern.sub(f"{key} = {value}", text)
            if pattern.search(text)
            else text + f"\n{key} = {value}\n"
        )
    (Path(user["CHECKOUT"]) / "environments" / f"{name}.tfvars").write_text(text)


def test_wrong_account_is_refused_before_any_change(user: dict[str, str]) -> None:
    write_env(
        user,
        "wrongacct",
        aws_account='"999999999999"',
        secrets_bucket_name='"wrongacct-secrets"',
        terraform_bucket_name='"wrongacct-state"',
    )
    result = kubeplat(user, "up", "-e", "wrongacct", "--auto-approve")
    assert result.returncode == 1
    assert (
        "refusing to act: the credentials are for account 123456789012, but environments/wrongacct.tfvars names account 999999999999"
        in result.stderr
    )
    assert "Traceback" not in result.stderr
    buckets = [b["Name"] for b in aws_clients(user)["s3"].list_buckets()["Buckets"]]  # type: ignore[attr-defined]
    assert "wrongacct-state" not in buckets and "wrongacct-secrets" not in buckets


def test_unusable_kms_key(user: dict[str, str]) -> None:
    kms = aws_clients(user)["kms"]
    key = kms.create_key()["KeyMetadata"]["KeyId"]  # type: ignore[attr-defined]
    kms.create_alias(AliasName="alias/disabled-key", TargetKeyId=key)  # type: ignore[attr-defined]
    kms.disable_key(KeyId=key)  # type: ignore[attr-defined]
    write_env(
        user,
        "badkey",
        kms_master_id='"alias/disabled-key"',
        secrets_bucket_name='"badkey-secrets"',
        terraform_bucket_name='"badkey-state"',
    )
    result = kubeplat(user, "plan", "-e", "badkey")
    assert result.returncode == 1
    assert "Error: the KMS key alias/disabled-key is Disabled" in result.stderr
    assert "Hint: enable it" in result.stderr


def test_unreachable_aws_is_a_bounded_one_line_error(user: dict[str, str], tmp_path: Path) -> None:
    write_env(user, "offline", sandbox="false")
    unreachable = {
        **user,
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
        "AWS_ACCESS_KEY_ID": "x",
        "AWS_SECRET_ACCESS_KEY": "y",
    }
    started = time.monotonic()
    result = kubeplat(unreachable, "plan", "-e", "offline")
    took = time.monotonic() - started
    assert result.returncode == 1
    assert (
        "Error: checking the caller's AWS account: cannot reach http://127.0.0.1:9" in result.stderr
    )
    assert "Hint: check your network, proxy and AWS_ENDPOINT_URL" in result.stderr
    assert took < 120, took  # bounded: a few quick retries, not an endless wait
    assert len([line for line in result.stderr.splitlines() if line.startswith("Error:")]) == 1


def test_missing_credentials(user: dict[str, str], tmp_path: Path) -> None:
    write_env(user, "nocreds", sandbox="false")
    bare = {
        **user,
        "HOME": str(tmp_path),
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
    }
    result = kubeplat(bare, "plan", "-e", "nocreds")
    assert result.returncode == 1
    assert "no AWS credentials found" in result.stderr
    assert "Traceback" not in result.stderr


def test_interrupts_two_operators_and_secret_hygiene(user: dict[str, str], tmp_path: Path) -> None:
    """One environment's life: two operators race, one is interrupted, nothing leaks."""
    aws = aws_clients(user)
    alice, bob = user, {**user, "CHECKOUT": str(checkout(tmp_path / "bob"))}

    # Two operators run `up` on one new environment at the same time.
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "kubeplat", *(["--debug"] if who is alice else []), "up", "-e", "example", "--auto-approve"],
            cwd=who["CHECKOUT"], env=who, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for who in (alice, bob)
    ]  # fmt: skip
    outcomes = [p.communicate(timeout=1200) for p in procs]
    codes = [p.returncode for p in procs]
    assert 0 in codes, outcomes
    for code, (_, err) in zip(codes, outcomes, strict=True):
        if code != 0:
            # The other one changed nothing and was told who holds the lock (or that it lost).
            assert code == 1
            # The holder is named as Terraform recorded it (user@host, the operation, since
            # when, the lock ID), never "someone" or "?".
            holder = re.search(
                r"locked by \S+@\S+ \([a-z]+ since \d{4}-\d\d-\d\d [\d:]+ UTC, lock ID "
                r"[0-9a-f-]{36}\)",
                err,
            )
            assert holder or "the state changed since this plan" in err, err[-2000:]
    for who, code in zip((alice, bob), codes, strict=True):
        if code != 0:
            again = kubeplat(who, "up", "-e", "example", "--auto-approve")
            assert again.returncode == 0, again.stderr[-3000:]
    ca = [Path(w["CHECKOUT"], ".kubeplat/example/pki/ca.crt").read_bytes() for w in (alice, bob)]
    assert ca[0] == ca[1]  # one CA for both
    for who in (alice, bob):
        plan = kubeplat(who, "plan", "-e", "example", "--detailed-exitcode")
        assert plan.returncode == 0, plan.stderr[-2000:]
    assert vpcs(aws["ec2"]) == 1

    # Secret hygiene: no private key in the state, the plan file, any output (even --debug),
    # or any file of the checkout outside .kubeplat/example/pki/.
    pki = Path(alice["CHECKOUT"], ".kubeplat/example/pki")
    secrets = [
        p.read_bytes()
        for p in pki.rglob("*")
        if p.is_file() and (p.suffix == ".key" or p.name in ("bootstrap-token", "id_ed25519"))
    ]
    needles = [b"PRIVATE KEY"]
    for secret in secrets:
        body = b"".join(line for line in secret.splitlines() if not line.startswith(b"-----"))
        needles += [body[:40], base64.b64encode(secret)[:40]]
    logs = "".join(out + err for out, err in outcomes).encode()
    assert b"PRIVATE KEY" not in logs and not any(n in logs for n in needles[1:])
    state = (
        aws["s3"]
        .get_object(Bucket="kubeplat-example-terraform", Key="eu-west-1/example/terraform.tfstate")[
            "Body"
        ]
        .read()
    )  # type: ignore[attr-defined]
    assert not any(n in state for n in needles)
    saved = kubeplat(alice, "plan", "-e", "example", "--out", str(tmp_path / "saved.tfplan"))
    assert saved.returncode == 0
    assert not any(n in (tmp_path / "saved.tfplan").read_bytes() for n in needles)
    for path in Path(alice["CHECKOUT"]).rglob("*"):
        if path.is_file() and pki not in path.parents:
            data = path.read_bytes()
            assert not any(n in data for n in needles), path
    for key in pki.rglob("*.key"):
        assert key.stat().st_mode & 0o777 == 0o600
    assert Path(alice["CHECKOUT"], ".kubeplat/.gitignore").read_text().strip().endswith("*")

    # Interrupt: SIGINT during `up` reaches Terraform as an interrupt; it saves state and
    # releases the lock; kubeplat exits 130 saying how to resume.
    assert kubeplat(alice, "destroy", "-e", "example", "--auto-approve").returncode == 0
    up = subprocess.Popen(
        [sys.executable, "-m", "kubeplat", "up", "-e", "example", "--auto-approve"],
        cwd=alice["CHECKOUT"], env=alice, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert up.stderr is not None
    seen = []
    for line in up.stderr:
        seen.append(line)
        # Mid-apply, while the load balancers are being waited on (a minute in the emulator).
        # An interrupt inside a single create call can still orphan that one resource: the
        # provider cancels the call after AWS made it (README, Safety).
        if 'created aws_autoscaling_group.node["compute"]' in line:
            up.send_signal(signal.SIGINT)
            break
    _, err = up.communicate(timeout=600)
    stderr = "".join(seen) + err
    assert up.returncode == 130, stderr[-3000:]
    assert "interrupted; terraform stopped cleanly" in stderr
    assert "run the same command again to resume; the state lock was released" in stderr
    assert "Traceback" not in stderr
    assert not Path(
        alice["CHECKOUT"], ".kubeplat/example/module/kubeplat.auto.tfvars.json"
    ).exists()
    plan = kubeplat(alice, "plan", "-e", "example", "--detailed-exitcode")
    assert plan.returncode == 2, plan.stderr[-2000:]  # works without force-unlock; work remains
    resumed = kubeplat(alice, "up", "-e", "example", "--auto-approve")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert vpcs(aws["ec2"]) == 1  # converged, no duplicate
    assert kubeplat(alice, "destroy", "-e", "example", "--auto-approve").returncode == 0


def test_sigterm_is_forwarded_as_an_interrupt(user: dict[str, str], tmp_path: Path) -> None:
    """A CI runner's SIGTERM reaches the child as SIGINT, and kubeplat waits for it."""
    marker = tmp_path / "got-sigint"
    fake = tmp_path / "bin" / "terraform"
    fake.parent.mkdir()
    fake.write_text(
        "#!/usr/bin/env python3\n"
        "import json, signal, sys, time\n"
        "if sys.argv[1:2] == ['version']:\n"
        "    print(json.dumps({'terraform_version': '1.11.4'})); sys.exit(0)\n"
        f"def stop(*_):\n    open({str(marker)!r}, 'w').write('saved'); sys.exit(1)\n"
        "signal.signal(signal.SIGINT, stop)\n"
        "print('working', flush=True)\n"
        "time.sleep(60)\n"
    )
    fake.chmod(0o755)
    proc = subprocess.Popen(
        [sys.executable, "-c", "from kubeplat import process; process.run(['" + str(fake) + "', 'apply'], on_line=print)"],
        env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "working"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert marker.read_text() == "saved"  # the child ran its own interrupt handler
    assert "Interrupted" in err  # kubeplat raised its 130 error after the child finished


def test_missing_state_bucket_without_permission_to_create_it(
    user: dict[str, str], tmp_path: Path
) -> None:
    """moto's IAM enforcement: the caller may read but not create buckets."""
    server, endpoint = start_emulator()
    try:
        admin = {
            "endpoint_url": endpoint,
            "region_name": "eu-west-1",
            "aws_access_key_id": "a",
            "aws_secret_access_key": "b",
        }
        kms = boto3.client("kms", **admin)
        kms.create_alias(
            AliasName="alias/kubeplat-example", TargetKeyId=kms.create_key()["KeyMetadata"]["KeyId"]
        )
        allowed = [
            "sts:GetCallerIdentity",
            "kms:*",
            "s3:ListBucket",
            "s3:GetObject",
            "iam:ListAccountAliases",
        ]
        keys = enforce_iam(endpoint, "ci", allowed)
        write_env(user, "noperm", sandbox="false")
        caller = {
            **user,
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": keys["id"],
            "AWS_SECRET_ACCESS_KEY": keys["secret"],
        }
        result = kubeplat(caller, "plan", "-e", "noperm")
        assert result.returncode == 1
        # Depending on whether the caller may look at buckets at all, AWS (and the emulator)
        # answer 403 to the look, or AccessDenied to the creation: either way, one clear line.
        assert (
            "Error: cannot use the bucket kubeplat-example-terraform: another account owns it, "
            "or this caller may not read it"
            in result.stderr
            or "Error: creating the bucket kubeplat-example-terraform: AccessDenied"
            in result.stderr
        ), result.stderr
        assert "s3:CreateBucket" in result.stderr or "lacks permission" in result.stderr
        assert "Traceback" not in result.stderr
    finally:
        server.terminate()
