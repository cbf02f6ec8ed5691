"""Issue 16: faults injected into a real `up` in the sandbox (the real Terraform and provider
against the emulator): kubeplat killed mid-apply, a closed terminal, a state lock another run
left behind, a full disk and a read-only checkout. Each test names what a user would see.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import fill_disk
from tests.integration.sandbox_user import clients, kubeplat, story

pytestmark = pytest.mark.integration

STATE_BUCKET = "kubeplat-example-terraform"
STATE_KEY = "eu-west-1/example/terraform.tfstate"


def sandbox_aws(user: dict[str, str]) -> dict[str, object]:
    return clients(user, "s3", "ec2", "autoscaling")


def counts(aws: dict[str, object]) -> tuple[int, int]:
    """(VPCs, autoscaling groups) of the example environment: a duplicate shows here."""
    ec2, asg = aws["ec2"], aws["autoscaling"]
    vpcs = ec2.describe_vpcs(Filters=[{"Name": "tag:Environment", "Values": ["example"]}])  # type: ignore[attr-defined]
    groups = asg.describe_auto_scaling_groups()["AutoScalingGroups"]  # type: ignore[attr-defined]
    return len(vpcs["Vpcs"]), len(
        [g for g in groups if g["AutoScalingGroupName"].startswith("example")]
    )


def workdir(user: dict[str, str]) -> Path:
    return Path(user["CHECKOUT"], ".kubeplat", "example")


def start_up(user: dict[str, str], *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "kubeplat", *extra, "up", "-e", "example", "--auto-approve"],
        cwd=user["CHECKOUT"], env=user, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def wait_for_apply(up: subprocess.Popen[str]) -> list[str]:
    """Read kubeplat's progress until Terraform's apply has created its first resource."""
    assert up.stderr is not None
    seen: list[str] = []
    for line in up.stderr:
        seen.append(line)
        if "created aws_" in line:
            return seen
    up.wait(timeout=60)
    raise AssertionError(f"the apply never began (exit {up.returncode}): {''.join(seen)[-3000:]}")


def alive(pid: int) -> bool:
    """A process that has not exited (a zombie counts as exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def wait_gone(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while alive(pid):
        assert time.monotonic() < deadline, f"terraform (pid {pid}) still runs after {timeout} s"
        time.sleep(1)


def test_kubeplat_killed_mid_apply_terraform_finishes_and_the_next_run_resumes(
    user: dict[str, str],
) -> None:
    """Item 2: SIGKILL of kubeplat during the apply. Terraform writes to a log file, not to a
    pipe of kubeplat's, so it runs to the end, saves its state and releases the lock; a
    command run meanwhile names the run still going; then `plan` works and `up` converges
    with nothing duplicated."""
    aws = sandbox_aws(user)
    up = start_up(user)
    wait_for_apply(up)
    up.send_signal(signal.SIGKILL)
    up.wait(timeout=30)
    record = json.loads((workdir(user) / "operation.json").read_text())
    assert record["command"] == "apply" and alive(record["pid"])

    meanwhile = kubeplat(user, "plan", "-e", "example")
    assert meanwhile.returncode == 1
    assert f"a terraform apply by {record['user']}@{record['host']}" in meanwhile.stderr
    assert f"is still running (pid {record['pid']})" in meanwhile.stderr
    assert f"tail -f {record['log']}" in meanwhile.stderr
    assert "Traceback" not in meanwhile.stderr

    wait_gone(record["pid"], 600)
    log = Path(record["log"]).read_text()
    assert '"operation":"apply"' in log and '"type":"change_summary"' in log  # it finished

    started = time.monotonic()
    plan = kubeplat(user, "plan", "-e", "example", "--detailed-exitcode")
    assert plan.returncode == 0, plan.stderr[-3000:]  # no lock left, nothing left to do
    assert time.monotonic() - started < 300
    assert not (workdir(user) / "operation.json").exists()
    resumed = kubeplat(user, "up", "-e", "example", "--auto-approve")
    assert resumed.returncode == 0, story(user, resumed.stderr)
    assert counts(aws) == (1, 2)
    assert (workdir(user) / "pki" / "kubeconfig" / "admin.conf").exists()
    assert kubeplat(user, "destroy", "-e", "example", "--auto-approve").returncode == 0


def test_terraform_killed_mid_apply_is_named_and_the_next_run_resumes(
    user: dict[str, str],
) -> None:
    """Terraform itself killed during the apply (the OOM killer, a kill -9), kubeplat alive:
    kubeplat says Terraform was killed, with its last words, not its banner; the lock the
    killed run left is named by the next run with the command that releases it; after that,
    `up` converges with nothing duplicated."""
    aws = sandbox_aws(user)
    up = start_up(user)
    wait_for_apply(up)
    record = json.loads((workdir(user) / "operation.json").read_text())
    os.kill(record["pid"], signal.SIGKILL)
    _, rest = up.communicate(timeout=300)
    assert up.returncode == 1
    error = [line for line in rest.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and error[0].startswith(
        "Error: terraform apply was killed (SIGKILL) before it finished; its last words: "
    ), rest[-3000:]
    assert "Terraform 1." not in error[0] and "{" not in error[0]
    assert "Traceback" not in rest
    assert not (workdir(user) / "operation.json").exists()

    locked = kubeplat(user, "up", "-e", "example", "--auto-approve")
    assert locked.returncode == 1
    hint = re.search(r"kubeplat unlock -e example (\S+)", locked.stderr)
    assert hint is not None, locked.stderr[-3000:]
    released = kubeplat(user, "unlock", "-e", "example", hint.group(1))
    assert released.returncode == 0, released.stderr[-3000:]
    resumed = kubeplat(user, "up", "-e", "example", "--auto-approve")
    assert resumed.returncode == 0, story(user, resumed.stderr)
    assert counts(aws) == (1, 2)
    assert kubeplat(user, "destroy", "-e", "example", "--auto-approve").returncode == 0


def test_a_closed_terminal_does_not_stop_up_half_way(user: dict[str, str]) -> None:
    """Item 2: SIGHUP (the terminal or the SSH session went away) during the apply: kubeplat
    goes on without its terminal and finishes the whole `up` (apply, prune, kubeconfig)."""
    aws = sandbox_aws(user)
    up = start_up(user)
    wait_for_apply(up)
    up.send_signal(signal.SIGHUP)
    _, rest = up.communicate(timeout=900)
    assert up.returncode == 0, rest[-3000:]
    assert (workdir(user) / "pki" / "kubeconfig" / "admin.conf").exists()
    assert not (workdir(user) / "operation.json").exists()
    plan = kubeplat(user, "plan", "-e", "example", "--detailed-exitcode")
    assert plan.returncode == 0, plan.stderr[-3000:]
    assert counts(aws) == (1, 2)
    assert kubeplat(user, "destroy", "-e", "example", "--auto-approve").returncode == 0


def put_lock(s3: object, lock_id: str, who: str = "alice@laptop", created: str = "") -> None:
    """The lock file another Terraform run (S3 native locking) holds."""
    s3.put_object(  # type: ignore[attr-defined]
        Bucket=STATE_BUCKET,
        Key=STATE_KEY + ".tflock",
        Body=json.dumps(
            {
                "ID": lock_id, "Operation": "OperationTypeApply", "Info": "", "Who": who,
                "Version": "1.11.4", "Created": created or "2026-12-03T12:03:00.123456Z",
                "Path": f"{STATE_BUCKET}/{STATE_KEY}",
            }
        ),
    )  # fmt: skip


def released_with_the_printed_command(user: dict[str, str], stderr: str) -> None:
    hint = next(line for line in stderr.splitlines() if "release the lock with: " in line)
    command = shlex.split(hint.split("release the lock with: ", 1)[1].split(";")[0])
    assert command[:4] == ["kubeplat", "unlock", "-e", "example"]
    unlocked = kubeplat(user, *command[1:])
    assert unlocked.returncode == 0, unlocked.stderr
    assert f"released the state lock {command[4]}" in unlocked.stderr


def test_a_held_lock_names_its_holder_and_the_printed_unlock_command_works(
    user: dict[str, str],
) -> None:
    """Item 4: Terraform's lock error (escaped inside its JSON stream) names who holds the lock,
    for what, since when, and the exact command that releases it; that command works as
    printed. A lock left by a run of this checkout whose kubeplat was killed says so."""
    aws = sandbox_aws(user)
    first = kubeplat(user, "plan", "-e", "example")  # creates the buckets and the state key
    assert first.returncode == 0, first.stderr[-3000:]

    put_lock(aws["s3"], "0f3e2c1d-5a6b-4c7d-8e9f-0a1b2c3d4e5f")
    held = kubeplat(user, "plan", "-e", "example")
    assert held.returncode == 1
    assert (
        "Error: the environment's state is locked by alice@laptop (apply since "
        "2026-12-03 12:03:00 UTC, lock ID 0f3e2c1d-5a6b-4c7d-8e9f-0a1b2c3d4e5f)" in held.stderr
    ), held.stderr
    assert "Traceback" not in held.stderr
    released_with_the_printed_command(user, held.stderr)
    assert kubeplat(user, "plan", "-e", "example").returncode == 0

    # A run of this checkout was killed and its Terraform is gone (pid 999999 never runs).
    host = os.uname().nodename
    (workdir(user) / "operation.json").write_text(
        json.dumps(
            {
                "command": "apply", "pid": 999999, "user": "alice", "host": host,
                "started": "2026-12-03 12:03:00 UTC", "log": "/nowhere/apply.log",
            }
        )
    )  # fmt: skip
    # Someone else's lock is still theirs, whatever this checkout left behind.
    put_lock(aws["s3"], "5e5e5e5e-0000-4111-8222-333344445555", who="bob@desk")
    theirs = kubeplat(user, "plan", "-e", "example")
    assert theirs.returncode == 1 and "locked by bob@desk" in theirs.stderr
    assert "whose kubeplat was stopped" not in theirs.stderr
    released_with_the_printed_command(user, theirs.stderr)
    # The lock that run took (same user@host, created as it started) is named as its own.
    (workdir(user) / "operation.json").write_text(
        json.dumps(
            {
                "command": "apply", "pid": 999999, "user": "alice", "host": host,
                "started": "2026-12-03 12:03:00 UTC", "log": "/nowhere/apply.log",
            }
        )
    )  # fmt: skip
    put_lock(
        aws["s3"], "9a8b7c6d-0000-4111-8222-333344445555", who=f"alice@{host}",
        created="2026-12-03T12:03:02.5Z",
    )  # fmt: skip
    cut = kubeplat(user, "plan", "-e", "example")
    assert cut.returncode == 1
    assert "started here at 2026-12-03 12:03:00 UTC whose kubeplat was stopped" in cut.stderr
    released_with_the_printed_command(user, cut.stderr)
    assert kubeplat(user, "plan", "-e", "example").returncode == 0

    wrong = kubeplat(user, "unlock", "-e", "example", "$(reboot)")
    assert wrong.returncode == 1 and "is not a lock ID" in wrong.stderr


def test_another_accounts_credentials_stop_the_plan_that_started_beside_the_check(
    user: dict[str, str],
) -> None:
    """Issue 17: on a working copy already initialised, `terraform plan` starts as soon as the
    file is read and the account is checked beside it. Credentials of another account (here:
    the file names another one) stop that plan as Ctrl-C would: the refusal is the one error
    printed, the state lock it took is released and nothing is left running or recorded."""
    aws = sandbox_aws(user)
    first = kubeplat(user, "plan", "-e", "example")  # buckets, PKI, an initialised working copy
    assert first.returncode == 0, first.stderr[-3000:]
    path = Path(user["CHECKOUT"], "environments", "example.tfvars")
    text = path.read_text()
    logs = set((workdir(user) / "logs").glob("*.log"))
    path.write_text(re.sub(r"(?m)^aws_account\s*=.*$", 'aws_account = "999999999999"', text))
    try:
        wrong = kubeplat(user, "plan", "-e", "example")
    finally:
        path.write_text(text)
    assert wrong.returncode == 1
    assert (
        "Error: refusing to act: the credentials are for account 123456789012, but "
        "environments/example.tfvars names account 999999999999" in wrong.stderr
    ), wrong.stderr
    assert "Traceback" not in wrong.stderr and "Terraform" not in wrong.stderr
    started = set((workdir(user) / "logs").glob("*.log")) - logs
    assert [log.name for log in started if "-plan" in log.name], "the early plan never started"
    objects = aws["s3"].list_objects_v2(Bucket=STATE_BUCKET).get("Contents", [])  # type: ignore[attr-defined]
    assert STATE_KEY + ".tflock" not in [o["Key"] for o in objects]  # its lock released
    assert not (workdir(user) / "operation.json").exists()
    again = kubeplat(user, "plan", "-e", "example")
    assert again.returncode == 0, story(user, again.stderr)


def test_a_plan_started_with_the_last_key_is_made_again_when_the_alias_moved(
    user: dict[str, str],
) -> None:
    """Issue 17: the early plan starts with the backend the working copy was initialised with
    (its KMS key ARN recorded by the last run). When `kms_master_id`'s alias now names another
    key, that plan is thrown away, Terraform is initialised for the new key, and the plan
    made again succeeds; the next run plans early with the new key."""
    aws = clients(user, "kms", "s3")
    first = kubeplat(user, "plan", "-e", "example")
    assert first.returncode == 0, first.stderr[-3000:]
    record = workdir(user) / "terraform" / "kubeplat-backend.json"
    before = json.loads(record.read_text())["kms_key_id"]
    kms = aws["kms"]
    moved = kms.create_key(Description="the example's next key")["KeyMetadata"]  # type: ignore[attr-defined]
    kms.update_alias(AliasName="alias/kubeplat-example", TargetKeyId=moved["KeyId"])  # type: ignore[attr-defined]
    try:
        logs = set((workdir(user) / "logs").glob("*.log"))
        again = kubeplat(user, "--debug", "plan", "-e", "example")
        assert again.returncode == 0, story(user, again.stderr)
        assert "the early plan's inputs were not the prepared ones" in again.stderr
        after = json.loads(record.read_text())["kms_key_id"]
        assert after == moved["Arn"] != before
        ran = sorted(
            log.name.split("-", 1)[1] for log in set((workdir(user) / "logs").glob("*.log")) - logs
        )
        # The early plan, then init and the plan made again (and the adoption check's show).
        assert (ran.count("plan.log"), ran.count("init.log")) == (2, 1), ran
        steady = kubeplat(user, "plan", "-e", "example")
        assert steady.returncode == 0, steady.stderr[-3000:]
    finally:
        kms.update_alias(AliasName="alias/kubeplat-example", TargetKeyId=before)  # type: ignore[attr-defined]


def test_debug_and_ctrl_c_exit_130(user: dict[str, str]) -> None:
    """Item 7's last probe: --debug shows the traceback but the exit code stays 130."""
    sandbox_aws(user)
    up = start_up(user, "--debug")
    assert up.stderr is not None
    seen = []
    for line in up.stderr:
        seen.append(line)
        if '"type":"planned_change"' in line:  # --debug shows Terraform's own stream
            break
    up.send_signal(signal.SIGINT)
    _, rest = up.communicate(timeout=600)
    assert up.returncode == 130, ("".join(seen) + rest)[-3000:]


@contextmanager
def mounted(target: Path, *options: str) -> Iterator[None]:
    """A tmpfs (or bind) mount of our own at `target`, always unmounted."""
    target.mkdir(parents=True, exist_ok=True)
    made = subprocess.run(["mount", *options, str(target)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount here (needs root): {made.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False)


def test_a_full_disk_is_named_as_a_full_disk(user: dict[str, str], tmp_path: Path) -> None:
    """Item 4: ENOSPC is a one-line error naming the path and the cause, never a lock problem
    and never an empty plan taken for a plan (Terraform itself exits 0 there)."""
    sandbox_aws(user)
    tiny = tmp_path / "tiny"
    with mounted(tiny, "-t", "tmpfs", "-o", "size=256k", "tmpfs"):
        fill_disk(tiny)
        saved = kubeplat(user, "plan", "-e", "example", "--out", str(tiny / "saved.tfplan"))
        # Terraform either says so or (a small plan) exits 0 leaving an empty file, which
        # kubeplat refuses to take for a plan (tests/unit/test_plan_file.py).
        assert saved.returncode == 1
        assert "the disk is full" in saved.stderr and "locked by" not in saved.stderr
        assert len([line for line in saved.stderr.splitlines() if line.startswith("Error:")]) == 1
        rendered = kubeplat(user, "render", "-e", "example", "--out", str(tiny / "out"))
        assert rendered.returncode == 1
        assert "No space left on device" in rendered.stderr
        assert "Hint: the disk is full" in rendered.stderr
        for result in (saved, rendered):
            assert "Traceback" not in result.stderr and "internal error" not in result.stderr


def test_a_read_only_checkout_is_named(user: dict[str, str], tmp_path: Path) -> None:
    """Item 4/7: writing into a read-only environments folder is a one-line error."""
    environments = Path(user["CHECKOUT"], "environments")
    with mounted(environments, "--bind", "-o", "ro", str(environments)):
        made = kubeplat(user, "init", "staging")
    assert made.returncode == 1
    assert "Read-only file system" in made.stderr and "staging.tfvars" in made.stderr
    assert "Hint: that file system is read-only" in made.stderr
    assert "Traceback" not in made.stderr and "internal error" not in made.stderr


@contextmanager
def edited(user: dict[str, str], **values: str) -> Iterator[None]:
    """The example environment file with `values` set, put back afterwards."""
    import re

    path = Path(user["CHECKOUT"], "environments", "example.tfvars")
    original = path.read_text()
    text = original
    for key, value in values.items():
        pattern = re.compile(rf"^{key}\s*=.*$", re.MULTILINE)
        line = f"{key} = {value}"
        text = pattern.sub(line, text) if pattern.search(text) else text + f"\n{line}\n"
    path.write_text(text)
    try:
        yield
    finally:
        path.write_text(original)


def versions(s3: object) -> list[tuple[str, str]]:
    """Every version of every object under the environment's prefix of the secrets bucket."""
    found = s3.list_object_versions(Bucket="kubeplat-example-secrets", Prefix="example/")  # type: ignore[attr-defined]
    return sorted((v["Key"], v["VersionId"]) for v in found.get("Versions", []))


def test_a_saved_plan_is_applied_exactly_and_a_stale_or_changed_one_is_refused(
    user: dict[str, str], tmp_path: Path
) -> None:
    """Item 5: `kubeplat apply -e ENV PLANFILE` applies exactly a plan saved by `plan --out`,
    uploading the node configuration it was made with. A plan of an older state, or whose node
    configuration no longer renders the same, is refused with nothing uploaded or applied."""
    aws = sandbox_aws(user)
    first = tmp_path / "first.tfplan"
    made = kubeplat(user, "plan", "-e", "example", "--out", str(first))
    assert made.returncode == 0, made.stderr[-3000:]
    record = first.with_name("first.tfplan.kubeplat.json")
    assert "PRIVATE KEY" not in record.read_text()
    assert any(n.startswith("cloudconfig/") for n in json.loads(record.read_text())["objects"])
    applied = kubeplat(user, "apply", "-e", "example", str(first), "--auto-approve")
    assert applied.returncode == 0, applied.stderr[-3000:]
    # The bucket holds exactly what the plan was made with.
    for name, digest in json.loads(record.read_text())["objects"].items():
        head = aws["s3"].head_object(Bucket="kubeplat-example-secrets", Key=f"example/{name}")  # type: ignore[attr-defined]
        assert head["Metadata"]["sha256"] == digest, name
    assert (workdir(user) / "pki" / "kubeconfig" / "admin.conf").exists()
    assert kubeplat(user, "plan", "-e", "example", "--detailed-exitcode").returncode == 0
    assert counts(aws) == (1, 2)

    # Two plans of one change: the first applied wins, the other is refused before any upload.
    with edited(user, ssh_access_list='"127.0.0.1,127.0.0.2"'):
        one, two = tmp_path / "one.tfplan", tmp_path / "two.tfplan"
        for plan in (one, two):
            assert kubeplat(user, "plan", "-e", "example", "--out", str(plan)).returncode == 0
        assert kubeplat(user, "apply", "-e", "example", str(one), "--auto-approve").returncode == 0
        before = versions(aws["s3"])
        stale = kubeplat(user, "apply", "-e", "example", str(two), "--auto-approve")
        assert stale.returncode == 1
        assert "the state changed since this plan was made" in stale.stderr
        assert "nothing was uploaded or applied" in stale.stderr
        assert f"make a new plan: kubeplat plan -e example --out {two}" in stale.stderr
        assert versions(aws["s3"]) == before

        # The node configuration changed after the plan was made (the file was edited again).
        changed = tmp_path / "changed.tfplan"
        with edited(user, etcd_snapshot_minutes="45"):
            made = kubeplat(user, "plan", "-e", "example", "--out", str(changed))
            assert made.returncode == 0, made.stderr[-3000:]
        refused = kubeplat(user, "apply", "-e", "example", str(changed), "--auto-approve")
        assert refused.returncode == 1
        assert "the node configuration changed since this plan was made (cloudconfig/" in (
            refused.stderr
        )
        assert versions(aws["s3"]) == before

        record = changed.with_name("changed.tfplan.kubeplat.json")
        record.unlink()
        alone = kubeplat(user, "apply", "-e", "example", str(changed), "--auto-approve")
        assert alone.returncode == 1
        assert "has no changed.tfplan.kubeplat.json beside it" in alone.stderr
        missing = kubeplat(
            user, "apply", "-e", "example", str(tmp_path / "nope.tfplan"), "--auto-approve"
        )
        assert missing.returncode == 1 and "no such file" in missing.stderr
        for result in (stale, refused, alone, missing):
            assert "Traceback" not in result.stderr
    # The module's sandbox goes with its last test: no destroy needed after this one.
