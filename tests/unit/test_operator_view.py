"""What an operator reads and types every day (issue 17): options anywhere on the line, the
plan summary naming what goes, progress that says what is in flight, a readable `output`,
whole timestamps, a stopped sandbox that is a state and not an error, prompts on a terminal."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from kubeplat import cli, ops, pipeline
from kubeplat.cli import hoist_global_options, output_lines


def test_global_options_after_the_subcommand(kubeplat, environments: Path) -> None:  # type: ignore[no-untyped-def]
    # Our own hints say "run again with --debug" after the command: it works there.
    assert hoist_global_options(["up", "-e", "dev", "--debug"]) == ["--debug", "up", "-e", "dev"]
    assert hoist_global_options(["plan", "--env-dir", "x", "-e", "d", "--sandbox"]) == [
        "--env-dir", "x", "--sandbox", "plan", "-e", "d",
    ]  # fmt: skip
    assert hoist_global_options(["init", "--env-dir=x", "a"]) == ["--env-dir=x", "init", "a"]
    # After `--` nothing is taken for an option.
    assert hoist_global_options(["ssh", "-e", "d", "--", "--debug"]) == [
        "ssh", "-e", "d", "--", "--debug",
    ]  # fmt: skip
    other = environments.parent / "elsewhere"
    result = kubeplat("init", "staging", "--env-dir", str(other))
    assert result.code == 0, result.err
    assert (other / "staging.tfvars").is_file()
    # --debug after the subcommand: a bad file still gets its one-line error, and the
    # traceback that --debug adds.
    (environments / "broken.tfvars").write_text('environment = "broken"\nnot valid (\n')
    result = kubeplat("validate", "-e", "broken", "--debug")
    assert result.code == 1
    assert "Error: " in result.err and "Traceback" in result.err
    assert "Traceback" not in kubeplat("validate", "-e", "broken").err


def _report(**fields: object) -> ops.PlanReport:
    base: dict[str, object] = dict(
        account="123456789012", region="eu-west-1", environment="dev", add=1, change=0,
        destroy=2, rolls=[], uploads=[], plan_file=None, roll_order=[],
    )  # fmt: skip
    base.update(fields)
    return ops.PlanReport(**base)  # type: ignore[arg-type]


def _planned(address: str, action: str, reason: str = "") -> str:
    kind, _, _rest = address.partition(".")
    return json.dumps(
        {"type": "planned_change", "change": {"resource": {"addr": address,
         "resource_type": kind, "resource_key": None}, "action": action, "reason": reason}}
    )  # fmt: skip


def test_the_summary_names_what_is_destroyed_or_replaced_and_why(
    capsys: pytest.CaptureFixture[str],
) -> None:
    lines = [
        _planned("aws_instance.bastion", "delete", "delete_because_no_resource_config"),
        _planned("aws_route53_zone.cluster", "replace", "cannot_update"),
        _planned('aws_subnet.private["a"]', "replace", "tainted"),
        _planned("aws_vpc.main", "update"),
        json.dumps({"type": "change_summary", "changes": {"add": 2, "change": 1, "remove": 3}}),
    ]
    summary = pipeline.summarize(lines)
    assert [(r["action"], r["address"]) for r in summary.removals] == [
        ("delete", "aws_instance.bastion"),
        ("replace", "aws_route53_zone.cluster"),
        ("replace", 'aws_subnet.private["a"]'),
    ]
    # `terraform show -json` gives the attributes that force a replacement (pipeline.explain).
    summary.removals[1]["attributes"] = ["name"]
    report = _report(removals=summary.removals)
    cli._show_plan(report)
    err = capsys.readouterr().err
    assert "to destroy (1):\n  aws_instance.bastion  (no longer in the configuration)" in err
    assert (
        "to replace (destroyed, then created again) (2):\n"
        "  aws_route53_zone.cluster  (forces replacement: name)\n"
        '  aws_subnet.private["a"]  (tainted (a create that failed half-way))'
    ) in err
    document = report.as_json()
    assert document["destroyed"] == ["aws_instance.bastion"]
    assert document["replaced"][0] == {
        "address": "aws_route53_zone.cluster", "reason": "cannot_update", "attributes": ["name"],
    }  # fmt: skip


def test_a_plan_that_only_adopts_is_a_change_and_names_each_import(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # adopt.py's import blocks: Terraform plans no create, no update, only imports. Such a plan
    # must be applied (otherwise the leftovers stay outside the state and the next run tries
    # to create them again), and the operator sees what is adopted.
    planned = json.loads(_planned("aws_vpc.main", "no-op"))
    planned["change"]["importing"] = {"id": "vpc-0abc"}
    lines = [
        json.dumps(planned),
        json.dumps({"type": "change_summary", "changes": {"add": 0, "change": 0, "remove": 0,
                    "import": 1}}),
    ]  # fmt: skip
    summary = pipeline.summarize(lines)
    assert summary.imports == [("aws_vpc.main", "vpc-0abc")]
    assert summary.changes
    report = _report(add=0, destroy=0, imports=summary.imports)
    assert report.changes
    cli._show_plan(report)
    err = capsys.readouterr().err
    assert "0 to add, 0 to change, 0 to destroy, 1 to import" in err
    assert "to adopt (1, left in AWS by an interrupted run" in err
    assert "  aws_vpc.main  (vpc-0abc)" in err
    assert "no changes" not in err
    assert report.as_json()["imported"] == [{"address": "aws_vpc.main", "id": "vpc-0abc"}]
    assert not pipeline.summarize(lines[1:]).changes


def test_replace_paths_read_as_attribute_paths() -> None:
    assert pipeline._path(["tag_specifications", 0, "tags"]) == "tag_specifications[0].tags"
    assert pipeline._path(["name"]) == "name"


def test_apply_progress_without_a_terminal_is_timestamped_and_names_what_is_in_flight(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    progress = pipeline.ApplyProgress()
    monkeypatch.setattr(pipeline.ApplyProgress, "QUIET", 0.0)

    def hook(kind: str, address: str, **more: object) -> str:
        return json.dumps(
            {"type": kind, "hook": {"resource": {"addr": address}, "action": "create", **more}}
        )

    with progress.activity:
        progress(hook("apply_start", "aws_lb.api_public"))
        progress(hook("apply_start", "aws_vpc.main"))
        progress(hook("apply_complete", "aws_vpc.main", elapsed_seconds=3))
        progress(hook("apply_progress", "aws_lb.api_public", elapsed_seconds=10))
    err = capsys.readouterr().err.splitlines()
    stamp = r"\d\d:\d\d:\d\d  "
    assert re.fullmatch(stamp + "applying", err[0]), err
    assert re.fullmatch(stamp + r"created aws_vpc\.main \(3s\)", err[1]), err
    assert re.fullmatch(stamp + r"still creating aws_lb\.api_public \d+s", err[2]), err


def test_output_is_readable_and_whole() -> None:
    policy = json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow"}] * 3})
    lines = output_lines(
        {
            "api_endpoint": "https://dev-kube-api-1.eu-west-1.elb.amazonaws.com",
            "node_policies": {"compute": policy},
            "bucket_prefixes": {"secure": ["s3://b/dev/pki/secure/", "s3://b/dev/manifests/"]},
            "autoscaling_groups": {"compute": "dev-compute", "secure": "dev-secure"},
        },
        "dev",
    )
    assert lines == [
        "api_endpoint = https://dev-kube-api-1.eu-west-1.elb.amazonaws.com",
        "autoscaling_groups:",
        "  compute: dev-compute",
        "  secure:  dev-secure",
        "bucket_prefixes:",
        "  secure:",
        "    s3://b/dev/pki/secure/",
        "    s3://b/dev/manifests/",
        "node_policies:",
        "  compute: IAM policy, 3 statements (kubeplat output -e dev -o json shows it)",
    ]
    assert not any("\\" in line for line in lines)  # no escaped JSON


def test_launch_time_is_shown_whole_in_utc() -> None:
    assert cli._when("2026-12-03T21:04:05+01:00") == "2026-12-03 20:04:05 UTC"
    assert cli._when("") == "-"


def test_a_stopped_sandbox_is_a_state_not_an_error(kubeplat) -> None:  # type: ignore[no-untyped-def]
    result = kubeplat("sandbox", "status")
    assert result.code == 3
    assert "Error" not in result.err
    assert "the sandbox is not running; start it: kubeplat sandbox start" in result.err
    assert result.out == ""


def test_prompts_follow_stdin_like_terraform(monkeypatch: pytest.MonkeyPatch) -> None:
    """`kubeplat up | tee log`: stdout (and even stderr) a pipe, stdin a terminal: it asks."""

    class Terminal:
        def isatty(self) -> bool:
            return True

    class Pipe:
        def isatty(self) -> bool:
            return False

    monkeypatch.setattr(sys, "stdin", Terminal())
    monkeypatch.setattr(sys, "stdout", Pipe())
    monkeypatch.setattr(sys, "stderr", Pipe())
    assert cli._interactive()
    monkeypatch.setattr(sys, "stdin", Pipe())
    assert not cli._interactive()


def test_the_rolls_read_in_roll_order_and_each_upload_says_when_it_went(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`up`'s report: the layers a plan rolls in the order they roll (secure first), and each
    upload said before or after the apply, as it happened (a changed kube-apiserver manifest
    goes before it, the compute nodes' staged manifest only after it succeeded)."""
    cli._show_plan(_report(rolls=["compute", "secure"]))
    assert "will roll: secure, compute" in capsys.readouterr().err
    done = ops.UpReport(
        _report(),
        ["manifests/secure/kube-apiserver.yaml", "cloud-config/secure",
         "manifests/compute/kube-proxy.yaml", "-pki/old.crt"],
        True, {}, None, before_apply=2,
    )  # fmt: skip
    cli._show_result(done, shown=True)
    err = capsys.readouterr().err
    assert err.index(
        "uploaded manifests/secure/kube-apiserver.yaml (before the apply)"
    ) < err.index("uploaded cloud-config/secure (before the apply)")
    assert "uploaded manifests/compute/kube-proxy.yaml (after the apply: made current)" in err
    assert "removed pki/old.crt (no longer used)" in err
    nothing_applied = ops.UpReport(
        _report(), ["manifests/compute/kube-proxy.yaml"], False, {}, None
    )
    cli._show_result(nothing_applied, shown=True)
    err = capsys.readouterr().err
    assert "uploaded manifests/compute/kube-proxy.yaml" in err and "apply" not in err
