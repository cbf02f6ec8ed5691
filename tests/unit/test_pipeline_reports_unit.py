"""What kubeplat/pipeline.py reports to the operator, in the unit tier: the plan summary read
from Terraform's `-json` stream (counts, removals, imports, outputs, and which attributes force
each replacement), a plan that adopted leftovers, apply progress lines and their styles, the
wait for the secure layer, the preparation thread beside an early plan, and the errors the
read-only entry points raise.

Stand-ins, and why:

- `ShowingTerraform` is a `Terraform` whose `run` answers from a script instead of running the
  binary (unit tests never run Terraform): each call is recorded (subcommand, arguments,
  `check`), its output lines are fed to `on_line` the way `process.run` does (or, with no
  `on_line`, printed with --debug, as `Terraform.run` does), and a failure with `check` is
  raised as `Terraform.run` raises it. Its `show -json` outputs use Terraform's real plan JSON
  shape (`resource_changes[].address`, `change.actions`, `change.replace_paths`).
- `adopt.adopt` is replaced by a RECORDING stand-in in the `_planned` tests: adopting reads AWS
  and `terraform show` (tests/unit/test_adopt.py covers it); here only what `_planned` hands it
  and does with its answer.
- `console.status` is RECORDED (message, style) where the style is what is under test: the
  style is the colour a terminal shows, which capsys (no terminal) cannot see.
- Auto Scaling for `wait_for_secure` is a RECORDING stand-in (`Looks`): the emulator puts every
  instance in service at once, so it cannot show a group still forming or a missing field.
- S3 for `deployed` is a stand-in answering `head_bucket` with a chosen error (moto answers a
  missing bucket only with "404"; S3 may also answer NoSuchBucket or NotFound, or be
  unreachable); KMS, STS and everything else is moto's in-process mock (`mock_aws`), through
  tests/unit/test_pipeline_unit.py's helpers (`InProcess`, `built`, `pki_set`, ...).
- `pipeline.connect` is replaced where what is under test is what `deployed` and `prepare` do
  with the session (`Headless`) or which environment they ask for (a RECORDING stand-in that
  stops there); `aws.check_account` answers moto's account where a sandbox session is made
  for an endpoint nothing listens on (the account check has its own tests); `rotation.step` is
  a stand-in answering a rotation in progress (whether a step may be taken reads the nodes'
  reports: tests/unit/test_pki_rotation.py).
- `os.setpriority` is replaced where the preparation thread's priority is under test (a
  recording stand-in, or one failing as on a system that refuses it); a running or stopped
  sandbox is `sandbox.current`/`sandbox.ensure` answering a record (no emulator process).
- Every wait reads a fake clock (`pipeline.time` replaced, the `clock` fixture of
  test_pipeline_unit.py): nothing sleeps.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import threading
import zipfile
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import boto3
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from kubeplat import config, console, pipeline, pki, rotation, sandbox
from kubeplat.errors import KubeplatError, TerraformFailed
from kubeplat.process import Result
from kubeplat.store import Conflict
from kubeplat.terraform import Terraform
from tests.unit import test_pipeline_unit as base
from tests.unit.test_pipeline_unit import (
    ACCOUNT,
    REGION,
    WAITING,
    Clock,
    InProcess,
    aws_file,
    boto,
    built,
    hook,
    pki_set,
    prepare,
    session,
)

# test_pipeline_unit.py's fixtures, by name: an AWS account in process (`cloud`), the example
# environment in it (`env`), the fake clock of every wait (`clock`, autouse there and here),
# and a sandbox that must not be started (`no_sandbox_start`).
cloud = base.cloud
env = base.env
clock = base.clock
no_sandbox_start = base.no_sandbox_start

# -- stand-ins ------------------------------------------------------------------------------------


class ShowingTerraform(Terraform):
    """Terraform answering each run from `answers` (subcommand -> Result), recording the calls."""

    def __init__(self, workdir: Path, answers: dict[str, list[Result]]) -> None:
        super().__init__(workdir, name="example")
        self.answers = answers
        self.calls: list[tuple[str, tuple[str, ...], bool]] = []

    def run(
        self,
        subcommand: str,
        *args: str,
        on_line: Callable[[str], None] | None = None,
        check: bool = True,
    ) -> Result:
        self.calls.append((subcommand, args, check))
        if on_line is None and console.debug_enabled():
            on_line = console.debug
        queue = self.answers[subcommand]
        result = queue.pop(0) if len(queue) > 1 else queue[0]
        for line in result.output.splitlines():
            if on_line is not None:
                on_line(line)
        if check and result.returncode != 0:
            raise self.failure(subcommand, result)
        return result


def planned(address: str, action: str, **more: Any) -> str:
    """One `planned_change` line of `terraform plan -json`."""
    kind = address.split(".")[0]
    return json.dumps({"type": "planned_change", "change": {
        "resource": {"addr": address, "resource_type": kind}, "action": action, **more}})  # fmt: skip


def shown(*changes: tuple[str, list[str], list[list[Any]] | None]) -> str:
    """`terraform show -json PLAN`'s document: (address, actions, replace_paths) each."""
    resource_changes = []
    for address, actions, paths in changes:
        change: dict[str, Any] = {"actions": actions, "before": {}, "after": {}}
        if paths is not None:
            change["replace_paths"] = paths
        resource_changes.append({"address": address, "type": address.split(".")[0],
                                 "change": change})  # fmt: skip
    return json.dumps({"format_version": "1.2", "terraform_version": "1.9.8",
                       "resource_changes": resource_changes})  # fmt: skip


