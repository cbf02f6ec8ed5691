"""The one-line error kubeplat prints when Terraform fails, for each failure a user meets: a full
disk, a held state lock (another run's, or one a stopped kubeplat left), a stale saved plan, a
provider that cannot be installed, and any other error, read from Terraform's human output or its
`-json` stream. The integration tier provokes several of these with the real Terraform
(tests/integration/test_faults.py); these pin every branch and message, in-process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kubeplat import terraform

LOCK = """
╷
│ Error: Error acquiring the state lock
│
│ Error message: operation error S3: PutObject, https response error StatusCode: 412
│ Lock Info:
│   ID:        0f3e2c1d-5a6b-4c7d-8e9f-0a1b2c3d4e5f
│   Path:      bucket/eu-west-1/dev/terraform.tfstate
│   Operation: OperationTypeApply
│   Who:       alice@laptop
│   Version:   1.11.4
│   Created:   2026-12-03 12:03:00.123456 +0000 UTC
│   Info:
╵
"""
LOCK_ID = "0f3e2c1d-5a6b-4c7d-8e9f-0a1b2c3d4e5f"
HUMAN = """
Planning failed. Terraform encountered an error while generating this plan.

╷
│ Error: creating EC2 VPC: operation error EC2: CreateVpc, https response error
│ StatusCode: 400, api error VpcLimitExceeded: The maximum number of VPCs has been reached.
│
│   with aws_vpc.main,
│   on network.tf line 1, in resource "aws_vpc" "main":
│    1: resource "aws_vpc" "main" {
│
╵
"""


def diagnostic(severity: str, summary: str, detail: str) -> str:
    return json.dumps(
        {"@level": severity, "type": "diagnostic",
         "diagnostic": {"severity": severity, "summary": summary, "detail": detail}}
    )  # fmt: skip


def test_a_held_lock_names_who_holds_it_since_when_and_how_to_release_it() -> None:
    error = terraform.failure("apply", LOCK, env="dev")
    assert isinstance(error, terraform.StateLocked)
    assert error.message == (
        f"the environment's state is locked by alice@laptop (apply since 2026-12-03 12:03:00 UTC, "
        f"lock ID {LOCK_ID})"
    )
    assert error.hint == (
        "wait for that run to finish and try again; if it died, release the lock with: "
        f"kubeplat unlock -e dev {LOCK_ID}"
    )
    assert terraform.lock_holder(LOCK) == {
        "ID": LOCK_ID, "Path": "bucket/eu-west-1/dev/terraform.tfstate",
        "Operation": "OperationTypeApply", "Who": "alice@laptop",
        "Created": "2026-12-03 12:03:00.123456 +0000 UTC",
    }  # fmt: skip
    # Lock info Terraform left out is said as unknown, never as a crash.
    bare = terraform.failure("plan", "Error: Error acquiring the state lock\n", env="dev")
    assert bare.message == (
        "the environment's state is locked by someone (an operation since ?, lock ID LOCK_ID)"
    )


def test_a_lock_a_stopped_kubeplat_left_is_told_apart_from_another_runs() -> None:
    """The lock of this checkout's own run that kubeplat's death cut off (same user@host,
    taken within two minutes of that run's start) says so, with its log; any other lock is
    someone else's run."""
    cut = {"user": "alice", "host": "laptop", "started": "2026-12-03 12:02:01 UTC",
           "command": "apply", "log": "/w/.kubeplat/dev/terraform-apply.log"}  # fmt: skip
    ours = terraform.failure("plan", LOCK, env="dev", cut_off=cut)
    assert ours.message == (
        "the environment's state is locked by a terraform apply started here at "
        f"2026-12-03 12:02:01 UTC whose kubeplat was stopped; that Terraform is gone (lock ID "
        f"{LOCK_ID}, held by alice@laptop)"
    )
    assert ours.hint == (
        "its output: /w/.kubeplat/dev/terraform-apply.log; release the lock with: kubeplat "
        f"unlock -e dev {LOCK_ID}; then run the same command again (it resumes)"
    )
    for other in (
        {**cut, "host": "desk"},  # another machine
        {**cut, "started": "2026-12-03 12:00:59 UTC"},  # two minutes and a second before
        {**cut, "started": "2026-12-03 12:05:01 UTC"},  # two minutes and a second after
        {**cut, "started": "not a time"},
    ):
        assert "someone" not in terraform.failure("plan", LOCK, env="dev", cut_off=other).message
        assert (
            "whose kubeplat was stopped"
            not in terraform.failure("plan", LOCK, env="dev", cut_off=other).message
        ), other
    within = {**cut, "started": "2026-12-03 12:01:01 UTC"}  # 119 seconds before
    assert (
        "whose kubeplat was stopped"
        in terraform.failure("plan", LOCK, env="dev", cut_off=within).message
    )


def test_a_full_disk_says_so_first() -> None:
    output = HUMAN + "│ Error: Failed to save state: write .terraform/x: no space left on device\n"
    error = terraform.failure("apply", output)
    assert error.message == (
        "terraform apply failed: the disk is full (│ Error: Failed to save state: write "
        ".terraform/x: no space left on device)"
    )
    assert error.hint == (
        "free some space (Terraform writes under .kubeplat/ and TMPDIR), then run the same "
        "command again"
    )


def test_a_stale_saved_plan_says_nothing_was_applied() -> None:
    error = terraform.failure("apply", "Error: Saved plan is stale\n\nThe given plan file ...")
    assert (error.message, error.hint) == (
        "the state changed since this plan was made (another run applied first); nothing was "
        "applied",
        "run the command again: it plans against the new state",
    )


@pytest.mark.parametrize(
    "said",
    ["Failed to query available provider packages", "Failed to install provider",
     "could not connect to registry", "Failed to resolve provider packages"],
)  # fmt: skip
def test_a_provider_that_cannot_be_installed_names_where_it_was_looked_for(
    said: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    output = f"Error: {said}\n\nCould not retrieve the list of available versions.\n"
    monkeypatch.delenv("KUBEPLAT_TF_MIRROR", raising=False)
    registry = terraform.failure("init", output)
    assert registry.message == (
        f"terraform init could not install the AWS provider from the Terraform registry: {said} "
        "Could not retrieve the list of available versions."
    )
    assert registry.hint.startswith("without access to registry.terraform.io, set KUBEPLAT_TF")
    monkeypatch.setenv("KUBEPLAT_TF_MIRROR", "/srv/mirror")
    mirror = terraform.failure("init", output)
    assert mirror.message.startswith(
        "terraform init could not install the AWS provider from its filesystem mirror /srv/mirror: "
    )
    assert (
        mirror.hint == "the mirror must hold hashicorp/aws >= 5.60 (terraform providers mirror DIR)"
    )
    # The same words from another command are that command's own failure.
    assert terraform.failure("plan", output).message.startswith("terraform plan failed: ")


def test_any_other_failure_is_its_first_error_on_one_line(tmp_path: Path) -> None:
    log = tmp_path / "terraform-plan.log"
    error = terraform.failure("plan", HUMAN, log=log)
    assert error.message == (
        "terraform plan failed: creating EC2 VPC: operation error EC2: CreateVpc, https response "
        "error StatusCode: 400, api error VpcLimitExceeded: The maximum number of VPCs has been "
        "reached."
    )
    assert error.hint == (
        f"run again with --debug to see Terraform's whole output; Terraform's whole output: {log}"
    )
    assert terraform.failure("plan", HUMAN).hint == (
        "run again with --debug to see Terraform's whole output"
    )


def test_the_first_error_of_a_json_stream_not_its_warnings() -> None:
    stream = "\n".join(
        [
            '{not json, "diagnostic"',
            diagnostic("warning", "Deprecated attribute", "use another"),
            diagnostic(
                "error", "Invalid count argument", "The count value depends on " + "x" * 500
            ),
            diagnostic("error", "Second error", "never shown"),
        ]
    )
    said = terraform.last_error(stream)
    assert said.startswith("Invalid count argument: The count value depends on xxx")
    assert len(said) == 400
    assert terraform.last_error(diagnostic("error", "Only a summary", "")) == "Only a summary"
    # No error at all: the last line said, or that there was none.
    assert terraform.last_error("Initializing...\n  killed\n\n") == "killed"
    assert terraform.last_error("") == "no output"
    assert terraform.last_error("Error: one\n\nits detail\n\nnot this") == "one its detail"


def test_a_json_stream_reads_as_text_in_the_log_and_the_lock_error() -> None:
    stream = "\n".join(["plain line", diagnostic("error", "Boom", "the detail"), '{"diagnostic"'])
    assert terraform.plain(stream) == 'plain line\nError: Boom\nthe detail\n{"diagnostic"'
    locked = "\n".join(
        diagnostic(
            "error", "Error acquiring the state lock", LOCK.split("│ Error message:")[1]
        ).splitlines()
    )
    assert terraform.failure("plan", locked, env="dev").message.startswith(
        "the environment's state is locked by alice@laptop (apply since 2026-12-03 12:03:00 UTC"
    )


def test_validate_diagnostics_are_one_line_each_with_where() -> None:
    said = terraform.describe(
        [
            {"summary": "Unsupported argument", "detail": "An argument named \"x\" is not expected.",
             "range": {"filename": "main.tf", "start": {"line": 7}}},
            {"summary": "No range", "detail": ""},
        ]
    )  # fmt: skip
    assert said == (
        'main.tf:7: Unsupported argument: An argument named "x" is not expected.\nNo range'
    )


def test_a_terraform_killed_by_a_signal_says_so_not_its_first_log_line(tmp_path: Path) -> None:
    """A Terraform killed mid-apply (the OOM killer, a kill -9) leaves a -json stream with no
    error in it: the message says it was killed, and its last words, not its banner."""
    stream = "\n".join([
        json.dumps({"@level": "info", "@message": "Terraform 1.11.4", "type": "version"}),
        json.dumps({"@level": "info", "@message": "aws_launch_template.node[\"compute\"]: Modifying...",
                    "type": "apply_start"}),
    ])  # fmt: skip
    log = tmp_path / "x-apply.log"
    error = terraform.failure("apply", stream, env="dev", log=log, returncode=-9)
    assert error.message == (
        "terraform apply was killed (SIGKILL) before it finished; its last words: "
        'aws_launch_template.node["compute"]: Modifying...'
    )
    assert error.hint == (
        "run the same command again: it resumes, and if the killed run left the state locked it "
        f"names the lock and the kubeplat unlock command that releases it; its output: {log}"
    )
    assert "Terraform 1.11.4" not in error.message
    unknown = terraform.failure("plan", "", returncode=-200)
    assert unknown.message.startswith("terraform plan was killed (signal 200) before it finished")
    # An exit without a signal and without an error diagnostic: its last message, not raw JSON.
    assert terraform.failure("apply", stream).message == (
        'terraform apply failed: aws_launch_template.node["compute"]: Modifying...'
    )
