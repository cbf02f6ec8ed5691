"""The details of kubeplat/terraform.py a user reads or relies on, where the mutation run found
nothing looking (bench/mutation.py): the version asked of the binary and remembered, the
provider mirror's CLI configuration, the staged module, the one-line errors made of Terraform's
output, and the checks that a recorded Terraform still runs.

Terraform here is a STAND-IN shell script, as in tests/unit/test_terraform_runner.py; the real
binary reads the same configuration in the integration tier.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hcl2
import pytest

from kubeplat import config, console, process, render, terraform
from kubeplat.errors import ToolMissing
from tests.conftest import local_zone
from tests.unit.test_terraform_runner import seen, standin

REPO = Path(__file__).resolve().parents[2]

VERSION_STANDIN = """#!/bin/sh
# A STAND-IN for terraform: `version -json` answers with $STANDIN_JSON, any other `version`
# with $STANDIN_TEXT; every call is logged.
printf 'argv %s\\n' "$*" >> "$STANDIN_LOG"
if [ "$1 $2" = "version -json" ]; then printf '%s\\n' "$STANDIN_JSON"; exit 0; fi
printf '%s\\n' "$STANDIN_TEXT"
"""


@pytest.fixture
def binary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    script = standin(tmp_path, monkeypatch, VERSION_STANDIN)
    monkeypatch.setenv("STANDIN_TEXT", "Terraform v1.4.0")
    monkeypatch.delenv("STANDIN_JSON", raising=False)
    yield script
    terraform.found.cache_clear()


def calls(tmp_path: Path) -> list[str]:
    log = tmp_path / "standin.log"
    return log.read_text().splitlines() if log.exists() else []


# -- the binary's version ---------------------------------------------------------------------


def test_the_version_is_asked_as_json_and_read_with_its_prerelease(
    binary: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A warning about the user's CLI configuration, braces and all, comes first (stderr merged).
    document = json.dumps({"terraform_version": "1.10.0-rc1", "platform": "x"}, indent=2)
    monkeypatch.setenv("STANDIN_JSON", WARNING_WITH_BRACES + document)
    assert terraform.version(str(binary)) == (1, 10, 0)
    assert calls(tmp_path) == ["argv version -json"]


def test_a_terraform_without_json_is_read_from_its_text(
    binary: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Terraform before 0.13 prints no JSON: the first `vX.Y.Z` of its text is its version,
    which kubeplat then refuses as too old."""
    monkeypatch.setenv("STANDIN_JSON", "Terraform v0.12.31")
    monkeypatch.setenv("STANDIN_TEXT", "unused")
    assert terraform.version(str(binary)) == (0, 12, 31)
    with pytest.raises(ToolMissing) as raised:
        terraform.binary()
    assert (
        raised.value.message
        == f"{binary} is terraform 0.12.31, too old (kubeplat needs >= 1.5, < 2)"
    )
    assert raised.value.hint == terraform.INSTALL_HINT