@pytest.fixture
def statuses(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Every status line said, with its style (the colour on a terminal)."""
    said: list[tuple[str, str]] = []
    monkeypatch.setattr(
        console, "status", lambda message, style="info": said.append((message, style))
    )
    return said


LAUNCH = 'aws_launch_template.node["secure"]'
BASTION = "aws_instance.bastion"


# -- explain: the attributes forcing each replacement ---------------------------------------------


def replacing() -> pipeline.PlanSummary:
    return pipeline.summarize(
        [
            planned(LAUNCH, "replace", reason="cannot_update"),
            planned(BASTION, "replace", reason="cannot_update"),
            planned("aws_instance.gone", "delete", reason="delete_because_no_resource_config"),
        ]
    )


def test_a_replacement_names_the_attributes_that_force_it(tmp_path: Path) -> None:
    document = shown(
        (LAUNCH, ["delete", "create"], [["user_data"], ["block_device_mappings", 0, "ebs",
                                                        0, "kms_key_id"], ["user_data"]]),
        (BASTION, ["create", "delete"], [["ami"]]),
        ("aws_instance.gone", ["delete"], None),
        ("aws_vpc.main", ["update"], None),
    )  # fmt: skip
    # Terraform may print a warning before the document; the document has nested objects.
    tf = ShowingTerraform(
        tmp_path, {"show": [Result(0, "Warning: the plan was made by 1.9.7\n" + document)]}
    )
    plan = tmp_path / "up.tfplan"
    summary = replacing()
    assert pipeline.explain(summary, tf, plan) is summary
    assert tf.calls == [("show", ("-json", str(plan)), False)]
    assert summary.removals == [
        {"address": "aws_instance.gone", "action": "delete",
         "reason": "delete_because_no_resource_config", "attributes": []},
        {"address": BASTION, "action": "replace", "reason": "cannot_update",
         "attributes": ["ami"]},
        {"address": LAUNCH, "action": "replace", "reason": "cannot_update",
         "attributes": ["block_device_mappings[0].ebs[0].kms_key_id", "user_data"]},
    ]  # fmt: skip
    assert [pipeline.removal_reason(r) for r in summary.removals] == [
        "no longer in the configuration",
        "forces replacement: ami",
        "forces replacement: block_device_mappings[0].ebs[0].kms_key_id, user_data",
    ]


def test_terraform_show_is_read_quietly_even_with_debug(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The plan's whole document is no progress line: --debug does not print it."""
    monkeypatch.setattr(console, "_debug", True)
    tf = ShowingTerraform(tmp_path, {"show": [Result(0, shown((BASTION, ["create"], [["ami"]])))]})
    summary = pipeline.explain(replacing(), tf, tmp_path / "up.tfplan")
    assert summary.removals[1]["attributes"] == ["ami"]
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    "answer",
    [
        Result(1, "Error: Failed to read the plan\n"),  # show failed: no attributes, no error
        Result(0, "not json at all"),
        Result(0, '{"resource_changes": [ broken'),
        Result(0, "{}"),  # a document without resource_changes
        Result(0, json.dumps({"resource_changes": [{"address": BASTION}]})),  # no change
        Result(0, json.dumps({"resource_changes": [{"address": BASTION, "change": {}}]})),
        Result(0, shown((BASTION, ["create", "delete"], None))),
    ],
)
def test_a_replacement_without_readable_attributes_is_still_listed(
    tmp_path: Path, answer: Result
) -> None:
    tf = ShowingTerraform(tmp_path, {"show": [answer]})
    summary = pipeline.explain(replacing(), tf, tmp_path / "up.tfplan")
    assert [(r["address"], r["attributes"]) for r in summary.removals] == [
        ("aws_instance.gone", []),
        (BASTION, []),
        (LAUNCH, []),
    ]
    assert pipeline.removal_reason(summary.removals[1]) == "forces replacement"


