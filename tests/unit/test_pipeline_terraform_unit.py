"""How the main job drives Terraform (kubeplat/pipeline.py's `plan`, `_run_plan`, `apply`,
`outputs`, `terraform_for` and `prepare_and_plan`) in the unit tier: the argument lists
Terraform gets, the inputs file it reads and that is gone afterwards, the summary, outputs
and errors made of its answers, and which plan `up` keeps when the early plan's inputs turn
out not to be the prepared ones.

Stand-ins, and why (the real Terraform runs against the emulator in tests/integration:
test_main_job.py, test_two_phase.py):

- Terraform is a STAND-IN, a short Python script named by KUBEPLAT_TERRAFORM (as
  test_terraform_runner.py's shell one): it records each run's arguments, the inputs file
  (`kubeplat.auto.tfvars.json`) as it found it and the AWS variables it was given, and answers
  with the `-json` lines, exit code and saved plan (a zip archive) each test scripts for it.
  Its `init` leaves what a real one does that kubeplat checks (the data directory and the
  module's lock file).
- `pipeline._environment` and `pipeline._session` (steps 1-2: the file and the session, with
  their own tests in test_pipeline_unit.py) are recording stand-ins: the environment file is
  the repository's example, loaded for real, and no AWS call is made.
- `pipeline.prepare` (steps 3-5: buckets, PKI, render; test_pipeline_unit.py runs it against
  moto) is a recording stand-in answering a `Prepared` with the user-data stubs, so a test
  decides whether its key and inputs match the early plan's.
- `adopt.adopt` (what an interrupted run left, its own tests in test_adopt*.py) is a recording
  stand-in answering "nothing to adopt".
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import boto3
import pytest

from kubeplat import adopt, config, console, pipeline, render, terraform
from kubeplat.aws import Aws
from kubeplat.errors import KubeplatError, TerraformFailed
from kubeplat.store import BucketStore
from kubeplat.terraform import Terraform

REGION = "eu-west-1"
ACCOUNT = "123456789012"
ENDPOINT = "http://127.0.0.1:4566"
KEY = "arn:aws:kms:eu-west-1:123456789012:key/first"
OTHER_KEY = "arn:aws:kms:eu-west-1:123456789012:key/second"
SANDBOX_ENV = {
    "AWS_ENDPOINT_URL": ENDPOINT,
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
}

STANDIN = """#!{python}
# A STAND-IN for terraform (see the test module's docstring).
import json, os, sys, zipfile
args = sys.argv[1:]
if args[0] == "version":
    print('{{"terraform_version": "1.9.8"}}')
    sys.exit(0)
module = args[0].removeprefix("-chdir=")
sub = args[1]
inputs = os.path.join(module, "kubeplat.auto.tfvars.json")
with open(os.environ["STANDIN_LOG"], "a") as log:
    log.write(json.dumps({{
        "argv": args[1:],
        "inputs": json.load(open(inputs)) if os.path.exists(inputs) else None,
        "endpoint": os.environ.get("AWS_ENDPOINT_URL"),
    }}) + "\\n")
if sub == "init":
    os.makedirs(os.environ["TF_DATA_DIR"], exist_ok=True)
    open(os.path.join(module, ".terraform.lock.hcl"), "w").close()
script = json.load(open(os.environ["STANDIN_SCRIPT"]))
answers = script.get(sub, [{{}}])
count = script.setdefault("_count", {{}})
index = count.get(sub, 0)
count[sub] = index + 1
json.dump(script, open(os.environ["STANDIN_SCRIPT"], "w"))
answer = answers[min(index, len(answers) - 1)]
for line in answer.get("lines", []):
    print(line)