def test_a_program_that_is_not_terraform_is_named(
    binary: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STANDIN_JSON", "usage: something else")
    with pytest.raises(ToolMissing) as raised:
        terraform.version(str(binary))
    assert raised.value.message == f"{binary} does not look like Terraform"
    assert raised.value.hint == terraform.INSTALL_HINT


def test_the_version_is_remembered_for_that_very_file(
    binary: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STANDIN_JSON", '{"terraform_version": "1.9.8"}')
    assert terraform.version(str(binary)) == (1, 9, 8)
    remembered = list((tmp_path / "cache" / "kubeplat" / "terraform").glob("*.json"))
    assert len(remembered) == 1 and json.loads(remembered[0].read_text()) == [1, 9, 8]
    assert terraform.version(str(binary)) == (1, 9, 8)
    assert len(calls(tmp_path)) == 1  # the second answer came from the cache
    # A damaged record (not JSON, or not three numbers) is asked again, and rewritten.
    for damaged in ("{not json", "null", '["a", 1, 2]'):
        remembered[0].write_text(damaged)
        assert terraform.version(str(binary)) == (1, 9, 8)
        assert json.loads(remembered[0].read_text()) == [1, 9, 8]
    assert len(calls(tmp_path)) == 4
    # Another binary at the same path (a new file): asked again.
    binary.write_text(binary.read_text() + "# upgraded\n")
    monkeypatch.setenv("STANDIN_JSON", '{"terraform_version": "1.9.9"}')
    assert terraform.version(str(binary)) == (1, 9, 9)


def test_terraform_is_available_from_the_variable_or_the_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.delenv("KUBEPLAT_TERRAFORM", raising=False)
    assert not terraform.available()
    monkeypatch.setenv("KUBEPLAT_TERRAFORM", "/opt/terraform-1.9/terraform")
    assert terraform.available()  # named: its version is checked when it is used
    monkeypatch.delenv("KUBEPLAT_TERRAFORM")
    on_path = tmp_path / "bin"
    on_path.mkdir()
    (on_path / "terraform").write_text("#!/bin/sh\n")
    (on_path / "terraform").chmod(0o755)
    monkeypatch.setenv("PATH", str(on_path))
    assert terraform.available()


# -- the provider mirror's CLI configuration --------------------------------------------------


@pytest.fixture
def mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    found = tmp_path / "mirror"
    (found / "registry.terraform.io").mkdir(parents=True)
    monkeypatch.setenv("KUBEPLAT_TF_MIRROR", str(found))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("TF_CLI_CONFIG_FILE", raising=False)
    (tmp_path / "home").mkdir(exist_ok=True)
    return found


def read_hcl(text: str) -> Any:
    """An HCL document as python-hcl2 reads it, its strings unquoted and its block markers
    dropped (newer python-hcl2 keeps both)."""

    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items() if k != "__is_block__"}
        if isinstance(value, list):
            return [plain(v) for v in value]
        if isinstance(value, str) and len(value) > 1 and value[0] == value[-1] == '"':
            return value[1:-1]
        return value

    return plain(hcl2.loads(text))


def test_the_mirror_configuration_is_what_terraform_reads(mirror: Path, tmp_path: Path) -> None:
    """hashicorp/* from the mirror, every other provider from its registry as usual."""
    path = terraform.mirror_cli_config(tmp_path / "work" / "dev")
    assert path == tmp_path / "work" / "dev" / "kubeplat-mirror.tfrc"
    text = path.read_text()
    assert text == terraform.mirror_config(str(mirror))  # nothing of the user's to keep
    installation = read_hcl(text)["provider_installation"][0]
    assert installation["filesystem_mirror"] == [
        {"path": str(mirror), "include": ["registry.terraform.io/hashicorp/*"]}
    ]
    assert installation["direct"] == [{"exclude": ["registry.terraform.io/hashicorp/*"]}]


def test_the_users_own_configuration_is_kept_beside_the_mirror(
    mirror: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """~/.terraformrc (or TF_CLI_CONFIG_FILE) is kept unless it installs providers itself; its
    trailing blank lines trimmed, and bytes that are not UTF-8 do not stop kubeplat."""
    work = tmp_path / "work"
    (tmp_path / "home" / ".terraformrc").write_bytes(b'plugin_cache_dir = "/c\xe9"\n\n\n')
    assert terraform.mirror_cli_config(work) is not None
    written = (work / "kubeplat-mirror.tfrc").read_text()
    assert written == 'plugin_cache_dir = "/c\ufffd"\n\n' + terraform.mirror_config(str(mirror))
    theirs = tmp_path / "theirs.tfrc"
    theirs.write_text("provider_installation {\n  direct {}\n}\n")
    monkeypatch.setenv("TF_CLI_CONFIG_FILE", str(theirs))
    terraform.mirror_cli_config(work)
    assert (work / "kubeplat-mirror.tfrc").read_text() == terraform.mirror_config(str(mirror))


def test_a_stale_mirror_configuration_is_rewritten(mirror: Path, tmp_path: Path) -> None:
    path = tmp_path / "work" / "kubeplat-mirror.tfrc"
    path.parent.mkdir()
    path.write_text("# from another mirror\n")
    terraform.mirror_cli_config(path.parent)
    assert path.read_text() == terraform.mirror_config(str(mirror))


def test_a_mirror_that_is_not_one_is_refused_with_how_to_make_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBEPLAT_TF_MIRROR", str(tmp_path))
    with pytest.raises(ToolMissing) as raised:
        terraform.mirror_cli_config(tmp_path / "work")
    assert raised.value.message == (
        f"KUBEPLAT_TF_MIRROR={tmp_path} is not a provider mirror (no registry.terraform.io/ in it)"
    )
    assert raised.value.hint == (
        "point it at a directory made with `terraform providers mirror DIR`, or unset it"
    )
    assert not (tmp_path / "work").exists()


# -- the staged module ------------------------------------------------------------------------


@pytest.fixture
def packaged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A root module of two files standing for the packaged one."""
    module = tmp_path / "packaged"
    module.mkdir()
    (module / "main.tf").write_text("# main\n")
    (module / "outputs.tf").write_text("# outputs\n")
    (module / "README.md").write_text("not Terraform\n")
    monkeypatch.setattr(terraform, "module_dir", lambda: module)
    return module


def test_the_module_is_staged_file_by_file(packaged: Path, tmp_path: Path) -> None:
    dest = terraform.stage_module(tmp_path / "work" / "module")
    assert sorted(p.name for p in dest.iterdir()) == ["main.tf", "outputs.tf"]
    (dest / "main.tf").write_text("# edited by hand\n")
    (dest / ".terraform.lock.hcl").write_text("# providers\n")
    terraform.stage_module(dest)
    assert (dest / "main.tf").read_text() == "# main\n"
    assert (dest / ".terraform.lock.hcl").exists()  # Terraform's own file beside it stays


def test_a_new_module_means_init_again(
    packaged: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    standin(tmp_path, monkeypatch, RUN_STANDIN)
    tf = terraform.Terraform(tmp_path / "work", name="dev")
    tf.init()
    (tf.module / ".terraform.lock.hcl").write_text("# providers\n")
    assert tf.initialised()
    (packaged / "outputs.tf").write_text("# outputs of a newer kubeplat\n")
    assert not tf.initialised()
    terraform.found.cache_clear()


# -- one-line errors of Terraform's output ----------------------------------------------------


def diagnostic(**fields: object) -> str:
    return json.dumps({"@level": "error", "type": "diagnostic", "diagnostic": fields})


def test_the_first_error_diagnostic_of_a_json_stream_is_the_error() -> None:
    stream = "\n".join(
        [
            '{"@level": "info", "@message": "Terraform 1.9.8", "type": "version"}',
            '{"@message": "a line that names a \\"diagnostic\\" key", "type": "diagnostic"}',
            diagnostic(severity="warning", summary="Deprecated", detail="use x"),
            diagnostic(severity="error", summary="Unsupported argument"),
            diagnostic(severity="error", summary="Second", detail="not shown"),
        ]
    )
    assert terraform.last_error(stream) == "Unsupported argument"
    assert terraform.last_error(diagnostic(severity="error")) == "an error without a summary"
    long = diagnostic(severity="error", summary="S", detail="d" * 600)
    assert terraform.last_error(long) == ("S: " + "d" * 600)[:400]


def test_the_first_error_of_text_output_with_its_detail_lines() -> None:
    output = (
        "aws_vpc.main: Creating...\n"
        "╷\n"
        "│ Error: creating EC2 VPC: operation error EC2: CreateVpc\n"
        "│ \n"
        "│ XML syntax error on line 1: unexpected EOF\n"
        "│ \n"
        "│   with aws_vpc.main,\n"
        "╵\n"
    )
    assert terraform.last_error(output) == (
        "creating EC2 VPC: operation error EC2: CreateVpc XML syntax error on line 1: "
        "unexpected EOF"
    )
    assert terraform.last_error("Error: " + "x" * 500) == "x" * 400
    # Its detail begins on the very next line when Terraform leaves no blank line.
    assert terraform.last_error("Error: Invalid value\nthe detail\n\nmore\n") == (
        "Invalid value the detail"
    )


WARNING_WITH_BRACES = (
    "╷\n│ Warning: Deprecated attribute\n│\n│ use provider_installation { filesystem_mirror {} }\n"
    "╵\n"
)


def test_the_json_document_is_found_among_warnings_that_hold_braces_of_their_own() -> None:
    """stderr comes merged into the output: a warning may stand before the document (and hold
    `{`) or after it; `version -json` spreads its document over lines."""
    plan = {"format_version": "1.2", "resource_changes": [{"address": "aws_vpc.main"}]}
    assert terraform.json_document(WARNING_WITH_BRACES + json.dumps(plan) + "\n") == plan
    assert terraform.json_document(json.dumps(plan) + "\n" + WARNING_WITH_BRACES) == plan
    version = json.dumps({"terraform_version": "1.9.8", "platform": "linux_amd64"}, indent=2)
    assert terraform.json_document(WARNING_WITH_BRACES + version)["terraform_version"] == "1.9.8"
    assert terraform.json_document('{"cut": \n{"whole": 1}\n') == {"whole": 1}
    for nothing in ("", "Error: no state\n", WARNING_WITH_BRACES, '{"cut": '):
        with pytest.raises(ValueError, match=r"^no JSON document in Terraform's output$"):
            terraform.json_document(nothing)


def test_a_diagnostic_cut_off_mid_line_is_passed_over_for_the_next_error() -> None:
    stream = "\n".join(
        [
            '{"@level": "error", "type": "diagnostic", "diagnostic": {"summary": "cut',
            diagnostic(severity="error", summary="Unsupported argument", detail="x"),
        ]
    )
    assert terraform.last_error(stream) == "Unsupported argument: x"


def test_a_json_stream_without_an_error_ends_with_its_last_message() -> None:
    stream = "\n".join(
        [
            '{"@message": "first", "type": "version"}',
            '{"@message": "second"}',
            '{"@message": "' + "m" * 500 + '"}',
        ]
    )
    assert terraform.last_error(stream) == "m" * 400
    # Its last line without a message, or not JSON at all: the line itself.
    assert terraform.last_error('{"@message": "a"}\n{"@message": "b"}\n{"type": "outputs"}') == (
        '{"type": "outputs"}'
    )
    assert terraform.last_error('{"@message": "a"}\n{cut off') == "{cut off"
    assert terraform.last_error("") == "no output"


def test_the_debug_text_of_a_json_stream_shows_each_diagnostic_on_its_own_lines() -> None:
    stream = "\n".join(
        [
            "plain line",
            '{"diagnostic" that is cut',
            diagnostic(severity="error"),
            diagnostic(severity="error", summary="Bad", detail="very bad"),
            "last line",
        ]
    )
    assert terraform.plain(stream).splitlines() == [
        "plain line",
        '{"diagnostic" that is cut',
        "Error: ",
        "",
        "Error: Bad",
        "very bad",
        "last line",
    ]
    assert terraform.plain('{"@message": "x", "type": "diagnostic"}') == "Error: \n"


def test_validate_diagnostics_one_per_line() -> None:
    found = [
        {"summary": "Unsupported argument", "detail": "x is not expected",
         "range": {"filename": "main.tf", "start": {"line": 3}}},
        {"summary": "Missing file", "range": {"filename": "data.tf"}},
        {"summary": "No range", "detail": ""},
        {"detail": "only a detail"},
    ]  # fmt: skip
    assert terraform.describe(found).splitlines() == [
        "main.tf:3: Unsupported argument: x is not expected",
        "data.tf: Missing file",
        "No range",
        "only a detail",
    ]


LOCKED = """Error: Error acquiring the state lock

Lock Info:
  ID:        9db590f1-b6fe-c5f2-2678-8804f089deba
  Path:      kubeplat-dev-state/dev/terraform.tfstate
  Operation: OperationTypeApply
  Who:       alice@laptop
  Version:   1.9.8
  Created:   2026-12-06 10:00:05.123456 +0000 UTC
"""


def test_a_lock_error_without_an_environment_names_the_placeholder() -> None:
    found = terraform.failure("plan", LOCKED)
    assert isinstance(found, terraform.StateLocked)
    assert found.message == (
        "the environment's state is locked by alice@laptop (apply since 2026-12-06 10:00:05 UTC, "
        "lock ID 9db590f1-b6fe-c5f2-2678-8804f089deba)"
    )
    assert found.hint.endswith(
        "release the lock with: kubeplat unlock -e ENV 9db590f1-b6fe-c5f2-2678-8804f089deba"
    )


def test_a_killed_terraform_names_its_signal_and_its_log_where_there_is_one(
    tmp_path: Path,
) -> None:
    killed = terraform.failure("apply", "aws_vpc.main: Creating...", returncode=-9)
    assert killed.message == (
        "terraform apply was killed (SIGKILL) before it finished; its last words: "
        "aws_vpc.main: Creating..."
    )
    assert killed.hint == (
        "run the same command again: it resumes, and if the killed run left the state locked "
        "it names the lock and the kubeplat unlock command that releases it"
    )
    log = tmp_path / "apply.log"
    logged = terraform.failure("apply", "x", returncode=-15, log=log)
    assert logged.message.startswith("terraform apply was killed (SIGTERM)")
    assert logged.hint.endswith(f"releases it; its output: {log}")


def test_a_full_disk_is_said_whatever_its_case_and_its_line_is_cut() -> None:
    found = terraform.failure("init", "Error: write /tmp/x: No Space Left On Device")
    assert found.message == (
        "terraform init failed: the disk is full (Error: write /tmp/x: No Space Left On Device)"
    )
    long = terraform.failure("init", "write " + "p" * 300 + ": no space left on device")
    assert (
        long.message == f"terraform init failed: the disk is full ({('write ' + 'p' * 300)[:200]})"
    )


def test_a_registry_out_of_reach_says_how_to_install_the_provider_without_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("KUBEPLAT_TF_MIRROR", raising=False)
    found = terraform.failure(
        "init", "Error: Failed to query available provider packages\n\ncould not connect"
    )
    assert found.message == (
        "terraform init could not install the AWS provider from the Terraform registry: "
        "Failed to query available provider packages could not connect"
    )
    assert found.hint == (
        "without access to registry.terraform.io, set KUBEPLAT_TF_MIRROR to a filesystem mirror "
        "of the provider (made with: terraform providers mirror DIR), or configure "
        "provider_installation in ~/.terraformrc (TF_CLI_CONFIG_FILE)"
    )


def test_a_working_copys_failure_names_its_environment_program_and_signal(
    tmp_path: Path,
) -> None:
    tf = terraform.Terraform(tmp_path / "work", name="prod", program="kp")
    locked = tf.failure("apply", process.Result(returncode=1, output=LOCKED))
    assert locked.hint.endswith(
        "release the lock with: kp unlock -e prod 9db590f1-b6fe-c5f2-2678-8804f089deba"
    )
    tf.last_log = tmp_path / "x.log"
    killed = tf.failure("apply", process.Result(returncode=-2, output="x"))
    assert killed.message.startswith("terraform apply was killed (SIGINT)")
    assert killed.hint.endswith(
        f"the kp unlock command that releases it; its output: {tf.last_log}"
    )
    # A lock this working copy's own killed run left: named as such.
    tf.cut_off = {
        "command": "apply", "user": "alice", "host": "laptop",
        "started": "2026-12-06 10:00:00 UTC", "log": "/w/x.log",
    }  # fmt: skip
    own = tf.failure("plan", process.Result(returncode=1, output=LOCKED))
    assert own.message == (
        "the environment's state is locked by a terraform apply started here at 2026-12-06 "
        "10:00:00 UTC whose kubeplat was stopped; that Terraform is gone (lock ID "
        "9db590f1-b6fe-c5f2-2678-8804f089deba, held by alice@laptop)"
    )


def test_a_lock_is_this_copys_own_only_within_two_minutes_of_its_start() -> None:
    run = {"user": "alice", "host": "laptop", "started": "2026-12-06 10:00:00 UTC"}
    for created, same in (
        ("2026-12-06 10:01:59.9 +0000 UTC", True),
        ("2026-12-06 10:02:00.0 +0000 UTC", False),
        ("2026-12-06 09:58:00.5 +0000 UTC", False),
        ("", False),
    ):
        assert terraform._same_run(run, {"Who": "alice@laptop", "Created": created}) is same
    assert not terraform._same_run(run, {"Who": "alice@laptop"})  # no Created: not provable
    assert not terraform._same_run(run, {"Who": "bob@laptop", "Created": "2026-12-06 10:00:01"})


# -- the working copy's runs ------------------------------------------------------------------


RUN_STANDIN = """#!/bin/sh
if [ "$1" = version ]; then echo '{"terraform_version": "1.9.8"}'; exit 0; fi
printf 'argv %s\\n' "$*" >> "$STANDIN_LOG"
case " $* " in
  *" init "*) mkdir -p "$TF_DATA_DIR" ;;
  *" validate -no-color -json "*) echo '{"valid": true, "format_version": "1.0"}' ;;
  *) echo "line one"; echo "line two" ;;