def test_only_a_replacement_makes_the_plan_be_shown(tmp_path: Path) -> None:
    tf = ShowingTerraform(tmp_path, {"show": [Result(0, shown((BASTION, ["delete"], None)))]})
    summary = pipeline.summarize([planned(BASTION, "delete")])
    pipeline.explain(summary, tf, tmp_path / "up.tfplan")
    assert tf.calls == []
    pipeline.explain(replacing(), tf, tmp_path / "up.tfplan")
    assert [call[0] for call in tf.calls] == ["show"]


# -- summarize: lines missing what Terraform usually sends ----------------------------------------


def test_plan_lines_missing_their_fields_count_as_empty() -> None:
    lines = [
        json.dumps({"type": "planned_change"}),
        json.dumps({"type": "planned_change", "change": {"action": "create"}}),
        json.dumps({"type": "planned_change", "change": {"resource": {"addr": "aws_vpc.x"}}}),
        json.dumps({"type": "planned_change", "change": {"action": "delete"}}),
        json.dumps({"type": "planned_change", "change": {"action": "create", "importing": {}}}),
        json.dumps({"type": "change_summary"}),
        json.dumps({"type": "outputs"}),
    ]
    summary = pipeline.summarize(lines)
    assert summary.resources == [
        ("", ""),
        ("create", ""),
        ("", "aws_vpc.x"),
        ("delete", ""),
        ("create", ""),
    ]
    assert summary.imports == [("", "")]
    assert summary.removals == [{"address": "", "action": "delete", "reason": "", "attributes": []}]
    assert (summary.add, summary.change, summary.destroy, summary.outputs) == (0, 0, 0, {})
    assert summary.changes  # an import


# -- _planned: a plan that adopted what an interrupted run left -----------------------------------


def saved_plan(tmp_path: Path) -> Path:
    plan = tmp_path / "up.tfplan"
    with zipfile.ZipFile(plan, "w") as archive:
        archive.writestr("tfplan", b"x")
    return plan


