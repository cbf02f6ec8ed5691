"""How kubeplat runs Terraform (kubeplat/terraform.py's `Terraform`): the argument lists, the
child's environment, the log every run leaves, the record of a running locking command, and the
refusal while one still runs (a kubeplat killed mid-apply leaves its Terraform running: the
next command must wait for it, not take the lock from under it).

Terraform here is a STAND-IN, a short shell script: these tests pin what kubeplat hands the
binary and what it makes of the answer, in-process and fast. The real Terraform runs against
the emulator in the integration tier (tests/integration/test_reliability.py kills kubeplat
mid-apply and checks the same record and refusal with it).
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kubeplat import terraform
from kubeplat.errors import TerraformFailed

STANDIN = """#!/bin/sh
# A STAND-IN for terraform (see the test module's docstring).
if [ "$1" = version ]; then echo '{"terraform_version": "1.9.8"}'; exit 0; fi
printf 'argv %s\\n' "$*" >> "$STANDIN_LOG"
case " $* " in *" init "*) mkdir -p "$TF_DATA_DIR" ;; esac  # as init does
env | grep -E '^(TF_DATA_DIR|TF_IN_AUTOMATION|TF_CLI_CONFIG_FILE|STANDIN_ADDED|HOME)=' | sort \\
  | sed 's/^/env /' >> "$STANDIN_LOG"
case "$STANDIN_MODE" in
  fail) echo "Planning failed."; echo "Error: creating EC2 VPC: VpcLimitExceeded" >&2; exit 1 ;;
  operation) cat "$STANDIN_OPERATION"; echo; echo "Apply complete!" ;;
  validate)
    echo 'Warning: the CLI configuration says something'
    echo '{"valid": false, "diagnostics": [
      {"severity": "warning", "summary": "Deprecated"},
      {"severity": "error", "summary": "Unsupported argument", "detail": "x"}]}'
    exit 1 ;;
  junk) echo "Error: Terraform crashed"; exit 11 ;;
  *) echo "ok" ;;