esac
"""


@pytest.fixture
def tf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[terraform.Terraform]:
    standin(tmp_path, monkeypatch, RUN_STANDIN)
    yield terraform.Terraform(tmp_path / "work", name="dev")
    terraform.found.cache_clear()
    console.enable_debug(False)


def test_validate_asks_for_json_and_a_report_without_diagnostics_is_valid(
    tf: terraform.Terraform, tmp_path: Path
) -> None:
    assert tf.validate() == []
    assert seen(tmp_path) == [f"argv -chdir={tf.module} validate -no-color -json"]


def test_state_subcommands_keep_every_argument_after_their_flags(tf: terraform.Terraform) -> None:
    assert tf.command("state", "rm", "aws_instance.a", "aws_instance.b")[2:] == [
        "state", "rm", "-no-color", "aws_instance.a", "aws_instance.b"
    ]  # fmt: skip


def test_a_variable_removed_that_is_not_set_is_no_error(
    tf: terraform.Terraform, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    tf.env = {"AWS_PROFILE": None, "AWS_REGION": None}
    found = tf.environ()
    assert "AWS_PROFILE" not in found and "AWS_REGION" not in found


def test_with_debug_terraforms_lines_go_to_stderr_as_they_come(
    tf: terraform.Terraform, capsys: pytest.CaptureFixture[str]
) -> None:
    tf.run("output")
    assert capsys.readouterr().err == ""
    console.enable_debug(True)
    tf.run("output")
    assert capsys.readouterr().err.splitlines()[-2:] == ["line one", "line two"]
    got: list[str] = []
    tf.run("output", on_line=got.append)  # a caller's own reader: it has the lines alone
    assert got == ["line one", "line two"] and capsys.readouterr().err == ""


def test_an_interrupted_run_says_how_to_resume(
    tf: terraform.Terraform, monkeypatch: pytest.MonkeyPatch
) -> None:
    terraform.binary()  # its version asked now, of the stand-in
    hints: list[str | None] = []

    def interrupted(args: list[str], **kwargs: object) -> process.Result:
        hints.append(kwargs.get("interrupt_hint"))  # type: ignore[arg-type]
        return process.Result(returncode=0, output="")

    monkeypatch.setattr(process, "run", interrupted)
    tf.run("apply")
    assert hints == ["run the same command again to resume; the state lock was released"]


def test_each_runs_log_is_named_by_its_utc_start(
    tf: terraform.Terraform, monkeypatch: pytest.MonkeyPatch
) -> None:
    with local_zone("LINT-14"):  # UTC+14: a local stamp would be a day off
        before = dt.datetime.now(dt.UTC).replace(tzinfo=None)
        path = tf.log_path("plan")
        after = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    stamp = dt.datetime.strptime(path.name, "%Y%m%dT%H%M%S.%fZ-plan.log")
    assert before <= stamp <= after


def test_stop_of_a_child_already_gone_is_no_error(tf: terraform.Terraform) -> None:
    child = subprocess.Popen(["true"])
    child.wait()
    tf.running = child.pid
    tf.stop()
    assert tf.stopping


def test_a_gone_terraforms_record_is_removed_by_its_pid(tf: terraform.Terraform) -> None:
    child = subprocess.Popen(["true"])
    child.wait()
    path = tf.workdir / terraform.OPERATION
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"pid": child.pid, "host": os.uname().nodename, "ticks": None}))
    assert tf.check_running() is not None
    assert not path.exists()


def test_a_record_without_a_pid_or_not_a_record_at_all_is_no_running_terraform(
    tf: terraform.Terraform,
) -> None:
    path = tf.workdir / terraform.OPERATION
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"command": "apply", "host": os.uname().nodename}))
    assert tf.check_running() == {"command": "apply", "host": os.uname().nodename}
    path.write_text("[1, 2]")
    assert tf.check_running() is None


def test_the_backend_record_is_written_in_a_stable_order(tf: terraform.Terraform) -> None:
    tf.init({"key": "dev/terraform.tfstate", "bucket": "b", "region": "eu-west-1"})
    assert (tf.data_dir / terraform.BACKEND_RECORD).read_text() == (
        '{"bucket": "b", "key": "dev/terraform.tfstate", "region": "eu-west-1"}'
    )


def test_the_operation_record_is_readable_json_with_a_utc_start(
    tf: terraform.Terraform, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "operation.json"
    with local_zone("LINT-14"):  # UTC+14
        terraform._write_operation(path, "apply", os.getpid(), tmp_path / "x.log")
    text = path.read_text()
    assert text.startswith('{\n  "command": "apply",\n') and text.endswith("\n}\n")
    started = dt.datetime.strptime(json.loads(text)["started"], "%Y-%m-%d %H:%M:%S UTC")
    assert abs(started - dt.datetime.now(dt.UTC).replace(tzinfo=None)) < dt.timedelta(minutes=1)
    terraform._remove_operation(path, os.getpid())
    assert not path.exists()
    terraform._remove_operation(path, os.getpid())  # already gone: nothing to do


# -- is the recorded Terraform still running? -------------------------------------------------


@pytest.fixture
def oddly_named(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A running process whose name has a parenthesis and spaces in it, as /proc/PID/stat
    shows it between parentheses: `PID (tf) Z x) S ...`."""
    link = tmp_path / "tf) Z x"
    link.symlink_to(sys.executable)
    child = subprocess.Popen([str(link), "-c", "import time; time.sleep(60)"])
    deadline = time.monotonic() + 10
    while "tf) Z x" not in Path(f"/proc/{child.pid}/stat").read_text():
        assert time.monotonic() < deadline, "the child never took its name"
        time.sleep(0.01)
    yield child
    child.kill()
    child.wait()