def test_a_plan_with_changes_adopts_leftovers_and_reports_the_plan_made_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kubeplat import adopt

    plan = saved_plan(tmp_path)
    again = "\n".join(
        [
            planned(BASTION, "replace", reason="cannot_update"),
            json.dumps({"type": "change_summary", "changes": {"add": 1, "remove": 1}}),
        ]
    )
    tf = ShowingTerraform(
        tmp_path,
        {"plan": [Result(2, again)], "show": [Result(0, shown((BASTION, ["create"], [["ami"]])))]},
    )
    prepared = cast(pipeline.Prepared, SimpleNamespace(name="the prepared environment"))
    lines = [json.dumps({"type": "change_summary", "changes": {"add": 7}})]
    handed: list[tuple[Any, ...]] = []

    def adopting(*args: Any) -> Result:
        handed.append(args[:4])
        del lines[:]  # adopt plans again into the same lines
        return args[4]()

    monkeypatch.setattr(adopt, "adopt", adopting)
    summary = pipeline._planned(prepared, tf, plan, lines, Result(2, ""), destroy=False)
    assert handed == [(prepared, tf, plan, lines)]
    assert tf.calls[0] == (
        "plan", (f"-out={plan}", "-lock-timeout=0s", "-json", "-detailed-exitcode"), False
    )  # fmt: skip
    assert tf.calls[1] == ("show", ("-json", str(plan)), False)
    assert (summary.add, summary.destroy) == (1, 1)
    assert summary.removals[0]["attributes"] == ["ami"]


def test_a_plan_with_nothing_to_adopt_stands_and_a_failed_replan_is_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kubeplat import adopt

    plan = saved_plan(tmp_path)
    tf = ShowingTerraform(tmp_path, {"plan": [Result(1, "Error: boom\n")]})
    lines = [json.dumps({"type": "change_summary", "changes": {"change": 3}})]
    nobody = cast(pipeline.Prepared, None)
    monkeypatch.setattr(adopt, "adopt", lambda *_args: None)
    assert pipeline._planned(nobody, tf, plan, lines, Result(2, ""), destroy=False).change == 3
    monkeypatch.setattr(adopt, "adopt", lambda *args: args[4]())
    with pytest.raises(TerraformFailed) as raised:
        pipeline._planned(nobody, tf, plan, lines, Result(2, ""), destroy=False)
    assert raised.value.message.startswith("terraform plan failed: ")
    monkeypatch.setattr(adopt, "adopt", lambda *_a: pytest.fail("a destroy adopted"))
    assert pipeline._planned(nobody, tf, plan, lines, Result(2, ""), destroy=True).change == 3


# -- apply progress: lines missing what Terraform usually sends, and their styles -----------------