esac
"""


def standin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> Path:
    """`text` as the Terraform kubeplat runs, its calls logged to tmp_path/standin.log."""
    script = tmp_path / "bin" / "terraform"
    script.parent.mkdir(exist_ok=True)
    script.write_text(text)
    script.chmod(0o755)
    monkeypatch.setenv("KUBEPLAT_TERRAFORM", str(script))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("STANDIN_LOG", str(tmp_path / "standin.log"))
    monkeypatch.delenv("KUBEPLAT_TF_MIRROR", raising=False)
    terraform.found.cache_clear()
    return script


@pytest.fixture
def tf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[terraform.Terraform]:
    standin(tmp_path, monkeypatch, STANDIN)
    monkeypatch.delenv("STANDIN_MODE", raising=False)
    yield terraform.Terraform(tmp_path / "work", name="dev")
    terraform.found.cache_clear()


def seen(tmp_path: Path) -> list[str]:
    return (tmp_path / "standin.log").read_text().splitlines()


def test_every_command_gets_the_global_flags_in_their_place(tf: terraform.Terraform) -> None:
    binary, module = terraform.binary(), tf.workdir / "module"
    assert tf.command("plan", "-out=x") == [
        binary, f"-chdir={module}", "plan", "-no-color", "-input=false", "-out=x"
    ]  # fmt: skip
    for locking in ("init", "apply", "destroy", "import", "refresh"):
        assert tf.command(locking)[3:] == ["-no-color", "-input=false"]
    # validate and output take no -input; `state pull`: the flags after both words.
    assert tf.command("validate", "-json")[2:] == ["validate", "-no-color", "-json"]
    assert tf.command("state", "pull")[2:] == ["state", "pull", "-no-color"]
    assert tf.command("workspace", "show")[2:] == ["workspace", "show", "-no-color"]
    assert tf.command("state")[2:] == ["state", "-no-color"]
    assert tf.data_dir == tf.workdir / "terraform"


def test_the_child_gets_its_data_dir_and_the_callers_changes(
    tf: terraform.Terraform, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    tf.env = {"STANDIN_ADDED": "yes", "HOME": None}  # None: taken away
    result = tf.run("output")
    assert result.returncode == 0 and "ok" in result.output
    assert seen(tmp_path) == [
        f"argv -chdir={tf.module} output -no-color",
        "env STANDIN_ADDED=yes",
        f"env TF_DATA_DIR={tf.workdir / 'terraform'}",
        "env TF_IN_AUTOMATION=1",
    ]
    assert "TF_CLI_CONFIG_FILE" not in tf.environ()  # no mirror named: the user's own config


def test_a_named_mirror_reaches_the_child_as_its_cli_config(
    tf: terraform.Terraform, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mirror = tmp_path / "mirror"
    (mirror / "registry.terraform.io").mkdir(parents=True)
    monkeypatch.setenv("KUBEPLAT_TF_MIRROR", str(mirror))
    tf.run("init")
    config = tf.workdir / "kubeplat-mirror.tfrc"
    assert f"env TF_CLI_CONFIG_FILE={config}" in seen(tmp_path)
    assert f'path    = "{mirror}"' in config.read_text()


def test_each_run_leaves_its_log_and_only_the_last_ones_are_kept(
    tf: terraform.Terraform,
) -> None:
    tf.run("output")
    first = tf.last_log
    assert first is not None and first.parent == tf.workdir / "logs"
    assert first.name.endswith("-output.log") and first.read_text() == "ok\n"
    assert first.stat().st_mode & 0o777 == 0o600
    for _ in range(terraform.KEEP_LOGS + 2):
        tf.run("output")
    logs = sorted((tf.workdir / "logs").glob("*.log"))
    assert len(logs) == terraform.KEEP_LOGS + 1  # the kept ones and the newest
    assert first not in logs


def test_a_log_a_running_terraform_still_writes_is_kept(tf: terraform.Terraform) -> None:
    tf.run("output")
    in_use = tf.last_log
    assert in_use is not None
    (tf.workdir / terraform.OPERATION).write_text(json.dumps({"log": str(in_use)}))
    for _ in range(terraform.KEEP_LOGS + 2):
        tf.run("output")
    assert in_use.exists()


def test_a_locking_run_is_recorded_while_it_runs_and_the_record_goes_after(
    tf: terraform.Terraform, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = tf.workdir / terraform.OPERATION
    monkeypatch.setenv("STANDIN_MODE", "operation")
    monkeypatch.setenv("STANDIN_OPERATION", str(record))
    result = tf.run("apply")
    written = json.loads(result.output[: result.output.index("Apply complete!")])
    assert written["command"] == "apply"
    assert written["user"] == getpass.getuser() and written["host"] == socket.gethostname()
    assert written["kubeplat_pid"] == os.getpid() and written["pid"] != os.getpid()
    assert isinstance(written["ticks"], int)
    assert written["log"] == str(tf.last_log) and written["started"].endswith(" UTC")
    assert not record.exists()  # gone with the run
    assert tf.running is None
    # A run that takes no lock is not recorded: it could not hold the state's lock.
    assert "No such file" in tf.run("output", check=False).output  # no record while it ran


def test_a_failed_run_raises_its_first_error_and_names_the_log(
    tf: terraform.Terraform, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STANDIN_MODE", "fail")
    with pytest.raises(TerraformFailed) as raised:
        tf.run("plan")
    assert raised.value.message == (
        "terraform plan failed: creating EC2 VPC: VpcLimitExceeded"
    )  # fmt: skip
    assert raised.value.hint == (
        "run again with --debug to see Terraform's whole output; Terraform's whole output: "
        f"{tf.last_log}"
    )
    assert not (tf.workdir / terraform.OPERATION).exists()
    kept = tf.run("plan", check=False)  # check=False: the caller reads the result itself
    assert kept.returncode == 1 and "VpcLimitExceeded" in kept.output


def test_validate_returns_the_errors_alone(
    tf: terraform.Terraform, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STANDIN_MODE", "validate")
    assert tf.validate() == [
        {"severity": "error", "summary": "Unsupported argument", "detail": "x"}
    ]
    monkeypatch.setenv("STANDIN_MODE", "ok")
    with pytest.raises(TerraformFailed, match=r"^terraform validate failed: "):
        tf.validate()  # "ok" is no JSON document
    monkeypatch.setenv("STANDIN_MODE", "junk")
    with pytest.raises(TerraformFailed, match="terraform validate failed: Terraform crashed"):
        tf.validate()


# -- a run that outlived its kubeplat ---------------------------------------------------------


def record(tf: terraform.Terraform, pid: int, **changes: object) -> Path:
    path = tf.workdir / terraform.OPERATION
    path.parent.mkdir(parents=True, exist_ok=True)
    found = {
        "command": "apply", "pid": pid, "ticks": terraform._start_ticks(pid),
        "kubeplat_pid": 1, "user": "alice", "host": socket.gethostname(),
        "started": "2026-12-06 10:00:00 UTC", "log": "/work/logs/x-apply.log",
    }  # fmt: skip
    found.update(changes)
    path.write_text(json.dumps(found))
    return path


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield child
    child.kill()
    child.wait()


def test_a_terraform_still_running_refuses_the_next_locking_command(
    tf: terraform.Terraform, sleeper: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    path = record(tf, sleeper.pid)
    with pytest.raises(terraform.OperationRunning) as raised:
        tf.run("apply")
    assert raised.value.message == (
        f"a terraform apply by alice@{socket.gethostname()} started 2026-12-06 10:00:00 UTC "
        f"is still running (pid {sleeper.pid})"
    )
    assert raised.value.hint == (
        "it finishes and releases the state lock by itself; follow it with: tail -f "
        "/work/logs/x-apply.log; then run the command again"
    )
    assert path.exists() and not (tmp_path / "standin.log").exists()  # nothing ran
    assert tf.run("output").returncode == 0  # a command that takes no lock still runs


def test_a_record_whose_terraform_is_gone_is_cleared_and_remembered(
    tf: terraform.Terraform, tmp_path: Path
) -> None:
    child = subprocess.Popen(["true"])
    child.wait()
    path = record(tf, child.pid, ticks=None)
    assert tf.run("plan").returncode == 0
    assert not path.exists()
    assert tf.cut_off is not None and tf.cut_off["pid"] == child.pid  # for the lock's error


def test_a_record_from_another_host_is_left_alone(tf: terraform.Terraform) -> None:
    path = record(tf, os.getpid(), host="another-host")
    assert tf.check_running() is None
    assert path.exists()


def test_a_pid_reused_by_another_process_is_not_the_terraform(
    tf: terraform.Terraform, sleeper: subprocess.Popen[bytes]
) -> None:
    ticks = terraform._start_ticks(sleeper.pid)
    assert ticks is not None
    assert terraform._alive({"pid": sleeper.pid, "ticks": ticks})
    assert not terraform._alive({"pid": sleeper.pid, "ticks": ticks + 1})
    assert terraform._alive({"pid": sleeper.pid})  # an old record without ticks: the pid
    assert tf.check_running() is None  # no record at all


@pytest.mark.parametrize("pid", [0, -1, "x", None])
def test_a_record_without_a_usable_pid_is_not_alive(pid: object) -> None:
    assert not terraform._alive({"pid": pid})


def test_a_zombie_is_not_alive() -> None:
    child = subprocess.Popen(["true"])
    deadline = time.monotonic() + 10
    while terraform._alive({"pid": child.pid}) and time.monotonic() < deadline:
        time.sleep(0.02)  # it exits; not reaped (no wait yet), it stays a zombie
    stat = Path(f"/proc/{child.pid}/stat").read_text().rpartition(")")[2].split()[0]
    assert stat == "Z"
    assert not terraform._alive({"pid": child.pid})
    child.wait()
    assert not terraform._alive({"pid": child.pid})


# -- init, once -------------------------------------------------------------------------------


def test_init_runs_once_until_the_module_backend_binary_or_mirror_changes(
    tf: terraform.Terraform, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each command would otherwise pay `terraform init` (seconds); a change to what init
    depends on must never be missed (a stale backend would plan against another state)."""
    backend = {"bucket": "kubeplat-dev-state", "key": "dev/terraform.tfstate"}

    def inits() -> list[str]:
        log = tmp_path / "standin.log"
        lines = log.read_text().splitlines() if log.exists() else []
        found = [line for line in lines if line.startswith("argv ") and " init " in line]
        (tmp_path / "standin.log").unlink(missing_ok=True)
        return found

    def locked() -> None:  # what a real init leaves beside the module
        (tf.module / ".terraform.lock.hcl").write_text("# providers\n")

    tf.init(backend)
    assert inits() == [
        f"argv -chdir={tf.module} init -no-color -input=false -reconfigure "
        "-backend-config=bucket=kubeplat-dev-state -backend-config=key=dev/terraform.tfstate"
    ]
    assert tf.last_backend() == backend
    tf.init(backend)
    assert inits() != []  # no lock file yet: init did not finish its work
    locked()
    tf.init(backend)
    assert inits() == [] and tf.initialised(backend)
    # Another backend: init again, and it is recorded.
    other = {**backend, "key": "dev2/terraform.tfstate"}
    assert not tf.initialised(other)
    tf.init(other)
    assert len(inits()) == 1 and tf.last_backend() == other
    # The module changed under it (a new kubeplat): staged again, init again.
    (tf.module / "main.tf").write_text("# changed\n")
    assert tf.initialised(other)  # staging put the packaged main.tf back: the same module
    (tf.module / "extra.tf").write_text("# left from an older kubeplat\n")
    assert tf.initialised(other) and not (tf.module / "extra.tf").exists()
    marker = tf.data_dir / terraform.INIT_MARKER
    marker.write_text("another")
    assert not tf.initialised(other)
    tf.init(other)
    assert len(inits()) == 1 and tf.initialised(other)
    # A mirror named now: the CLI configuration is part of what init saw.
    mirror = tmp_path / "mirror"
    (mirror / "registry.terraform.io").mkdir(parents=True)
    monkeypatch.setenv("KUBEPLAT_TF_MIRROR", str(mirror))
    assert not tf.initialised(other)
    # Without a backend (validate's working copy): -backend=false, no backend recorded.
    plain = terraform.Terraform(tmp_path / "work", data_name="validate")
    plain.init()
    assert inits()[0].endswith("init -no-color -input=false -reconfigure -backend=false")
    assert plain.last_backend() is None


def test_a_damaged_backend_record_is_no_record(tf: terraform.Terraform) -> None:
    tf.data_dir.mkdir(parents=True)
    (tf.data_dir / terraform.BACKEND_RECORD).write_text("{not json")
    assert tf.last_backend() is None
    (tf.data_dir / terraform.BACKEND_RECORD).write_text("[1, 2]")
    assert tf.last_backend() is None
    (tf.data_dir / terraform.BACKEND_RECORD).write_text('{"bucket": "b", "encrypt": true}')
    assert tf.last_backend() == {"bucket": "b", "encrypt": "True"}