if answer.get("write_plan"):
    out = next(a for a in args if a.startswith("-out=")).removeprefix("-out=")
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("tfplan", answer["write_plan"])
sys.exit(answer.get("exit", 0))
"""


class Standin:
    """The stand-in terraform: what it is to answer, and what it was run with."""

    def __init__(self, folder: Path) -> None:
        self.log = folder / "standin.log"
        self.script = folder / "standin.json"
        self.script.write_text("{}")

    def answer(self, subcommand: str, *answers: dict[str, Any]) -> None:
        script = json.loads(self.script.read_text())
        script[subcommand] = list(answers)
        self.script.write_text(json.dumps(script))

    def runs(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def argvs(self) -> list[list[str]]:
        return [run["argv"] for run in self.runs()]

    def forget(self) -> None:
        self.log.unlink(missing_ok=True)
        self.script.write_text("{}")


@pytest.fixture
def standin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Standin]:
    folder = tmp_path / "standin"
    folder.mkdir()
    binary = folder / "terraform"
    binary.write_text(STANDIN.format(python=sys.executable))
    binary.chmod(0o755)
    monkeypatch.setenv("KUBEPLAT_TERRAFORM", str(binary))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    fake = Standin(folder)
    monkeypatch.setenv("STANDIN_LOG", str(fake.log))
    monkeypatch.setenv("STANDIN_SCRIPT", str(fake.script))
    terraform.found.cache_clear()
    yield fake
    terraform.found.cache_clear()


@pytest.fixture
def env(environments: Path) -> config.Environment:
    return config.load("example")


@pytest.fixture
def debug() -> Iterator[None]:
    console.enable_debug(True)
    yield
    console.enable_debug(False)


@pytest.fixture
def adopted(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    calls: list[tuple[Any, ...]] = []

    def fake(prepared: Any, tf: Any, plan_file: Path, lines: list[str], replan: Any) -> None:
        calls.append((prepared, tf, plan_file, list(lines)))

    monkeypatch.setattr(adopt, "adopt", fake)
    return calls


def session(*, sandbox: bool = True, child: dict[str, str | None] | None = None) -> Aws:
    """A session no test calls AWS with: Terraform reads only its child environment."""
    boto = boto3.Session(aws_access_key_id="t", aws_secret_access_key="t", region_name=REGION)
    return Aws(boto, REGION, ENDPOINT if sandbox else None, sandbox, child or {})


def prepared_of(env: config.Environment, key_arn: str = KEY, **more: Any) -> pipeline.Prepared:
    """A Prepared holding what Terraform's runs read: the session's child environment, the
    key, the user-data stubs (no bucket: nothing here uploads)."""
    aws = more.pop("aws", None) or session(child=dict(SANDBOX_ENV))
    bundle = more.pop("bundle", None) or render.stubs(env)
    store = cast(BucketStore, None)
    return pipeline.Prepared(env, aws, ACCOUNT, key_arn, store, {}, bundle, **more)


def compact(message: dict[str, Any]) -> str:
    """A `-json` line as Terraform writes it (no spaces)."""
    return json.dumps(message, separators=(",", ":"))


def change(address: str, action: str) -> str:
    rtype = address.split(".")[0]
    return compact({"type": "planned_change",
                    "change": {"resource": {"addr": address, "resource_type": rtype},
                               "action": action}})  # fmt: skip


def summary_line(add: int = 0, changed: int = 0, remove: int = 0) -> str:
    return compact({"type": "change_summary",
                    "changes": {"add": add, "change": changed, "remove": remove}})  # fmt: skip


PLAN_FLAGS = ["-no-color", "-input=false"]


def plan_argv(plan_file: Path, *more: str) -> list[str]:
    return ["plan", *PLAN_FLAGS, f"-out={plan_file}", "-lock-timeout=0s", "-json",
            "-detailed-exitcode", *more]  # fmt: skip


def backend_args(env: config.Environment, key_arn: str, *, sandbox: bool) -> list[str]:
    backend = {
        "bucket": "kubeplat-example-terraform",
        "encrypt": "true",
        "key": f"{REGION}/example/terraform.tfstate",
        "kms_key_id": key_arn,
        "region": REGION,
        "use_lockfile": "true",
        **({"use_path_style": "true"} if sandbox else {}),
    }
    return ["-reconfigure", *(f"-backend-config={k}={v}" for k, v in sorted(backend.items()))]


# -- terraform_for: the working copy, initialised against the S3 state ------------------------


@pytest.mark.parametrize("sandbox", [True, False])
def test_terraform_for_initialises_the_environments_s3_backend_once(
    env: config.Environment, standin: Standin, sandbox: bool
) -> None:
    prepared = prepared_of(env, aws=session(sandbox=sandbox, child={"AWS_ENDPOINT_URL": "x"}))
    tf = pipeline.terraform_for(prepared)
    assert (tf.workdir, tf.name, tf.program) == (env.workdir, "example", "kubeplat")
    assert tf.env == {"AWS_ENDPOINT_URL": "x"}
    assert standin.argvs() == [["init", *PLAN_FLAGS, *backend_args(env, KEY, sandbox=sandbox)]]
    assert standin.runs()[0]["endpoint"] == "x"
    assert tf.last_backend() == dict(
        a.removeprefix("-backend-config=").split("=", 1)
        for a in backend_args(env, KEY, sandbox=sandbox)[1:]
    )
    standin.forget()
    pipeline.terraform_for(prepared)  # the same backend: no second init
    assert standin.argvs() == []


def test_terraform_for_an_environment_put_in_the_sandbox_says_so_in_hints(
    env: config.Environment, standin: Standin
) -> None:
    outside = dataclasses.replace(env, sandbox=False)
    tf = pipeline.terraform_for(prepared_of(outside))
    assert tf.program == "kubeplat --sandbox"


# -- plan: one run to a file, its inputs in place, its stream summarised ----------------------


def test_a_plan_runs_with_the_prepared_inputs_and_is_summarised(
    env: config.Environment, standin: Standin, tmp_path: Path, adopted: list[Any]
) -> None:
    tf = pipeline.terraform_for(prepared_of(env))
    standin.forget()
    prepared = prepared_of(env)
    plan_file = tmp_path / "up.tfplan"
    standin.answer("plan", {"lines": ["Terraform plans", change("aws_vpc.main", "update"),
                                      summary_line(1, 2, 0)],
                            "write_plan": "x", "exit": 2})  # fmt: skip
    summary = pipeline.plan(prepared, tf, plan_file)
    (run,) = standin.runs()
    assert run["argv"] == plan_argv(plan_file)
    assert run["inputs"] == terraform.variables(env, prepared.bundle)
    assert not (tf.module / pipeline.VARS_FILE).exists()
    assert (summary.add, summary.change, summary.destroy) == (1, 2, 0)
    assert summary.resources == [("update", "aws_vpc.main")]
    # A plan with changes (2) is looked at for leftovers of an interrupted run, with its stream.
    assert adopted == [(prepared, tf, plan_file, ["Terraform plans", change("aws_vpc.main",
                                                  "update"), summary_line(1, 2, 0)])]  # fmt: skip


def test_a_destroy_plan_says_so_to_terraform_and_adopts_nothing(
    env: config.Environment, standin: Standin, tmp_path: Path, adopted: list[Any]
) -> None:
    tf = pipeline.terraform_for(prepared_of(env))
    standin.forget()
    plan_file = tmp_path / "down.tfplan"
    standin.answer("plan", {"lines": [summary_line(0, 0, 7)], "write_plan": "x", "exit": 2})
    summary = pipeline.plan(prepared_of(env), tf, plan_file, destroy=True)
    assert standin.argvs() == [plan_argv(plan_file, "-destroy")]
    assert summary.destroy == 7
    assert adopted == []


def test_a_failed_plan_raises_terraforms_error_and_leaves_no_inputs_file(
    env: config.Environment, standin: Standin, tmp_path: Path
) -> None:
    tf = pipeline.terraform_for(prepared_of(env))
    error = compact({"type": "diagnostic", "@level": "error",
                     "diagnostic": {"severity": "error", "summary": "Invalid value",
                                    "detail": "no such AMI"}})  # fmt: skip
    standin.answer("plan", {"lines": [error], "exit": 1})
    with pytest.raises(TerraformFailed) as raised:
        pipeline.plan(prepared_of(env), tf, tmp_path / "up.tfplan")
    assert raised.value.message == "terraform plan failed: Invalid value: no such AMI"
    assert not (tf.module / pipeline.VARS_FILE).exists()


def test_with_debug_every_line_of_the_plan_is_shown(
    env: config.Environment,
    standin: Standin,
    tmp_path: Path,
    debug: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    tf = pipeline.terraform_for(prepared_of(env))
    capsys.readouterr()
    standin.answer("plan", {"lines": ["planning the world", summary_line()], "write_plan": "x"})
    summary = pipeline.plan(prepared_of(env), tf, tmp_path / "up.tfplan")
    assert not summary.changes
    err = capsys.readouterr().err.splitlines()
    assert "planning the world" in err and summary_line() in err


# -- apply: exactly the saved plan, its outputs -----------------------------------------------


def test_apply_runs_the_saved_plan_and_returns_the_outputs_it_reports(
    env: config.Environment,
    standin: Standin,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    prepared = prepared_of(env)
    tf = pipeline.terraform_for(prepared)
    standin.forget()
    plan_file = tmp_path / "up.tfplan"
    outputs = {"type": "outputs", "outputs": {
        "vpc_id": {"value": "vpc-1", "type": "string"},
        "ips": {"value": ["10.0.0.1"]},
        "secret": {"sensitive": True},  # no value: not an output to return
    }}  # fmt: skip
    done = compact({"type": "apply_complete", "hook": {
        "resource": {"addr": "aws_vpc.main"}, "action": "create", "elapsed_seconds": 3}})  # fmt: skip
    # Neither a stray line that only looks like JSON nor an outputs message without outputs
    # is taken for outputs.
    stray = "{ a provider's stray log line"
    empty = compact({"type": "outputs", "@message": "Outputs: 0"})
    standin.answer("apply", {"lines": ["Terraform applies {things}", done, stray, empty,
                                       compact(outputs)]})  # fmt: skip
    got = pipeline.apply(prepared, tf, plan_file)
    assert got == {"vpc_id": "vpc-1", "ips": ["10.0.0.1"]}
    (run,) = standin.runs()
    assert run["argv"] == ["apply", *PLAN_FLAGS, "-json", str(plan_file)]
    assert run["inputs"] == terraform.variables(env, prepared.bundle)
    assert not (tf.module / pipeline.VARS_FILE).exists()
    err = capsys.readouterr().err
    assert "created aws_vpc.main (3s)" in err
    assert "Terraform applies {things}" in err and stray in err


def test_a_failed_apply_raises_and_leaves_no_inputs_file(
    env: config.Environment, standin: Standin, tmp_path: Path
) -> None:
    prepared = prepared_of(env)
    tf = pipeline.terraform_for(prepared)
    standin.answer("apply", {"lines": ["Error: creating EC2 VPC: VpcLimitExceeded"], "exit": 1})
    with pytest.raises(TerraformFailed) as raised:
        pipeline.apply(prepared, tf, tmp_path / "up.tfplan")
    assert raised.value.message == "terraform apply failed: creating EC2 VPC: VpcLimitExceeded"
    assert not (tf.module / pipeline.VARS_FILE).exists()


# -- outputs ------------------------------------------------------------------------------------


def test_outputs_are_terraforms_json_values(env: config.Environment, standin: Standin) -> None:
    tf = pipeline.terraform_for(prepared_of(env))
    standin.forget()
    standin.answer("output", {"lines": ["Warning: a CLI configuration note",
                                        '{"api": {"value": "https://api", "type": "string"}}']})  # fmt: skip
    assert pipeline.outputs(tf) == {"api": "https://api"}
    assert standin.argvs() == [["output", "-no-color", "-json"]]
    standin.answer("output", {"lines": ["Error: No state"], "exit": 1})
    with pytest.raises(TerraformFailed, match="terraform output failed: No state"):
        pipeline.outputs(tf)


# -- prepare_and_plan: the early plan beside the preparation, or step by step ----------------


@dataclasses.dataclass
class Steps:
    """Recording stand-ins of steps 1-5."""

    env: config.Environment
    sandbox_env: dict[str, str] | None
    key_arn: str = KEY
    bundle: dict[str, bytes] | None = None
    fail: BaseException | None = None
    environment: list[tuple[Any, ...]] = dataclasses.field(default_factory=list)
    sessions: list[tuple[Any, ...]] = dataclasses.field(default_factory=list)
    prepares: list[tuple[Any, ...]] = dataclasses.field(default_factory=list)
    made: list[pipeline.Prepared] = dataclasses.field(default_factory=list)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        def environment(
            name: str, folder: str | None, force: bool, **kw: Any
        ) -> tuple[config.Environment, dict[str, str] | None]:
            self.environment.append((name, folder, force, kw))
            return self.env, self.sandbox_env

        def session_of(env: config.Environment, sandbox_env: Any) -> pipeline.Connected:
            self.sessions.append((env, sandbox_env))
            if self.fail is not None:
                raise self.fail
            return pipeline.Connected(env, session(child=dict(SANDBOX_ENV)), ACCOUNT)

        def prepare(name: str, folder: str | None, force: bool, **kw: Any) -> pipeline.Prepared:
            self.prepares.append((name, folder, force, kw))
            connected = kw["connected"]
            made = prepared_of(connected.env, self.key_arn, aws=connected.aws,
                               bundle=self.bundle)  # fmt: skip
            self.made.append(made)
            return made

        monkeypatch.setattr(pipeline, "_environment", environment)
        monkeypatch.setattr(pipeline, "_session", session_of)
        monkeypatch.setattr(pipeline, "prepare", prepare)


def initialised(env: config.Environment, standin: Standin, key_arn: str = KEY) -> Terraform:
    """A working copy a previous `up` initialised for this backend."""
    tf = pipeline._terraform(env, {}, True)
    tf.init(pipeline._backend(env, True, key_arn))
    standin.forget()
    return tf


def test_a_first_run_prepares_then_initialises_then_plans(
    env: config.Environment,
    environments: Path,
    standin: Standin,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    adopted: list[Any],
) -> None:
    steps = Steps(env, dict(SANDBOX_ENV))
    steps.install(monkeypatch)
    plan_file = tmp_path / "up.tfplan"
    standin.answer("plan", {"lines": [summary_line(3)], "write_plan": "x"})
    prepared, tf, summary = pipeline.prepare_and_plan(
        "example", str(environments), True, plan_file, write_pki=False, new_pki_only=True
    )
    assert steps.environment == [("example", str(environments), True, {"start": True})]
    assert steps.sessions == [(env, SANDBOX_ENV)]
    assert steps.prepares == [("example", str(environments), True, {
        "write_pki": False, "new_pki_only": True, "connected": steps.prepares[0][3]["connected"],
    })]  # fmt: skip
    assert steps.prepares[0][3]["connected"].env is env
    assert prepared is steps.made[0]
    assert [argv[0] for argv in standin.argvs()] == ["init", "plan"]
    init, planned = standin.runs()
    assert init["argv"][3:] == backend_args(env, KEY, sandbox=True)
    assert planned["argv"] == plan_argv(plan_file)
    assert planned["inputs"] == terraform.variables(env, prepared.bundle)
    assert planned["endpoint"] == ENDPOINT
    assert (tf.last_backend() or {}).get("kms_key_id") == KEY
    assert summary.add == 3


def test_a_first_run_defaults_to_a_pki_it_may_renew(
    env: config.Environment, standin: Standin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    steps = Steps(env, dict(SANDBOX_ENV))
    steps.install(monkeypatch)
    standin.answer("plan", {"write_plan": "x"})
    pipeline.prepare_and_plan("example", None, False, tmp_path / "p", write_pki=True)
    assert steps.environment == [("example", None, False, {"start": True})]
    assert steps.prepares[0][:3] == ("example", None, False)
    assert steps.prepares[0][3]["write_pki"] is True
    assert steps.prepares[0][3]["new_pki_only"] is False


def test_an_initialised_copy_plans_from_the_file_alone_beside_the_preparation(
    env: config.Environment,
    standin: Standin,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    adopted: list[Any],
) -> None:
    initialised(env, standin)
    steps = Steps(env, dict(SANDBOX_ENV))
    steps.install(monkeypatch)
    plan_file = tmp_path / "up.tfplan"
    stream = [change("aws_vpc.main", "update"), summary_line(0, 1)]
    standin.answer("plan", {"lines": stream, "write_plan": "x", "exit": 2})
    prepared, tf, summary = pipeline.prepare_and_plan(
        "example", None, False, plan_file, write_pki=True
    )
    (run,) = standin.runs()  # no init, one plan
    assert run["argv"] == plan_argv(plan_file)
    assert run["inputs"] == terraform.variables(env, render.stubs(env))
    assert run["endpoint"] == ENDPOINT  # the sandbox's variables, without a session
    assert not (tf.module / pipeline.VARS_FILE).exists()
    assert prepared is steps.made[0]
    assert steps.sessions == [(env, SANDBOX_ENV)]
    assert (tf.workdir, tf.env["AWS_ENDPOINT_URL"]) == (env.workdir, ENDPOINT)
    assert summary.change == 1 and summary.resources == [("update", "aws_vpc.main")]
    assert adopted == [(prepared, tf, plan_file, stream)]


def test_an_early_plan_for_a_moved_key_is_thrown_away_and_made_again(
    env: config.Environment,
    standin: Standin,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    debug: None,
    capsys: pytest.CaptureFixture[str],
    adopted: list[Any],
) -> None:
    initialised(env, standin)
    steps = Steps(env, dict(SANDBOX_ENV), key_arn=OTHER_KEY)
    steps.install(monkeypatch)
    plan_file = tmp_path / "up.tfplan"
    standin.answer("plan", {"lines": [summary_line(9)], "write_plan": "x"},
                   {"lines": [summary_line(4)], "write_plan": "x"})  # fmt: skip
    prepared, tf, summary = pipeline.prepare_and_plan(
        "example", None, False, plan_file, write_pki=True
    )
    assert [argv[0] for argv in standin.argvs()] == ["plan", "init", "plan"]
    assert standin.argvs()[1][3:] == backend_args(env, OTHER_KEY, sandbox=True)
    assert standin.argvs()[2] == plan_argv(plan_file)
    assert (tf.last_backend() or {}).get("kms_key_id") == OTHER_KEY
    assert summary.add == 4  # the second plan's
    assert prepared.key_arn == OTHER_KEY
    assert "the early plan's inputs were not the prepared ones: planning again" in (
        capsys.readouterr().err.splitlines()
    )


def test_an_early_plan_with_other_inputs_is_made_again_with_the_prepared_ones(
    env: config.Environment,
    standin: Standin,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    adopted: list[Any],
) -> None:
    initialised(env, standin)
    bundle = {name: data + b"\n# changed\n" for name, data in render.stubs(env).items()}
    steps = Steps(env, dict(SANDBOX_ENV), bundle=bundle)
    steps.install(monkeypatch)
    plan_file = tmp_path / "up.tfplan"
    standin.answer("plan", {"lines": [summary_line(9)], "write_plan": "x"},
                   {"lines": [summary_line(4)], "write_plan": "x"})  # fmt: skip
    _prepared, _tf, summary = pipeline.prepare_and_plan(
        "example", None, False, plan_file, write_pki=True
    )
    first, second = standin.runs()  # the same backend: no init
    assert first["inputs"] == terraform.variables(env, render.stubs(env))
    assert second["inputs"] == terraform.variables(env, bundle)
    assert second["argv"] == plan_argv(plan_file)
    assert summary.add == 4


def test_a_copy_initialised_for_another_backend_goes_step_by_step(
    env: config.Environment, standin: Standin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Initialised for the state outside the sandbox (no path-style addressing)."""
    tf = pipeline._terraform(env, {}, False)
    tf.init(pipeline._backend(env, False, KEY))
    standin.forget()
    steps = Steps(env, dict(SANDBOX_ENV))
    steps.install(monkeypatch)
    standin.answer("plan", {"write_plan": "x"})
    pipeline.prepare_and_plan("example", None, False, tmp_path / "p", write_pki=True)
    assert [argv[0] for argv in standin.argvs()] == ["init", "plan"]
    assert standin.argvs()[0][3:] == backend_args(env, KEY, sandbox=True)