def test_a_process_with_a_parenthesis_in_its_name_is_read_right(
    oddly_named: subprocess.Popen[bytes],
) -> None:
    ticks = terraform._start_ticks(oddly_named.pid)
    mine = terraform._start_ticks(os.getpid())
    assert ticks is not None and mine is not None
    # Started after this test's process, and not later than now (clock ticks since boot).
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    per_second = os.sysconf("SC_CLK_TCK")
    assert mine <= ticks <= (uptime + 1) * per_second
    assert ticks >= (uptime - 60) * per_second  # it started a moment ago
    assert terraform._alive({"pid": oddly_named.pid, "ticks": ticks})
    assert terraform._alive({"pid": oddly_named.pid})


def test_a_record_without_a_pid_is_not_alive_and_init_is() -> None:
    assert not terraform._alive({})
    assert terraform._alive({"pid": 1})  # pid 1 runs as long as the machine does


def test_terraforms_inputs_are_the_root_modules_variables_and_each_layers_user_data() -> None:
    env = config.load_file(REPO / "environments" / "example.tfvars")
    bundle = {f"userdata/{layer.name}": f"#!{layer.name}".encode() for layer in render.layers(env)}
    found = terraform.variables(env, bundle)
    declared = {
        name.strip('"')
        for module in (REPO / "terraform").glob("*.tf")
        for block in hcl2.loads(module.read_text()).get("variable", [])
        for name in block
    }
    assert set(found) <= declared
    assert found["userdata"] == {layer.name: f"#!{layer.name}" for layer in render.layers(env)}


def test_without_a_home_or_cache_the_version_is_asked_each_time(
    binary: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.delenv("HOME", raising=False)
    monkeypatch.setenv("STANDIN_JSON", '{"terraform_version": "1.9.8"}')
    assert terraform.version(str(binary)) == (1, 9, 8)
    assert terraform.version(str(binary)) == (1, 9, 8)
    assert len(calls(tmp_path)) == 2