def test_apply_progress_survives_lines_missing_their_fields(
    statuses: list[tuple[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = Clock()
    monkeypatch.setattr(pipeline, "time", SimpleNamespace(monotonic=fake.monotonic))
    monkeypatch.setattr(console, "fancy", lambda _stream: True)  # no clock in the lines
    progress = pipeline.ApplyProgress()
    progress(hook("apply_errored", "aws_vpc.main"))  # never seen starting
    progress(json.dumps({"type": "apply_errored", "hook": {}}))
    progress(json.dumps({"type": "apply_complete", "hook": {"resource": {}, "action": "create"}}))
    progress(json.dumps({"type": "diagnostic", "@level": "error"}))
    fake.now += 3
    progress(json.dumps({"type": "change_summary"}))
    assert statuses == [
        ("failed aws_vpc.main", "error"),
        ("failed ", "error"),
        ("created ", "ok"),
        ("Terraform: None: ", "error"),
        ("0 added, 0 changed, 0 destroyed in 3s", "ok"),
    ]
    assert progress.in_flight == {}


def test_a_resource_started_without_an_action_is_named_by_its_address(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = Clock()
    monkeypatch.setattr(pipeline, "time", SimpleNamespace(monotonic=fake.monotonic))
    progress = pipeline.ApplyProgress()
    progress(json.dumps({"type": "apply_start", "hook": {"resource": {"addr": "aws_vpc.x"}}}))
    fake.now += 4
    assert progress.flying() == " aws_vpc.x 4s"


def test_the_still_line_is_plain_information_and_the_terminal_line_names_what_is_in_flight(
    statuses: list[tuple[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = Clock()
    monkeypatch.setattr(pipeline, "time", SimpleNamespace(monotonic=fake.monotonic))
    progress = pipeline.ApplyProgress()
    progress(hook("apply_start", "aws_lb.api"))
    fake.now += 15
    progress(hook("apply_progress", "aws_lb.api"))
    assert [(m.split("  ", 1)[1], s) for m, s in statuses] == [
        ("still creating aws_lb.api 15s", "info")
    ]
    assert progress.activity.text == "applying"
    assert progress.activity.detail() == "creating aws_lb.api 15s"


# -- waiting for the secure layer -----------------------------------------------------------------


class Looks:
    """Auto Scaling's answers to each look, in turn (the last repeats); RECORDING the calls."""

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)
        self.asked = 0

    def describe_auto_scaling_groups(self, AutoScalingGroupNames: list[str]) -> dict[str, Any]:
        assert AutoScalingGroupNames == ["dev-kube-secure"]
        self.asked += 1
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return cast(dict[str, Any], answer)


def secure_world(looks: Looks) -> Any:
    def client(name: str) -> Looks:
        assert name == "autoscaling"
        return looks

    aws = SimpleNamespace(client=client, sandbox=True, endpoint="http://127.0.0.1:4566")
    return SimpleNamespace(aws=aws, env=SimpleNamespace(environment="dev", platform="kube"))


CREATED = pipeline.PlanSummary(resources=[("create", pipeline.SECURE_GROUP)])


@pytest.mark.parametrize(
    "answer",
    [
        {},  # no group of that name
        {"AutoScalingGroups": [{}]},  # wants none, has none
        {"AutoScalingGroups": [{"DesiredCapacity": 0}]},
    ],
)
def test_a_secure_group_gone_or_wanting_nothing_is_not_waited_for(
    answer: dict[str, Any], clock: Clock
) -> None:
    looks = Looks(answer)
    pipeline.wait_for_secure(secure_world(looks), CREATED, "kubeplat up -e dev")
    assert looks.asked == 1 and clock.slept == []


def test_the_default_wait_is_45_minutes_looking_every_15_seconds(
    clock: Clock, statuses: list[tuple[str, str]]
) -> None:
    clock.step = 0
    one = {"AutoScalingGroups": [{"DesiredCapacity": 3, "Instances": [
        {"LifecycleState": "InService"}, {"LifecycleState": "Pending"}]}]}  # fmt: skip
    looks = Looks(one)
    with pytest.raises(KubeplatError) as raised:
        pipeline.wait_for_secure(secure_world(looks), CREATED, "kubeplat up -e dev")
    assert raised.value.message == (
        "the secure layer has 1 of 3 instances in service after 45 minutes; everything was "
        "applied and nothing was removed"
    )
    assert clock.slept == [15.0] * 180
    assert statuses == [
        ("secure layer: 1 of 3 instances in service (etcd members joining)", "info")
    ]


def test_an_unreachable_auto_scaling_names_the_group_and_the_sandbox(clock: Clock) -> None:
    looks = Looks(EndpointConnectionError(endpoint_url="http://127.0.0.1:4566"))
    with pytest.raises(KubeplatError) as raised:
        pipeline.wait_for_secure(secure_world(looks), CREATED, "kubeplat up -e dev")
    assert raised.value.message.startswith(
        "reading the autoscaling group dev-kube-secure: cannot reach http://127.0.0.1:4566: "
    )
    assert raised.value.hint == "is the sandbox running? kubeplat sandbox status"


# -- the preparation beside an early plan ---------------------------------------------------------


def test_the_preparation_runs_in_its_own_background_thread_at_a_lower_priority(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[tuple[int, int, int]] = []
    monkeypatch.setattr(os, "setpriority", lambda *args: asked.append(args))
    seen: dict[str, Any] = {}
    value = cast(pipeline.Prepared, SimpleNamespace(name="prepared"))

    def work() -> pipeline.Prepared:
        me = threading.current_thread()
        seen.update(name=me.name, daemon=me.daemon, id=threading.get_native_id())
        return value

    beside = pipeline._Beside(work, Terraform(tmp_path))
    assert beside.result() is value
    assert seen == {"name": "kubeplat-prepare", "daemon": True, "id": seen["id"]}
    assert asked == [(os.PRIO_PROCESS, seen["id"], 10)]


@pytest.mark.parametrize("refusal", ["OSError", "missing"])
def test_a_system_refusing_the_lower_priority_still_prepares(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, refusal: str
) -> None:
    if refusal == "missing":  # a platform without os.setpriority
        monkeypatch.delattr(os, "setpriority")
    else:

        def refuse(*_args: Any) -> None:
            raise PermissionError("not permitted")

        monkeypatch.setattr(os, "setpriority", refuse)
    value = cast(pipeline.Prepared, SimpleNamespace(name="prepared"))
    assert pipeline._Beside(lambda: value, Terraform(tmp_path)).result() is value


def test_a_failed_preparation_stops_terraform_and_is_raised(tmp_path: Path) -> None:
    tf = Terraform(tmp_path)

    def work() -> pipeline.Prepared:
        raise KubeplatError("the credentials are another account's", "")

    beside = pipeline._Beside(work, tf)
    beside.join()
    assert tf.stopping
    with pytest.raises(KubeplatError, match="another account's"):
        beside.result()


# -- commands that read what `up` built, and the file and session behind them ---------------------


@dataclasses.dataclass
class Headless(InProcess):
    """The sandbox's session (moto in process) whose S3 answers head_bucket with `answer`."""

    answer: Exception | None = None

    def client(self, service: str) -> Any:
        if service != "s3":
            return super().client(service)
        answer = self.answer

        def head_bucket(Bucket: str) -> dict[str, Any]:
            assert Bucket == "kubeplat-example-terraform"
            if answer is not None:
                raise answer
            return {}

        return SimpleNamespace(head_bucket=head_bucket)


def s3_error(code: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "Not Found"}}, "HeadBucket")


def connected_with(
    monkeypatch: pytest.MonkeyPatch, env: config.Environment, answer: Exception | None
) -> Headless:
    aws = Headless(boto(), REGION, "http://127.0.0.1:4566", True, {}, answer=answer)
    monkeypatch.setattr(
        pipeline, "connect", lambda *_a, **_k: pipeline.Connected(env, aws, ACCOUNT)
    )
    return aws


@pytest.mark.parametrize("code", ["404", "NoSuchBucket", "NotFound"])
def test_every_answer_meaning_no_bucket_says_nothing_was_built(
    env: config.Environment, monkeypatch: pytest.MonkeyPatch, code: str
) -> None:
    connected_with(monkeypatch, env, s3_error(code))
    with pytest.raises(KubeplatError) as raised:
        pipeline.deployed("example", None, False)
    assert raised.value.message == (
        "environment example has not been built yet (no bucket kubeplat-example-terraform)"
    )
    assert raised.value.hint == "build it: kubeplat up -e example"


def test_an_unreachable_bucket_check_names_the_bucket_and_the_sandbox(
    env: config.Environment, monkeypatch: pytest.MonkeyPatch
) -> None:
    connected_with(monkeypatch, env, EndpointConnectionError(endpoint_url="http://127.0.0.1:4566"))
    with pytest.raises(KubeplatError) as raised:
        pipeline.deployed("example", None, False)
    assert raised.value.message.startswith(
        "checking the bucket kubeplat-example-terraform: cannot reach http://127.0.0.1:4566: "
    )
    assert raised.value.hint == "is the sandbox running? kubeplat sandbox status"
    connected_with(monkeypatch, env, s3_error("AccessDenied"))
    with pytest.raises(KubeplatError) as raised:
        pipeline.deployed("example", None, False)
    assert raised.value.message == (
        "checking the bucket kubeplat-example-terraform: AccessDenied: Not Found"
    )


def test_a_built_environment_is_read_with_its_session(
    env: config.Environment, monkeypatch: pytest.MonkeyPatch
) -> None:
    aws = connected_with(monkeypatch, env, None)
    found = pipeline.deployed("example", None, False)
    assert found.aws is aws and found.store.aws is aws
    assert found.store.bucket == "kubeplat-example-secrets"


def elsewhere(environments: Path, tmp_path: Path) -> Path:
    """The AWS environment `dev` in a folder of its own (not ./environments)."""
    folder = tmp_path / "other"
    folder.mkdir()
    aws_file(environments).rename(folder / "dev.tfvars")
    return folder


def test_an_environment_in_another_folder_is_read_from_it(
    environments: Path, cloud: None, tmp_path: Path, no_sandbox_start: None
) -> None:
    folder = elsewhere(environments, tmp_path)
    connected = pipeline.connect("dev", str(folder), False, start=False)
    assert connected.env.path == folder / "dev.tfvars"
    kms = boto3.client("kms", region_name=REGION)
    key = kms.create_key()["KeyMetadata"]
    kms.create_alias(AliasName="alias/kubeplat-dev", TargetKeyId=key["KeyId"])
    boto3.client("s3", region_name=REGION).create_bucket(
        Bucket="kubeplat-dev-terraform", CreateBucketConfiguration={"LocationConstraint": REGION}
    )
    found = pipeline.deployed("dev", str(folder), False)
    assert (found.env.path, found.key_arn) == (folder / "dev.tfvars", key["Arn"])


def test_a_command_that_builds_starts_the_sandbox_and_connects_to_it(
    environments: Path,
    monkeypatch: pytest.MonkeyPatch,
    statuses: list[tuple[str, str]],
) -> None:
    monkeypatch.setattr(pipeline, "_announced", set())
    monkeypatch.setattr(sandbox, "ensure", lambda: sandbox.Sandbox(os.getpid(), 4566))
    monkeypatch.setattr(sandbox, "current", lambda: pytest.fail("only looked for a sandbox"))
    from kubeplat import aws as aws_module

    monkeypatch.setattr(aws_module, "check_account", lambda _aws, _env: ACCOUNT)
    connected = pipeline.connect("example", None, False, start=True)
    assert (connected.aws.sandbox, connected.aws.endpoint) == (True, "http://127.0.0.1:4566")
    assert connected.account == ACCOUNT
    assert statuses == [("sandbox: AWS emulator at http://127.0.0.1:4566", "dim")]


def test_a_read_only_command_forced_into_a_stopped_sandbox_says_to_build_first(
    environments: Path, cloud: None, no_sandbox_start: None
) -> None:
    aws_file(environments)
    for name, force in (("example", False), ("dev", True)):
        with pytest.raises(KubeplatError) as raised:
            pipeline.deployed(name, None, force)
        assert raised.value.message == (
            "the sandbox is not running, so the sandbox environment has nothing to show"
        )


def test_prepare_connects_to_the_named_environment_starting_its_sandbox(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asked: list[tuple[Any, ...]] = []

    def connect(*args: Any, start: bool) -> pipeline.Connected:
        asked.append((*args, start))
        raise KubeplatError("stop here", "")

    monkeypatch.setattr(pipeline, "connect", connect)
    with pytest.raises(KubeplatError, match="stop here"):
        pipeline.prepare("example", "envs", True, write_pki=False)
    assert asked == [("example", "envs", True, True)]


# -- the PKI: what is issued, said and waited for --------------------------------------------------


def test_a_damaged_pki_is_waited_for_exactly_its_20_seconds(
    env: config.Environment, clock: Clock, statuses: list[tuple[str, str]]
) -> None:
    prepared = built(env)
    prepared.store.delete(["pki/locked/ca.key"])
    statuses.clear()
    clock.step = 0  # each wait moves the clock by its 2 s
    with pytest.raises(pki.PKIError):
        pipeline.sync_pki(env, prepared.store, write=True)
    # Waited at 0, 2, ..., 20 s (20 s is not past the bound), reported at 22 s.
    assert clock.slept == [2] * 11
    assert statuses == [(WAITING, "warn")] * 11


def test_certificates_are_judged_at_the_time_given_and_a_rotation_asked_for_is_made(
    env: config.Environment, statuses: list[tuple[str, str]]
) -> None:
    prepared = built(env)
    issued: dict[str, str] = {}
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=3 * 365)
    pipeline.sync_pki(env, prepared.store, write=False, now=later, issued=issued)
    assert issued and all("expire" in reason or "renew" in reason for reason in issued.values())
    rotated: dict[str, str] = {}
    pipeline.sync_pki(env, prepared.store, write=False, rotate="etcd/peer", issued=rotated)
    assert list(rotated) == ["etcd/peer"]
    statuses.clear()
    pipeline.sync_pki(env, prepared.store, write=True, rotate="etcd/peer")
    assert statuses[0][0].startswith("PKI: issued etcd/peer (")
    assert statuses[0][1] == "ok"


def test_a_saved_plan_refusing_several_pki_changes_lists_them_all(
    env: config.Environment,
) -> None:
    prepared = built(env)
    prepared.store.delete(
        ["pki/secure/etcd/peer.crt", "pki/secure/etcd/peer.key",
         "pki/secure/etcd/server.crt", "pki/secure/etcd/server.key"]
    )  # fmt: skip
    with pytest.raises(KubeplatError) as raised:
        prepare(env, new_pki_only=True)
    assert raised.value.message == (
        "the PKI needs changes that a saved plan must not make (etcd/peer: missing, "
        "etcd/server: missing); nothing was written"
    )


def test_a_set_published_and_copied_by_another_operator_wins(env: config.Environment) -> None:
    prepared = built(env)
    with pytest.raises(Conflict) as raised:
        pipeline._create_pki(env, prepared.store, pki_set(1))
    assert type(raised.value) is Conflict
    assert prepared.store.names(pipeline.STAGING) == []


def test_a_first_prepare_says_what_it_created_and_keeps_its_session(
    env: config.Environment, statuses: list[tuple[str, str]]
) -> None:
    aws = session()
    prepared = prepare(env, aws)
    assert prepared.env is env and prepared.aws is aws
    created = [(m, s) for m, s in statuses if m.endswith("public access blocked)")]
    assert (
        created
        == [
            (f"created bucket {b} (versioned, SSE-KMS, public access blocked)", "ok")
            for b in prepared.created_buckets
        ]
        and created
    )


@pytest.mark.parametrize(("hold", "style"), [("a plan only looks", "warn"), ("", "ok")])
def test_a_rotation_step_is_said_as_a_warning_only_while_it_waits(
    env: config.Environment,
    monkeypatch: pytest.MonkeyPatch,
    statuses: list[tuple[str, str]],
    hold: str,
    style: str,
) -> None:
    built(env)
    status = rotation.Status({"etcd/ca": pki.TRUST}, "2026-01-02T03:04:05Z", "a@b", hold=hold)
    monkeypatch.setattr(rotation, "step", lambda *_a, **_k: status)
    statuses.clear()
    prepare(env, write_pki=False)
    said = [(m, s) for m, s in statuses if m.startswith("PKI: ")]
    assert said and all(s == style for _m, s in said)