def test_an_environment_put_in_the_sandbox_plans_early_with_its_hints(
    env: config.Environment, standin: Standin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outside = dataclasses.replace(env, sandbox=False)
    initialised(outside, standin)
    steps = Steps(outside, dict(SANDBOX_ENV))
    steps.install(monkeypatch)
    standin.answer("plan", {"write_plan": "x"})
    _prepared, tf, _summary = pipeline.prepare_and_plan(
        "example", None, True, tmp_path / "p", write_pki=True
    )
    assert [argv[0] for argv in standin.argvs()] == ["plan"]
    assert tf.program == "kubeplat --sandbox"


def test_what_the_preparation_finds_wrong_stops_the_early_plan_and_is_reported(
    env: config.Environment, standin: Standin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tf = initialised(env, standin)
    wrong = KubeplatError("the credentials are for account 999999999999", "use the right ones")
    steps = Steps(env, dict(SANDBOX_ENV), fail=wrong)
    steps.install(monkeypatch)
    standin.answer("plan", {"lines": [summary_line(1)], "write_plan": "x"})
    with pytest.raises(KubeplatError) as raised:
        pipeline.prepare_and_plan("example", None, False, tmp_path / "p", write_pki=True)
    assert raised.value is wrong
    assert steps.prepares == []
    assert not (tf.module / pipeline.VARS_FILE).exists()


def test_a_failed_early_plan_is_reported_once_the_preparation_is_done(
    env: config.Environment, standin: Standin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tf = initialised(env, standin)
    steps = Steps(env, dict(SANDBOX_ENV))
    steps.install(monkeypatch)
    standin.answer("plan", {"lines": ["Error: Invalid provider configuration"], "exit": 1})
    with pytest.raises(TerraformFailed) as raised:
        pipeline.prepare_and_plan("example", None, False, tmp_path / "p", write_pki=True)
    assert raised.value.message == "terraform plan failed: Invalid provider configuration"
    assert len(steps.prepares) == 1
    assert [argv[0] for argv in standin.argvs()] == ["plan"]
    assert not (tf.module / pipeline.VARS_FILE).exists()
