"""The main job's bucket work and plan reading (kubeplat/pipeline.py) in the unit tier: what is
uploaded, in which order, what waits staged under its digest and what is removed (and never
removed); a PKI made once, all or nothing, and reused; the plan summary's counts and words.

Stand-ins, and why:

- S3 and KMS are moto's in-process mock (`mock_aws`): the library the sandbox's emulator
  server runs, with real S3 semantics (object versions, delete markers, conditional writes,
  copies that keep metadata). The session (`InProcess`) names a plain-HTTP endpoint, as the
  sandbox's does, so kubeplat sets no TLS-only bucket policy (moto would apply its Deny without
  evaluating the `aws:SecureTransport` condition); its calls are answered in process. `built`
  writes the bucket a successful `up` leaves directly (a first `up`'s own path is the first
  prepare test's).
- A second operator racing on the PKI is a `BucketStore` subclass doing that operator's writes,
  or getting S3's conflict answer, at the moment a real race would; every write goes to moto.
- The PKI's waiting loop and the apply progress read a fake clock (`pipeline.time` replaced),
  so the 20 s and 60 s bounds are crossed without waiting; a full disk is `os.statvfs`
  answering little free space; a running sandbox is `sandbox.current` answering a record;
  Auto Scaling for `wait_for_secure` is a RECORDING stand-in (`Groups`: the emulator puts every
  instance in service at once, so it cannot show a group still forming), and so is
  `rotation.step` (whether a step may be taken reads the nodes' reports: rotation's own tests).
- No Terraform runs here: `plan`, `apply`, `outputs`, `explain`'s `terraform show`,
  `terraform_for` and `prepare_and_plan` run the real binary in tests/integration
  (test_main_job.py, test_two_phase.py: the real Terraform against moto's server, a failed
  apply, the next `up` promoting); here only what reads Terraform's streams and files, and the
  bucket work around it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import re
import stat
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import boto3
import pytest
from moto import mock_aws

from kubeplat import config, console, pipeline, pki, render, sandbox, state
from kubeplat.aws import Aws
from kubeplat.errors import KubeplatError, TerraformFailed
from kubeplat.pkistore import LocalStore
from kubeplat.process import Result
from kubeplat.store import BucketStore, Conflict
from kubeplat.terraform import Terraform

REGION = "eu-west-1"
ACCOUNT = "123456789012"  # moto's account, and the example file's aws_account
SECRETS = "kubeplat-example-secrets"
STATE = "kubeplat-example-terraform"
ISSUER = "kubeplat-example-secrets-oidc"
ENDPOINT = "http://127.0.0.1:4566"  # what the session names; moto answers in process
STAMP = r"\d\d:\d\d:\d\d  "  # a plain progress line's clock

APISERVER = "manifests/secure/kube-apiserver.yaml"
SECURE_PROXY = "manifests/secure/kube-proxy.yaml"
COMPUTE_PROXY = "manifests/compute/kube-proxy.yaml"
COMPUTE_FLANNEL = "manifests/compute/kube-flannel.yaml"
WAITING = "PKI: the bucket's set is incomplete or being written by another operator; waiting"


# -- the world: moto, the example environment, a session ---------------------------------------


@dataclasses.dataclass
class InProcess(Aws):
    """A session whose calls moto answers in process, naming the sandbox's kind of endpoint."""

    def client(self, service: str) -> Any:
        if service not in self._clients:
            self._clients[service] = self.session.client(service, region_name=self.region)
        return self._clients[service]


@pytest.fixture
def cloud(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """An empty AWS account (moto's 123456789012) answering in this process."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    with mock_aws():
        yield


@pytest.fixture
def env(environments: Path, cloud: None) -> config.Environment:
    return config.load("example")


@functools.cache
def boto() -> boto3.Session:
    """One boto3 session for the process: its service models are loaded once."""
    return boto3.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION
    )


def session(*, sandbox: bool = True) -> Aws:
    """The sandbox's session (a plain-HTTP endpoint), or a plain AWS one (`sandbox=False`)."""
    if sandbox:
        return InProcess(boto(), REGION, ENDPOINT, True, {})
    return Aws(boto(), REGION, None, False, {})


def prepare(env: config.Environment, aws: Aws | None = None, **options: Any) -> pipeline.Prepared:
    """Steps 1-5 as `up` takes them, the session already checked."""
    connected = pipeline.Connected(env, aws or session(), ACCOUNT)
    write = options.pop("write_pki", True)
    return pipeline.prepare("example", None, False, write_pki=write, connected=connected, **options)


EXAMPLE = Path(__file__).resolve().parents[2] / "environments" / "example.tfvars"
_SETS: list[dict[str, bytes]] = []


def pki_set(index: int = 0) -> dict[str, bytes]:
    """A complete PKI of the repository's example environment, the same whichever test asks
    first (made once per process: keys take time)."""
    while len(_SETS) <= index:
        _SETS.append(dict(pki.ensure(config.load_file(EXAMPLE), {}).files))
    return dict(_SETS[index])


def cache(env: config.Environment) -> LocalStore:
    return LocalStore(env.workdir / "pki")


def bucket_objects(env: config.Environment, files: Mapping[str, bytes]) -> dict[str, bytes]:
    """The PKI's objects in the bucket (`pki/…`)."""
    return {f"pki/{k}": v for k, v in render.pki_layout(env, files).items()}


def bare_store(env: config.Environment) -> BucketStore:
    """The secrets bucket (versioned) and the KMS key, made here: nothing of kubeplat's yet."""
    aws = session()
    s3 = aws.client("s3")
    s3.create_bucket(Bucket=SECRETS, CreateBucketConfiguration={"LocationConstraint": REGION})
    s3.put_bucket_versioning(Bucket=SECRETS, VersioningConfiguration={"Status": "Enabled"})
    key = aws.client("kms").create_key()["KeyMetadata"]["Arn"]
    return BucketStore(aws, SECRETS, "example", key)


def built(env: config.Environment) -> pipeline.Prepared:
    """The buckets, the key and the local cache as a successful `up` leaves them: the PKI
    published and copied to pki/, the render's objects current, the issuer published. Written
    directly (a first `up`'s own path is the first test's)."""
    aws = session()
    key_arn = state.bootstrap(aws, env).key_arn
    store = BucketStore.of(aws, env, key_arn)
    files = pki_set()
    bundle = render.bundle(env, files)
    prepared = pipeline.Prepared(env, aws, ACCOUNT, key_arn, store, files, bundle)
    store.upload(prepared.objects, changed=list(prepared.objects))
    store.put(pipeline.PUBLISHED, b'{"set": "0123456789abcdef", "at": "2026-01-01T00:00:00Z"}')
    cache(env).save(files)
    pipeline._publish_issuer(env, store, files)
    return prepared


@functools.cache
def s3() -> Any:
    return boto().client("s3", region_name=REGION)


def current(name: str) -> tuple[str, bytes]:
    """(version ID, bytes) of the object nodes read as `example/NAME`."""
    got = s3().get_object(Bucket=SECRETS, Key=f"example/{name}")
    return got["VersionId"], got["Body"].read()


def put(name: str, body: bytes) -> str:
    """Make `example/NAME` hold `body` (with its digest, as kubeplat writes); its version."""
    answer = s3().put_object(
        Bucket=SECRETS, Key=f"example/{name}", Body=body,
        Metadata={"sha256": hashlib.sha256(body).hexdigest()},
    )  # fmt: skip
    return str(answer["VersionId"])


def versions(under: str) -> list[str]:
    """Every version and delete marker under `example/UNDER`, as names."""
    listed = s3().list_object_versions(Bucket=SECRETS, Prefix=f"example/{under}")
    found = listed.get("Versions", []) + listed.get("DeleteMarkers", [])
    return sorted(item["Key"].removeprefix("example/") for item in found)


def older_apiserver(data: bytes) -> bytes:
    """The kube-apiserver manifest one minor version older (what the nodes run before an
    upgrade)."""
    older, count = re.subn(
        rb"(kube-apiserver:v\d+\.)(\d+)", lambda m: m[1] + b"%d" % (int(m[2]) - 1), data
    )
    assert count == 1
    return older


class Clock:
    """`pipeline.time`: a monotonic clock that moves only when asked to or slept on."""

    def __init__(self, step: float = 0.0) -> None:
        self.now = 1000.0
        self.step = step  # how far each sleep moves it (0: as far as asked)
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += self.step or seconds


@pytest.fixture
def terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """stderr is a terminal: rich renders each status line in its style (an unknown style is
    an error there), without colours here since capsys is no terminal."""
    monkeypatch.setattr(console, "fancy", lambda _stream: True)


@pytest.fixture
def no_sandbox_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """A read-only command never starts the sandbox (a real emulator process)."""
    monkeypatch.setattr(sandbox, "ensure", lambda: pytest.fail("the sandbox was started"))


@pytest.fixture(autouse=True)
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """Every wait in pipeline.py reads this clock: nothing here sleeps, and a wait that never
    ends still ends within its bound of fake time."""
    fake = Clock(step=30.0)
    monkeypatch.setattr(
        pipeline, "time", SimpleNamespace(monotonic=fake.monotonic, sleep=fake.sleep)
    )
    return fake


def bare(**fields: Any) -> pipeline.Prepared:
    """A Prepared holding only what the property under test reads."""
    base: dict[str, Any] = dict(
        env=None, aws=None, account=ACCOUNT, key_arn="", store=None, files={}, bundle={}
    )
    base.update(fields)
    return pipeline.Prepared(**base)


# -- what a Prepared says: deferred, pending, objects ------------------------------------------


def test_only_changed_manifests_of_layers_whose_nodes_run_wait_for_the_apply() -> None:
    prepared = bare(
        changed=[
            "cloudconfig/worker", COMPUTE_FLANNEL, COMPUTE_PROXY, "manifests/control-plane/x.yaml",
            APISERVER, SECURE_PROXY, "pki/compute/bootstrap-token", "pki/secure/apiserver.crt",
        ],
        live_layers={"secure", "compute"},
        first=[APISERVER, SECURE_PROXY],
    )  # fmt: skip
    # A new layer's manifests (control-plane) and an upgrade's (`first`) go before the apply;
    # PKI objects and cloud-configs are never staged.
    assert prepared.deferred == [COMPUTE_FLANNEL, COMPUTE_PROXY]


def test_pending_lists_every_write_then_every_removal_marked_with_a_minus() -> None:
    prepared = bare(changed=["cloudconfig/worker", COMPUTE_PROXY], stale=["pki/control-plane/x"])
    assert prepared.pending == ["cloudconfig/worker", COMPUTE_PROXY, "-pki/control-plane/x"]


def test_the_bucket_gets_neither_user_data_nor_the_admin_kubeconfig() -> None:
    prepared = bare(
        bundle={
            "cloudconfig/worker": b"c", "kubeconfig/admin.conf": b"k", COMPUTE_PROXY: b"m",
            "pki/common/ca.crt": b"p", "userdata/compute": b"u",
        }
    )  # fmt: skip
    assert prepared.objects == {
        "cloudconfig/worker": b"c", COMPUTE_PROXY: b"m", "pki/common/ca.crt": b"p",
    }  # fmt: skip


# -- pure helpers: write order, staged names, versions, backend ------------------------------


def test_pki_goes_old_ca_copy_first_then_what_nodes_trust_then_locked_keys_then_layers() -> None:
    names = [
        "pki/secure/sa.key", "pki/secure/apiserver.crt", "pki/locked/ca.key",
        "pki/locked/sa.prev.key", "pki/compute/bootstrap-token", "pki/control-plane/sa.pub",
        "pki/common/etcd/ca.crt", "pki/locked/ca.prev.crt", "pki/common/ca.crt",
        "pki/locked/ca.next.key", "pki/secure/sa.pub",
    ]  # fmt: skip
    assert pipeline.write_order(dict.fromkeys(names, b"")) == [
        "pki/locked/ca.prev.crt", "pki/locked/sa.prev.key",
        "pki/common/ca.crt", "pki/common/etcd/ca.crt", "pki/control-plane/sa.pub",
        "pki/secure/sa.pub",
        "pki/locked/ca.key", "pki/locked/ca.next.key",
        "pki/compute/bootstrap-token", "pki/secure/apiserver.crt", "pki/secure/sa.key",
    ]  # fmt: skip
    assert pipeline.write_order({}) == []


def test_a_staged_manifest_is_named_by_the_sha256_of_its_bytes() -> None:
    assert pipeline.staged_name(b"abc") == (
        "staged/ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )


@pytest.mark.parametrize(
    ("text", "version"),
    [
        (b"    image: registry.k8s.io/kube-apiserver:v1.33.5\n", (1, 33, 5)),
        (b"image:mirror.example/k8s/kube-apiserver:v1.9.10@sha256:ab", (1, 9, 10)),
        (b"image:\tregistry.k8s.io/kube-apiserver:v2.0.0", (2, 0, 0)),
        (b"image: registry.k8s.io/kube-proxy:v1.33.5", None),
        (b"image: registry.k8s.io/kube-apiserver:latest", None),
        (b"", None),
    ],
)
def test_the_api_server_version_is_read_from_its_image(
    text: bytes, version: tuple[int, ...] | None
) -> None:
    assert pipeline._apiserver_version(text) == version


def test_versions_compare_as_numbers_not_text() -> None:
    newer = pipeline._apiserver_version(b"image: r/kube-apiserver:v1.10.0")
    older = pipeline._apiserver_version(b"image: r/kube-apiserver:v1.9.0")
    assert newer is not None and older is not None and newer > older


def test_the_state_lives_in_the_terraform_bucket_under_region_and_environment(
    env: config.Environment,
) -> None:
    aws_backend = {
        "bucket": STATE,
        "key": "eu-west-1/example/terraform.tfstate",
        "region": REGION,
        "encrypt": "true",
        "kms_key_id": "arn:aws:kms:eu-west-1:123456789012:key/k",
        "use_lockfile": "true",
    }
    assert pipeline._backend(env, False, "arn:aws:kms:eu-west-1:123456789012:key/k") == (
        aws_backend
    )
    # The sandbox's emulator answers buckets by path, not by host name.
    assert pipeline._backend(env, True, "arn:aws:kms:eu-west-1:123456789012:key/k") == {
        **aws_backend, "use_path_style": "true",
    }  # fmt: skip


# -- the plan summary ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("removal", "words"),
    [
        ({"reason": "tainted"}, "tainted (a create that failed half-way)"),
        ({"reason": "requested"}, "replacement requested (-replace)"),
        ({"reason": "cannot_update"}, "forces replacement"),
        ({"reason": "replace_by_triggers"}, "replace_triggered_by"),
        ({"reason": "delete_because_no_resource_config"}, "no longer in the configuration"),
        ({"reason": "delete_because_wrong_repetition"}, "count/for_each changed"),
        ({"reason": "delete_because_count_index"}, "its count index is no longer planned"),
        ({"reason": "delete_because_each_key"}, "its for_each key is no longer planned"),
        (
            {"reason": "delete_because_no_module"},
            "its module is no longer in the configuration",
        ),
        (
            {"reason": "delete_because_no_move_target"},
            "moved to an address that does not exist",
        ),
        ({"reason": "some_new_reason"}, "some new reason"),
        ({"reason": None}, ""),
        ({}, ""),
        ({"reason": "", "attributes": ["ami", "tags.Name"]}, "forces replacement: ami, tags.Name"),
        ({"reason": "cannot_update", "attributes": ["name"]}, "forces replacement: name"),
        ({"reason": "tainted", "attributes": ["x"]}, "tainted (a create that failed half-way): x"),
        ({"reason": "tainted", "attributes": []}, "tainted (a create that failed half-way)"),
    ],
)
def test_why_a_resource_goes_reads_as_words(removal: dict[str, Any], words: str) -> None:
    assert pipeline.removal_reason(removal) == words


def change(address: str, action: str, **more: Any) -> str:
    kind = address.split(".")[0]
    resource: dict[str, Any] = {"addr": address, "resource_type": kind}
    if "key" in more:
        resource["resource_key"] = more.pop("key")
    return json.dumps({"type": "planned_change", "change": {
        "resource": resource, "action": action, **more}})  # fmt: skip


def test_the_plan_summary_reads_counts_rolls_imports_removals_and_outputs() -> None:
    lines = [
        "Terraform will perform the following actions:",  # not JSON: skipped
        "{not json either",
        json.dumps({"type": "version", "terraform": "1.9.8"}),
        change('aws_launch_template.node["secure"]', "update", key="secure"),
        change('aws_launch_template.node["compute"]', "replace", key="compute",
               reason="cannot_update"),
        change("aws_launch_template.bastion", "update"),  # no resource_key: its address
        change('aws_launch_template.node["control-plane"]', "create", key="control-plane"),
        change('aws_launch_template.node["old"]', "delete", key="old",
               reason="delete_because_each_key"),
        change("aws_instance.b", "delete", reason="delete_because_no_resource_config"),
        change("aws_instance.a", "delete"),
        change('aws_autoscaling_group.node["secure"]', "update"),
        change("aws_vpc.main", "no-op", importing={"id": "vpc-2"}),
        change("aws_subnet.a", "create", importing={"id": "subnet-1"}),
        change("aws_iam_role.x", "read", importing="not a dict"),
        json.dumps({"type": "change_summary", "changes": {"add": 3, "change": 4, "remove": 5}}),
        json.dumps({"type": "outputs", "outputs": {
            "api_endpoint": {"value": "https://x", "type": "string"},
            "sensitive": {"sensitive": True},
        }}),
    ]  # fmt: skip
    summary = pipeline.summarize(lines)
    assert (summary.add, summary.change, summary.destroy) == (3, 4, 5)
    # A launch template's new version rolls its group; a new or deleted template rolls nothing.
    assert summary.rolls == ["aws_launch_template.bastion", "compute", "secure"]
    assert summary.imports == [("aws_subnet.a", "subnet-1"), ("aws_vpc.main", "vpc-2")]
    assert summary.removals == [
        {"address": "aws_instance.a", "action": "delete", "reason": "", "attributes": []},
        {"address": "aws_instance.b", "action": "delete",
         "reason": "delete_because_no_resource_config", "attributes": []},
        {"address": 'aws_launch_template.node["old"]', "action": "delete",
         "reason": "delete_because_each_key", "attributes": []},
        {"address": 'aws_launch_template.node["compute"]', "action": "replace",
         "reason": "cannot_update", "attributes": []},
    ]  # fmt: skip
    assert summary.resources[:2] == [
        ("update", 'aws_launch_template.node["secure"]'),
        ("replace", 'aws_launch_template.node["compute"]'),
    ]
    assert len(summary.resources) == 11
    assert summary.outputs == {"api_endpoint": "https://x"}
    assert summary.changes


def test_a_plan_without_a_summary_line_counts_nothing() -> None:
    summary = pipeline.summarize([json.dumps({"type": "change_summary", "changes": {}})])
    assert (summary.add, summary.change, summary.destroy, summary.rolls) == (0, 0, 0, [])
    assert summary.outputs == {} and not summary.changes


@pytest.mark.parametrize(
    ("fields", "changes"),
    [
        ({}, False),
        ({"add": 1}, True),
        ({"change": 1}, True),
        ({"destroy": 1}, True),
        ({"imports": [("aws_vpc.main", "vpc-1")]}, True),
        ({"rolls": ["secure"], "outputs": {"a": 1}}, False),
    ],
)
def test_a_plan_changes_something_when_it_adds_changes_destroys_or_imports(
    fields: dict[str, Any], changes: bool
) -> None:
    assert pipeline.PlanSummary(**fields).changes is changes


@pytest.mark.parametrize(
    ("steps", "path"),
    [
        ([0, "name"], "[0].name"),
        (["tags", "Name"], "tags.Name"),
        (["block_device_mappings", 1, "ebs", 0, "kms_key_id"],
         "block_device_mappings[1].ebs[0].kms_key_id"),
        ([], ""),
    ],
)  # fmt: skip
def test_a_replace_path_reads_as_an_attribute_path(steps: list[Any], path: str) -> None:
    assert pipeline._path(steps) == path


def test_a_plan_that_replaces_nothing_is_not_shown_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`terraform show -json` is read only for a replacement's attributes."""
    tf = Terraform(tmp_path / "work")
    monkeypatch.setattr(tf, "run", lambda *_a, **_k: pytest.fail("terraform show was run"))
    summary = pipeline.summarize(
        [change("aws_instance.a", "delete"), change("aws_vpc.main", "update")]
    )
    assert pipeline.explain(summary, tf, tmp_path / "plan") is summary
    assert summary.removals[0]["attributes"] == []


# -- roll order -----------------------------------------------------------------------------


def test_in_the_sandbox_a_roll_only_reaches_instances_launched_later() -> None:
    assert pipeline.roll_order(
        ["compute", "secure"], [("secure", "i-1")], sandbox=True, stacked=True
    ) == [
        "secure: the sandbox has no instance refresh: only instances launched from now on get "
        "the new template",
        "compute: the sandbox has no instance refresh: only instances launched from now on get "
        "the new template",
    ]


def test_on_aws_the_secure_layer_rolls_first_one_member_at_a_time() -> None:
    running = [("compute", "i-c2"), ("secure", "i-s2"), ("compute", "i-c1"), ("secure", "i-s1")]
    order = pipeline.roll_order(["compute", "secure"], running, sandbox=False, stacked=True)
    assert order == [
        "secure (etcd and the control plane): 2 instances (i-s1, i-s2) replaced one at a time "
        "(AWS picks the order); each new instance goes in service only once its etcd member "
        "has joined, been promoted and every member is healthy, and only then is the next one "
        "replaced",
        "compute: 2 instances (i-c1, i-c2) replaced with at least 90% of them in service "
        "throughout, each leaving node drained first and each new one in service once its node "
        "is Ready",
        "the groups roll in this order: each later group's refresh starts once every earlier "
        "group runs its new template (the roll controller on the control plane)",
    ]


def test_a_separate_control_plane_rolls_after_etcd_and_before_compute() -> None:
    order = pipeline.roll_order(
        ["compute", "control-plane", "secure"], [("control-plane", "i-p1")], sandbox=False,
        stacked=False, compute_min_healthy=50, compute_max_healthy=150,
    )  # fmt: skip
    assert order[0].startswith("secure (etcd): its instances replaced one at a time")
    assert order[1] == (
        "control-plane: 1 instance (i-p1) replaced with at least half of them in service "
        "throughout, each leaving node drained first and each new one in service once its node "
        "is Ready and its API server answers /readyz"
    )
    assert order[2] == (
        "compute: its instances replaced with at least 50% of them in service and at most 150% "
        "running throughout (new ones launched first), each leaving node drained first and each "
        "new one in service once its node is Ready"
    )
    assert len(order) == 4


def test_a_single_rolling_group_says_no_order_and_an_unknown_one_its_own_pace() -> None:
    assert pipeline.roll_order(["extra"], [], sandbox=False, stacked=True) == [
        "extra: its instances replaced with its own pace, each leaving node drained first and "
        "each new one in service once its node is Ready"
    ]
    # At most 100% running: no surge; above it, new instances are launched first.
    [plain] = pipeline.roll_order(["compute"], [], sandbox=False, stacked=True)
    assert "with at least 90% of them in service throughout, each" in plain
    [surge] = pipeline.roll_order(
        ["compute"], [], sandbox=False, stacked=True, compute_max_healthy=101
    )
    assert "with at least 90% of them in service and at most 101% running throughout" in surge


# -- outputs and plan files -----------------------------------------------------------------


def test_outputs_are_read_past_anything_terraform_printed_before_them() -> None:
    text = 'Warning: x\n{"api_endpoint": {"value": "https://x"}, "empty": {"type": "string"}}'
    assert pipeline.parse_outputs(text) == {"api_endpoint": "https://x", "empty": None}
    assert pipeline.parse_outputs("") == {}
    assert pipeline.parse_outputs("\n") == {}  # output without a document: none, no traceback
    assert pipeline.parse_outputs("No outputs found.") == {}


def test_the_outputs_of_a_saved_plan_need_its_state_and_every_value(tmp_path: Path) -> None:
    def plan_with(state: object) -> Path:
        path = tmp_path / f"{len(list(tmp_path.iterdir()))}.tfplan"
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("tfstate", json.dumps(state))
        return path

    assert pipeline.planned_outputs(plan_with({"outputs": {}})) == {}
    assert pipeline.planned_outputs(plan_with({"version": 4})) is None
    assert pipeline.planned_outputs(plan_with({"outputs": {"a": {"type": "string"}}})) is None
    assert pipeline.planned_outputs(plan_with(["not", "a", "state"])) is None
    no_state = tmp_path / "no-state.tfplan"
    with zipfile.ZipFile(no_state, "w") as archive:
        archive.writestr("tfplan", b"")
    assert pipeline.planned_outputs(no_state) is None


def test_a_saved_plan_must_be_a_whole_zip_archive(tmp_path: Path) -> None:
    plan = tmp_path / "up.tfplan"
    with zipfile.ZipFile(plan, "w") as archive:
        archive.writestr("tfplan", b"x")
    pipeline.check_plan_file(plan)  # a plan: nothing to say
    hint = "free some space there (or save the plan elsewhere), then run the same command again"
    for size, path in ((0, tmp_path / "missing.tfplan"), (0, tmp_path / "empty.tfplan"),
                       (6, tmp_path / "cut.tfplan")):  # fmt: skip
        if size or path.name == "empty.tfplan":
            path.write_bytes(b"PK\x03\x04xy"[:size])
        with pytest.raises(KubeplatError) as raised:
            pipeline.check_plan_file(path)
        assert raised.value.message == (
            f"{path}: Terraform did not write a complete plan ({size} bytes)"
        )
        assert raised.value.hint == hint


@pytest.mark.parametrize(("blocks", "full"), [(255, True), (256, False)])
def test_a_plan_cut_short_by_a_full_disk_says_the_disk_is_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, blocks: int, full: bool
) -> None:
    """Free space below 1 MiB (blocks of 4 KiB) is a full disk."""
    plan = tmp_path / "up.tfplan"
    plan.write_bytes(b"")
    monkeypatch.setattr(
        pipeline.os, "statvfs", lambda _path: SimpleNamespace(f_bavail=blocks, f_frsize=4096)
    )
    with pytest.raises(KubeplatError) as raised:
        pipeline.check_plan_file(plan)
    said = f"{plan}: Terraform did not write a complete plan (0 bytes)"
    assert raised.value.message == said + ("; the disk is full" if full else "")


def test_a_finished_plan_is_summarised_and_a_failed_one_raised(tmp_path: Path) -> None:
    tf = Terraform(tmp_path / "work", name="example")
    plan = tmp_path / "up.tfplan"
    with zipfile.ZipFile(plan, "w") as archive:
        archive.writestr("tfplan", b"x")
    lines = [json.dumps({"type": "change_summary", "changes": {"add": 2}})]
    nobody = cast(pipeline.Prepared, None)  # read only to adopt leftovers (not here)
    summary = pipeline._planned(nobody, tf, plan, lines, Result(0, ""), destroy=False)
    assert summary.add == 2
    # A destroy plan with changes (exit code 2) adopts nothing.
    assert pipeline._planned(nobody, tf, plan, lines, Result(2, ""), destroy=True).add == 2
    with pytest.raises(TerraformFailed) as raised:
        pipeline._planned(nobody, tf, plan, lines, Result(1, "Error: boom\n"), destroy=False)
    assert raised.value.message.startswith("terraform plan failed: ")
    plan.write_bytes(b"")  # Terraform's success with no plan written is no plan
    with pytest.raises(KubeplatError, match="did not write a complete plan"):
        pipeline._planned(nobody, tf, plan, lines, Result(0, ""), destroy=False)


# -- Terraform's working copy: names, inputs --------------------------------------------------


def test_hints_name_an_environment_by_name_when_minus_e_finds_it(
    env: config.Environment, tmp_path: Path
) -> None:
    tf = pipeline._terraform(env, {"AWS_REGION": REGION, "AWS_PROFILE": None}, False)
    assert (tf.workdir, tf.name, tf.program) == (env.workdir, "example", "kubeplat")
    assert tf.env == {"AWS_REGION": REGION, "AWS_PROFILE": None}
    # A sandbox environment in the sandbox: plain kubeplat; any other put there by --sandbox.
    assert pipeline._terraform(env, {}, True).program == "kubeplat"
    outside = dataclasses.replace(env, sandbox=False)
    assert pipeline._terraform(outside, {}, True).program == "kubeplat --sandbox"
    assert pipeline._terraform(outside, {}, False).program == "kubeplat"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    moved = elsewhere / "example.tfvars"
    moved.write_text(env.path.read_text())
    other = config.load(str(moved))
    assert pipeline._terraform(other, {}, False).name == str(moved)


def test_the_inputs_file_is_private_and_gone_afterwards_whatever_happens(
    env: config.Environment, tmp_path: Path
) -> None:
    from kubeplat import terraform

    tf = Terraform(tmp_path / "work")
    tf.module.mkdir(parents=True)
    bundle = render.bundle(env, pki_set())
    with pipeline.variables_file(bare(env=env, bundle=bundle), tf) as path:
        assert path == tf.module / "kubeplat.auto.tfvars.json"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        text = path.read_text()
        assert json.loads(text) == terraform.variables(env, bundle)
        assert text == json.dumps(terraform.variables(env, bundle), sort_keys=True)
        assert b"PRIVATE KEY" not in path.read_bytes()
    assert not path.exists()
    with pytest.raises(RuntimeError), pipeline.inputs_file(tf, {"b": 1, "a": 2}) as path:
        assert path.read_text() == '{"a": 2, "b": 1}'
        raise RuntimeError("the plan failed")
    assert not path.exists()


# -- apply progress -----------------------------------------------------------------------------


def hook(kind: str, address: str, action: str = "create", **more: Any) -> str:
    return json.dumps({"type": kind, "hook": {"resource": {"addr": address}, "action": action,
                                              **more}})  # fmt: skip


def lines_of(err: str) -> list[str]:
    """Plain progress lines without their clock."""
    out = []
    for line in err.splitlines():
        assert re.match(STAMP, line), line
        out.append(line[len("00:00:00  ") :])
    return out


def test_apply_progress_names_failures_terraform_errors_and_the_totals(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = Clock()
    monkeypatch.setattr(pipeline, "time", SimpleNamespace(monotonic=fake.monotonic))
    progress = pipeline.ApplyProgress()
    progress(hook("apply_start", "aws_vpc.main"))
    progress(hook("apply_start", "aws_instance.old", "delete"))
    progress(hook("apply_errored", "aws_vpc.main"))
    progress(hook("apply_complete", "aws_instance.old", "delete", elapsed_seconds=0))
    progress(hook("apply_complete", "aws_lb.api", "read", elapsed_seconds=2))
    progress(hook("apply_complete", "aws_s3_object.x", "move"))
    failed = {"summary": "creating VPC", "detail": "quota"}
    progress(json.dumps({"type": "diagnostic", "@level": "error", "diagnostic": failed}))
    progress(json.dumps({"type": "diagnostic", "@level": "error", "diagnostic": {}}))
    warned = {"summary": "deprecated"}
    progress(json.dumps({"type": "diagnostic", "@level": "warning", "diagnostic": warned}))
    progress("Terraform crashed, see crash.log")
    progress("   ")
    fake.now += 12.4
    totals = {"add": 1, "change": 2, "remove": 3, "import": 4}
    progress(json.dumps({"type": "change_summary", "changes": totals}))
    progress(json.dumps({"type": "change_summary", "changes": {"import": 0}}))
    assert lines_of(capsys.readouterr().err) == [
        "failed aws_vpc.main",
        "destroyed aws_instance.old",
        "read aws_lb.api (2s)",
        "moved aws_s3_object.x",
        "Terraform: creating VPC: quota",
        "Terraform: None: ",
        "Terraform crashed, see crash.log",
        "4 imported, 1 added, 2 changed, 3 destroyed in 12s",
        "0 added, 0 changed, 0 destroyed in 12s",
    ]
    assert progress.in_flight == {}


def test_apply_progress_says_what_is_still_in_flight_after_15_quiet_seconds(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = Clock()
    monkeypatch.setattr(pipeline, "time", SimpleNamespace(monotonic=fake.monotonic))
    progress = pipeline.ApplyProgress()
    progress(hook("apply_start", "aws_lb.api"))
    fake.now += 5
    progress(hook("apply_start", "aws_instance.old", "delete"))
    progress(hook("apply_start", "aws_s3_object.x", "move"))
    fake.now += 9.9
    progress(hook("apply_progress", "aws_lb.api"))  # 14.9 s since the start: quiet still
    assert capsys.readouterr().err == ""
    fake.now += 0.1
    progress(hook("apply_progress", "aws_lb.api"))
    fake.now += 1
    progress(hook("apply_progress", "aws_lb.api"))  # a line was just printed
    assert lines_of(capsys.readouterr().err) == [
        "still creating aws_lb.api 15s, destroying aws_instance.old 10s, move aws_s3_object.x 10s"
    ]
    assert progress.flying() == (
        "creating aws_lb.api 16s, destroying aws_instance.old 11s, move aws_s3_object.x 11s"
    )


def test_on_a_terminal_progress_lines_have_no_clock_and_no_still_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, terminal: None
) -> None:
    """The status line redrawn under them names what is in flight (console.Activity)."""
    fake = Clock()
    monkeypatch.setattr(pipeline, "time", SimpleNamespace(monotonic=fake.monotonic))
    progress = pipeline.ApplyProgress()
    progress(hook("apply_start", "aws_vpc.main"))
    fake.now += 60
    progress(hook("apply_progress", "aws_vpc.main"))
    progress(hook("apply_errored", "aws_vpc.main"))
    progress(hook("apply_complete", "aws_lb.api", elapsed_seconds=1))
    failed = {"summary": "creating VPC", "detail": "quota"}
    progress(json.dumps({"type": "diagnostic", "@level": "error", "diagnostic": failed}))
    progress("Terraform crashed")
    progress(json.dumps({"type": "change_summary", "changes": {"add": 1}}))
    assert capsys.readouterr().err.splitlines() == [
        "failed aws_vpc.main",
        "created aws_lb.api (1s)",
        "Terraform: creating VPC: quota",
        "Terraform crashed",
        "1 added, 0 changed, 0 destroyed in 60s",
    ]


def test_with_debug_every_other_line_of_terraform_is_shown(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    version = json.dumps({"type": "version", "terraform": "1.9.8"})
    warning = json.dumps({"type": "diagnostic", "@level": "warning"})
    pipeline.ApplyProgress()(version)
    pipeline._progress_plain(version)
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(console, "_debug", True)
    progress = pipeline.ApplyProgress()
    progress(version)
    progress(warning)
    pipeline._progress_plain("plan line")
    assert capsys.readouterr().err.splitlines() == [version, warning, "plan line"]


# -- waiting for the secure layer -----------------------------------------------------------------


class Groups:
    """Auto Scaling answering (desired, in service) at each look (RECORDING: the emulator puts
    every instance in service at once); the last answer repeats."""

    def __init__(self, looks: list[tuple[int, int]] | None) -> None:
        self.looks = looks
        self.asked = 0

    def describe_auto_scaling_groups(self, AutoScalingGroupNames: list[str]) -> dict[str, Any]:
        assert AutoScalingGroupNames == ["dev-kube-secure"]
        self.asked += 1
        if self.looks is None:
            return {"AutoScalingGroups": []}
        desired, serving = self.looks.pop(0) if len(self.looks) > 1 else self.looks[0]
        states = ["InService"] * serving + ["Pending"]
        instances = [{"LifecycleState": s} for s in states]
        return {"AutoScalingGroups": [{"DesiredCapacity": desired, "Instances": instances}]}


def waiting_on(groups: Groups) -> Any:
    aws = SimpleNamespace(client=lambda _name: groups, sandbox=False, endpoint=None)
    return SimpleNamespace(aws=aws, env=SimpleNamespace(environment="dev", platform="kube"))


def test_a_replaced_secure_group_is_waited_for_and_each_count_said_once(
    capsys: pytest.CaptureFixture[str],
    terminal: None,
) -> None:
    groups = Groups([(3, 1), (3, 1), (3, 3)])
    summary = pipeline.PlanSummary(resources=[("replace", pipeline.SECURE_GROUP)])
    pipeline.wait_for_secure(waiting_on(groups), summary, "kubeplat up -e dev", poll_s=15)
    assert groups.asked == 3
    assert capsys.readouterr().err == (
        "secure layer: 1 of 3 instances in service (etcd members joining)\n"
    )
    gone = Groups(None)  # destroyed meanwhile: nothing to wait for
    pipeline.wait_for_secure(waiting_on(gone), summary, "kubeplat up -e dev", poll_s=15)
    assert gone.asked == 1


def test_a_timeout_says_how_long_it_waited_and_what_to_look_at(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = Clock()
    monkeypatch.setattr(
        pipeline, "time", SimpleNamespace(monotonic=fake.monotonic, sleep=fake.sleep)
    )
    groups = Groups([(3, 2)])
    summary = pipeline.PlanSummary(resources=[("create", pipeline.SECURE_GROUP)])
    with pytest.raises(KubeplatError) as raised:
        pipeline.wait_for_secure(
            waiting_on(groups), summary, "kubeplat up -e dev", timeout_s=120, poll_s=15
        )
    assert raised.value.message == (
        "the secure layer has 2 of 3 instances in service after 2 minutes; everything was "
        "applied and nothing was removed"
    )
    assert raised.value.hint == (
        "see why with kubeplat etcd status -e dev and kubeplat instances -e dev; then run: "
        "kubeplat up -e dev"
    )
    assert fake.slept == [15] * 8 and groups.asked == 9


# -- steps 1-2: the file and the session ------------------------------------------------------


def aws_file(environments: Path) -> Path:
    """environments/dev.tfvars: the example's settings, on AWS, SSH open to everyone."""
    text = (environments / "example.tfvars").read_text().replace("example", "dev")
    text = re.sub(r"(?m)^sandbox\s*=.*$", "sandbox = false", text)
    text = re.sub(r"(?m)^ssh_access_list\s*=.*$", 'ssh_access_list = "0.0.0.0/0"', text)
    path = environments / "dev.tfvars"
    path.write_text(text)
    return path


def test_an_aws_environment_connects_with_the_callers_account_and_its_warnings_said(
    environments: Path, cloud: None, capsys: pytest.CaptureFixture[str], no_sandbox_start: None
) -> None:
    aws_file(environments)
    connected = pipeline.connect("dev", None, False, start=False)
    assert connected.account == ACCOUNT and connected.env.environment == "dev"
    assert (connected.aws.sandbox, connected.aws.endpoint) == (False, None)
    assert connected.env.warnings
    err = capsys.readouterr().err
    assert err == "".join(f"Warning: {w}\n" for w in connected.env.warnings)
    assert "opens access to the whole internet" in err


def test_a_read_only_command_on_a_stopped_sandbox_says_to_build_first(
    environments: Path, cloud: None, no_sandbox_start: None
) -> None:
    aws_file(environments)
    for name, force in (("example", False), ("dev", True)):
        with pytest.raises(KubeplatError) as raised:
            pipeline.connect(name, None, force, start=False)
        assert raised.value.message == (
            "the sandbox is not running, so the sandbox environment has nothing to show"
        )
        assert raised.value.hint == f"start it and build the environment: kubeplat up -e {name}"


def test_a_running_sandbox_is_named_once_per_run(
    environments: Path,
    capsys: pytest.CaptureFixture[str],
    terminal: None,
    monkeypatch: pytest.MonkeyPatch,
    no_sandbox_start: None,
) -> None:
    monkeypatch.setattr(pipeline, "_announced", set())
    monkeypatch.setattr(sandbox, "current", lambda: sandbox.Sandbox(os.getpid(), 4566))
    env, variables = pipeline._environment("example", None, False, start=False)
    assert env.environment == "example"
    assert variables == {
        "AWS_ENDPOINT_URL": "http://127.0.0.1:4566", "AWS_ACCESS_KEY_ID": "sandbox",
        "AWS_SECRET_ACCESS_KEY": "sandbox", "AWS_REGION": REGION, "AWS_DEFAULT_REGION": REGION,
        "AWS_EC2_METADATA_DISABLED": "true",
    }  # fmt: skip
    pipeline._environment("example", None, False, start=False)
    assert capsys.readouterr().err == "sandbox: AWS emulator at http://127.0.0.1:4566\n"
    aws_file(environments)
    assert pipeline._environment("dev", None, False, start=False)[1] is None


def test_commands_that_read_what_up_built_say_when_nothing_was_built(
    environments: Path, cloud: None, no_sandbox_start: None
) -> None:
    aws_file(environments)
    kms = boto3.client("kms", region_name=REGION)
    key = kms.create_key()["KeyMetadata"]
    kms.create_alias(AliasName="alias/kubeplat-dev", TargetKeyId=key["KeyId"])
    with pytest.raises(KubeplatError) as raised:
        pipeline.deployed("dev", None, False)
    assert raised.value.message == (
        "environment dev has not been built yet (no bucket kubeplat-dev-terraform)"
    )
    assert raised.value.hint == "build it: kubeplat up -e dev"
    s3().create_bucket(
        Bucket="kubeplat-dev-terraform", CreateBucketConfiguration={"LocationConstraint": REGION}
    )
    found = pipeline.deployed("dev", None, False)
    assert (found.account, found.key_arn, found.env.environment) == (ACCOUNT, key["Arn"], "dev")
    assert (found.store.bucket, found.store.prefix, found.store.key_arn) == (
        "kubeplat-dev-secrets", "dev", key["Arn"],
    )  # fmt: skip


# -- prepare: buckets, the PKI made once, what differs ------------------------------------------


def test_a_first_prepare_makes_the_buckets_and_the_pki_and_writes_nothing_a_node_runs(
    env: config.Environment, capsys: pytest.CaptureFixture[str], terminal: None
) -> None:
    prepared = prepare(env)
    err = capsys.readouterr().err.splitlines()
    assert err[:2] == [
        f"created bucket {STATE} (versioned, SSE-KMS, public access blocked)",
        f"created bucket {SECRETS} (versioned, SSE-KMS, public access blocked)",
    ]
    assert prepared.created_buckets == [STATE, SECRETS]
    assert "PKI: issued ca (missing)" in err and "PKI: issued etcd/peer (etcd/ca is new)" in err
    assert f"published s3://{ISSUER}/example/keys.json" in err
    assert not any("Warning" in line for line in err)
    # The PKI is the environment's (published, copied to pki/, its staged copy gone with every
    # version); nothing else is in the bucket before the operator confirms.
    pki_objects = {n: v for n, v in prepared.objects.items() if n.startswith("pki/")}
    assert prepared.store.names() == ["pki-published.json", *sorted(pki_objects)]
    assert all(current(n)[1] == data for n, data in pki_objects.items())
    assert versions("pki-staging/") == []
    marker = json.loads(current("pki-published.json")[1])
    digest = hashlib.sha256()
    for name in sorted(pki_objects):
        digest.update(name.encode() + b"\0" + hashlib.sha256(pki_objects[name]).digest())
    assert marker["set"] == digest.hexdigest()[:16]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", marker["at"])
    assert cache(env).load() == prepared.files
    assert prepared.changed == sorted(n for n in prepared.objects if not n.startswith("pki/"))
    assert prepared.changed[0] == "cloudconfig/master" and APISERVER in prepared.changed
    assert (prepared.stale, prepared.live_layers, prepared.first) == ([], set(), [])
    assert prepared.deferred == []
    assert (prepared.account, prepared.key_arn) == (ACCOUNT, prepared.store.key_arn)
    assert prepared.key_arn.startswith("arn:aws:kms:eu-west-1:123456789012:key/")

    # The next run reuses that PKI: nothing issued, nothing written, the same CA.
    before = versions("pki")
    again = prepare(env)
    err = capsys.readouterr().err
    assert "PKI: issued" not in err and "created bucket" not in err
    assert again.files == prepared.files and versions("pki") == before
    assert again.created_buckets == []


def test_on_aws_buckets_without_a_tls_policy_and_cas_near_expiry_are_warned_about(
    env: config.Environment, capsys: pytest.CaptureFixture[str], terminal: None
) -> None:
    """Buckets made by someone else (or before kubeplat set a TLS-only policy); a renewal
    window that reaches the CAs' expiry."""
    files = pki_set()
    ca_days = next(row.days_left for row in pki.describe(files) if row.name == "ca")
    env = dataclasses.replace(env, cert_renew_days=ca_days)
    for name in (STATE, SECRETS, ISSUER):
        s3().create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": REGION})
    s3().put_bucket_versioning(Bucket=SECRETS, VersioningConfiguration={"Status": "Enabled"})
    kms = boto().client("kms", region_name=REGION)
    key = kms.create_key()["KeyMetadata"]
    kms.create_alias(AliasName="alias/kubeplat-example", TargetKeyId=key["KeyId"])
    cache(env).save(files)
    prepared = prepare(env, session(sandbox=False))
    assert prepared.key_arn == key["Arn"]
    assert prepared.created_buckets == []
    err = capsys.readouterr().err.splitlines()
    assert [line for line in err if line.startswith("Warning: the bucket")] == [
        f"Warning: the bucket {name} accepts requests without TLS (no TLS-only policy; it was "
        "created before kubeplat set one, or by someone else): kubeplat buckets -e example "
        "--tls-only adds one and keeps the policy's other statements"
        for name in (STATE, SECRETS)
    ]
    assert (
        f"Warning: certificate ca expires in {ca_days} days (rotate: kubeplat certs --rotate ca)"
    ) in err


def test_upload_writes_pki_then_manifests_then_cloud_configs(env: config.Environment) -> None:
    """A new layer's manifests go before the apply (no node reads them yet), after the PKI and
    before the cloud-config a booting node reads last."""
    built(env)
    s3().delete_object(Bucket=SECRETS, Key=f"example/{COMPUTE_PROXY}")
    s3().delete_object(Bucket=SECRETS, Key=f"example/{COMPUTE_FLANNEL}")
    put("cloudconfig/worker", b"#cloud-config\n# older\n")
    put("pki/common/kubelet-serving-ca.crt", b"older bundle\n")
    prepared = prepare(env)
    assert prepared.changed == [
        "cloudconfig/worker", COMPUTE_FLANNEL, COMPUTE_PROXY, "pki/common/kubelet-serving-ca.crt",
    ]  # fmt: skip
    assert prepared.live_layers == {"secure"} and prepared.deferred == []
    assert pipeline.upload(prepared) == [
        "pki/common/kubelet-serving-ca.crt", COMPUTE_FLANNEL, COMPUTE_PROXY, "cloudconfig/worker",
    ]  # fmt: skip
    for name in prepared.changed:
        assert current(name)[1] == prepared.objects[name]
        head = s3().head_object(Bucket=SECRETS, Key=f"example/{name}")
        assert head["ServerSideEncryption"] == "aws:kms"
        assert head["SSEKMSKeyId"] == prepared.key_arn
    assert versions("staged/") == []
    assert prepared.store.changed(prepared.objects) == []
    # `manifests push` uploads its group alone.
    put("cloudconfig/worker", b"#cloud-config\n# older\n")
    put(COMPUTE_PROXY, b"older proxy\n")
    prepared.changed = ["cloudconfig/worker", COMPUTE_PROXY]
    prepared.live_layers = set()
    assert pipeline.upload(prepared, groups=("manifests/",)) == [COMPUTE_PROXY]
    assert current("cloudconfig/worker")[1] == b"#cloud-config\n# older\n"


def test_a_changed_manifest_of_running_nodes_waits_staged_until_promoted(
    env: config.Environment,
) -> None:
    """Issue 16: a failed apply changes nothing running nodes run (test_two_phase.py shows it
    with the real Terraform failing)."""
    rendered = built(env).objects[COMPUTE_PROXY]
    older = rendered + b"# what the compute nodes run\n"
    running = put(COMPUTE_PROXY, older)
    prepared = prepare(env)
    assert prepared.changed == [COMPUTE_PROXY] and prepared.first == []
    assert prepared.live_layers == {"secure", "compute"}
    assert prepared.deferred == [COMPUTE_PROXY] and prepared.pending == [COMPUTE_PROXY]
    assert pipeline.upload(prepared) == []
    # The nodes' object is the very version they read; the new bytes wait under their digest.
    assert current(COMPUTE_PROXY) == (running, older)
    staged = pipeline.staged_name(rendered)
    assert prepared.store.names("staged/") == [staged]
    assert current(staged)[1] == rendered
    head = s3().head_object(Bucket=SECRETS, Key=f"example/{staged}")
    assert head["ServerSideEncryption"] == "aws:kms"
    assert head["Metadata"] == {"sha256": hashlib.sha256(rendered).hexdigest()}

    # After the apply: made current (a copy with its digest), then the staged copy removed.
    assert pipeline.promote(prepared) == [COMPUTE_PROXY]
    assert current(COMPUTE_PROXY)[1] == rendered
    head = s3().head_object(Bucket=SECRETS, Key=f"example/{COMPUTE_PROXY}")
    assert head["Metadata"] == {"sha256": hashlib.sha256(rendered).hexdigest()}
    assert head["ServerSideEncryption"] == "aws:kms"
    assert pipeline.prune(prepared) == []
    assert versions("staged/") == []
    assert prepare(env).changed == []


def test_a_promotion_whose_staged_copy_is_gone_writes_from_the_render(
    env: config.Environment,
) -> None:
    rendered = built(env).objects[COMPUTE_PROXY]
    put(COMPUTE_PROXY, b"older\n")
    prepared = prepare(env)
    pipeline.upload(prepared)
    prepared.store.purge("staged/")  # another run's prune, after its own promotion
    assert pipeline.promote(prepared) == [COMPUTE_PROXY]
    assert current(COMPUTE_PROXY)[1] == rendered


def test_an_upgrade_makes_the_control_planes_manifests_current_before_the_apply(
    env: config.Environment,
) -> None:
    """Kubernetes' skew policy: no kubelet newer than its API server, and the apply launches
    nodes with the new kubelet. The compute layer's change still waits for the apply."""
    rendered = built(env).objects
    put(APISERVER, older_apiserver(rendered[APISERVER]))
    put(SECURE_PROXY, b"older secure proxy\n")
    put(COMPUTE_PROXY, b"older compute proxy\n")
    prepared = prepare(env)
    assert prepared.first == [APISERVER, SECURE_PROXY]
    assert prepared.deferred == [COMPUTE_PROXY]
    assert pipeline.upload(prepared) == [APISERVER, SECURE_PROXY]
    assert current(APISERVER)[1] == rendered[APISERVER]
    assert current(SECURE_PROXY)[1] == rendered[SECURE_PROXY]
    assert current(COMPUTE_PROXY)[1] == b"older compute proxy\n"
    assert prepared.store.names("staged/") == [pipeline.staged_name(rendered[COMPUTE_PROXY])]


def upgrade_world(env: config.Environment, held: Mapping[str, bytes]) -> pipeline.Prepared:
    """A Prepared whose render is the example's and whose bucket holds `held`."""
    store = bare_store(env)
    store.upload(dict(held))
    bundle = render.bundle(env, pki_set())
    changed = [APISERVER, "manifests/secure/kube-scheduler.yaml", COMPUTE_PROXY]
    return bare(env=env, store=store, bundle=bundle, changed=changed,
                live_layers={"secure", "compute"})  # fmt: skip


@pytest.mark.parametrize(
    ("running", "first"),
    [
        (lambda v: (v[0], v[1] - 1, v[2] + 10), True),  # a minor version behind
        (lambda v: (v[0], v[1], v[2] + 1), False),  # newer than the render: no downgrade first
        (lambda v: v, False),  # the same version
        (lambda v: None, False),  # unreadable: no order is forced
    ],
    ids=["a-minor-behind", "newer", "the-same", "unreadable"],
)
def test_only_a_newer_api_server_goes_before_the_apply(
    env: config.Environment, running: Any, first: bool
) -> None:
    rendered = render.bundle(env, pki_set())[APISERVER]
    version = running(pipeline._apiserver_version(rendered))
    text = b"image: registry.k8s.io/kube-apiserver:v%d.%d.%d\n" % version if version else b"?"
    prepared = upgrade_world(env, {APISERVER: text})
    expected = [APISERVER, "manifests/secure/kube-scheduler.yaml"] if first else []
    assert pipeline.upgrade_first(prepared, {APISERVER}) == expected


def test_a_new_or_idle_api_server_never_goes_first(env: config.Environment) -> None:
    older = b"image: registry.k8s.io/kube-apiserver:v1.30.0\n"
    prepared = upgrade_world(env, {APISERVER: older})
    # Not in the bucket's listing: a new API server, nothing runs an older one.
    assert pipeline.upgrade_first(prepared, set()) == []
    # A layer no node reads yet.
    prepared.live_layers = {"compute"}
    assert pipeline.upgrade_first(prepared, {APISERVER}) == []
    # A changed manifest that is not the API server's is never the reason.
    prepared.live_layers = {"secure", "compute"}
    prepared.changed = [COMPUTE_PROXY, APISERVER]
    assert pipeline.upgrade_first(prepared, {APISERVER, COMPUTE_PROXY}) == [APISERVER]
    # A new API server elsewhere (a control-plane layer being added) hides no upgrade.
    added = "manifests/control-plane/kube-apiserver.yaml"
    prepared.bundle = {**prepared.bundle, added: prepared.bundle[APISERVER]}
    prepared.live_layers = {"secure", "control-plane"}
    prepared.changed = [added, APISERVER]
    assert pipeline.upgrade_first(prepared, {APISERVER}) == [APISERVER]


def test_promotion_makes_the_control_planes_layer_current_first(env: config.Environment) -> None:
    """Each layer's manifests in name order, the layer with an API server before the others."""
    store = bare_store(env)
    bundle = render.bundle(env, pki_set())
    changed = [COMPUTE_FLANNEL, COMPUTE_PROXY, SECURE_PROXY, "cloudconfig/worker"]
    prepared = bare(env=env, store=store, bundle=bundle, changed=changed,
                    live_layers={"secure", "compute"})  # fmt: skip
    assert pipeline.upload(prepared) == ["cloudconfig/worker"]
    assert store.names("staged/") == sorted(
        {pipeline.staged_name(bundle[n]) for n in (COMPUTE_FLANNEL, COMPUTE_PROXY, SECURE_PROXY)}
    )
    assert pipeline.promote(prepared) == [SECURE_PROXY, COMPUTE_FLANNEL, COMPUTE_PROXY]
    for name in (SECURE_PROXY, COMPUTE_FLANNEL, COMPUTE_PROXY):
        assert current(name)[1] == bundle[name]
    assert pipeline._has_apiserver(prepared, SECURE_PROXY)
    assert not pipeline._has_apiserver(prepared, COMPUTE_PROXY)


def test_a_topology_switch_removes_the_old_layers_objects_only_at_prune(
    env: config.Environment,
) -> None:
    """The old layout's manifests and PKI objects stay until the apply that stops using them
    succeeded; what nodes read in the new layout, and cloud-configs, are never removed."""
    built(env)
    old = {
        "manifests/control-plane/kube-apiserver.yaml": b"old api server\n",
        "manifests/control-plane/kube-proxy.yaml": b"old proxy\n",
        "pki/control-plane/apiserver.crt": b"old cert\n",
        "cloudconfig/control-plane": b"#cloud-config\n",
    }
    for name, data in old.items():
        put(name, data)
    put("staged/0123", b"a stopped run's staged manifest\n")
    prepared = prepare(env)
    gone = [
        "manifests/control-plane/kube-apiserver.yaml", "manifests/control-plane/kube-proxy.yaml",
        "pki/control-plane/apiserver.crt",
    ]  # fmt: skip
    assert prepared.stale == gone
    assert prepared.pending == [f"-{name}" for name in gone]
    assert prepared.live_layers == {"secure", "compute", "control-plane"}
    kept = sorted(set(prepared.store.names()) - set(gone) - {"staged/0123"})
    assert pipeline.upload(prepared) == []
    assert set(gone) <= set(prepared.store.names())  # nothing removed before the apply
    assert pipeline.prune(prepared) == [f"-{name}" for name in gone]
    assert prepared.store.names() == kept
    assert "cloudconfig/control-plane" in kept
    assert versions("staged/") == []
    assert pipeline.stale_objects(prepared, prepared.store.names("manifests/")) == []


def test_a_manifests_push_prunes_manifests_only_and_stale_names_come_sorted(
    env: config.Environment,
) -> None:
    store = bare_store(env)
    stale = ["manifests/control-plane/kube-proxy.yaml", "pki/control-plane/apiserver.crt"]
    store.upload(dict.fromkeys(stale, b"old\n"))
    prepared = bare(env=env, store=store, stale=stale)
    assert pipeline.prune(prepared, groups=("manifests/",)) == [f"-{stale[0]}"]
    assert store.names() == [stale[1]]
    assert pipeline.stale_objects(prepared, []) == [stale[1]]
    prepared.bundle = {"pki/secure/apiserver.crt": b""}
    assert pipeline.stale_objects(prepared, ["manifests/x/b.yaml", "manifests/x/a.yaml"]) == [
        "manifests/x/a.yaml", "manifests/x/b.yaml", stale[1],
    ]  # fmt: skip


# -- the PKI: all or nothing, reused, followed --------------------------------------------------


def stage_set(
    store: BucketStore, set_id: str, objects: Mapping[str, bytes], *, publish: bool
) -> None:
    """What a first `up` writes before its copy to pki/: the staged set, and its marker."""
    staged = {f"{pipeline.STAGING}{set_id}/{n}": v for n, v in objects.items()}
    store.upload(staged, changed=list(staged))
    if publish:
        store.put(pipeline.PUBLISHED, json.dumps({"set": set_id}).encode(), only_if_new=True)


def test_a_published_set_half_copied_is_read_whole_and_finished_by_the_next_run(
    env: config.Environment,
) -> None:
    store = bare_store(env)
    files = pki_set()
    objects = bucket_objects(env, files)
    stage_set(store, "0123456789abcdef", objects, publish=True)
    order = pipeline.write_order(objects)
    for name in order[:5]:  # the run stopped after five copies
        store.put(name, objects[name])
    copied = versions("pki/")
    # A plan reads the whole published set and writes nothing.
    wrote: list[str] = []
    assert pipeline.sync_pki(env, store, write=False, wrote=wrote) == files
    assert store.names("pki/") == sorted(order[:5]) and wrote == []
    assert cache(env).load() == {}
    # `up` finishes the copy (what is there stays as it is) and drops the staged set.
    assert pipeline.sync_pki(env, store, write=True, wrote=wrote) == files
    assert wrote == []
    assert store.names("pki/") == sorted(objects)
    assert all(current(n)[1] == objects[n] for n in objects)
    assert set(copied) <= set(versions("pki/")) and len(versions("pki/")) == len(objects)
    assert versions("pki-staging/") == []
    assert json.loads(current(pipeline.PUBLISHED)[1]) == {"set": "0123456789abcdef"}
    assert cache(env).load() == files


def test_a_set_staged_but_never_published_counts_for_nothing(env: config.Environment) -> None:
    """A run stopped before its marker left nothing that counts: the next run (a plan kept for
    `apply` too, which may make a first PKI) makes and publishes its own set."""
    store = bare_store(env)
    stage_set(store, "feedfacefeedface", {"pki/common/ca.crt": b"their CA\n"}, publish=False)
    files = pki_set()
    cache(env).save(files)
    wrote: list[str] = []
    assert pipeline.sync_pki(env, store, write=True, wrote=wrote, new_only=True) == files
    objects = bucket_objects(env, files)
    assert wrote == pipeline.write_order(objects)
    assert store.names("pki/") == sorted(objects)
    assert json.loads(current(pipeline.PUBLISHED)[1])["set"] != "feedfacefeedface"
    assert versions("pki-staging/") == []  # every staged set, every version


def test_a_pki_published_and_then_removed_is_never_made_again(env: config.Environment) -> None:
    store = bare_store(env)
    store.put(pipeline.PUBLISHED, b'{"set": "0123456789abcdef"}')
    cache(env).save(pki_set())
    with pytest.raises(KubeplatError) as raised:
        pipeline.sync_pki(env, store, write=True)
    assert type(raised.value) is KubeplatError
    assert raised.value.message == (
        "the environment's PKI was published (pki-published.json) and later removed from pki/: "
        "kubeplat will not make a second CA for it"
    )
    assert raised.value.hint == (
        "bring pki/ back from the bucket's earlier object versions, or remove the environment's "
        "objects with kubeplat destroy -e example --purge"
    )
    assert store.names() == [pipeline.PUBLISHED] and versions("pki-staging/") == []


class TheirsFirst(BucketStore):
    """Another operator's first `up` publishing its set (staged, then its marker) while this
    run stages its own: their writes land between this run's staged copy and its marker."""

    theirs: Mapping[str, bytes] = {}

    def upload(self, objects: Mapping[str, bytes], changed: Any = None) -> list[str]:
        written = super().upload(objects, changed)
        if any(n.startswith(pipeline.STAGING) for n in objects) and self.theirs:
            theirs, self.theirs = self.theirs, {}
            stage_set(self, "aaaabbbbccccdddd", theirs, publish=True)
        return written


def test_an_operator_who_publishes_first_wins_and_this_run_follows_their_ca(
    env: config.Environment, clock: Clock, capsys: pytest.CaptureFixture[str], terminal: None
) -> None:
    mine, theirs = pki_set(0), pki_set(1)
    assert mine["ca.crt"] != theirs["ca.crt"]
    base = bare_store(env)
    store = TheirsFirst(base.aws, base.bucket, base.prefix, base.key_arn)
    store.theirs = bucket_objects(env, theirs)
    cache(env).save(mine)
    issued: dict[str, str] = {}
    assert pipeline.sync_pki(env, store, write=True, issued=issued) == theirs
    assert issued == {}
    assert capsys.readouterr().err.count(WAITING) == 1
    assert clock.slept == [2]
    assert store.names("pki/") == sorted(bucket_objects(env, theirs))
    # This run's CA key never reached pki/; their set is copied and no staged set remains.
    assert versions("pki/locked/ca.key") == ["pki/locked/ca.key"]
    assert current("pki/locked/ca.key")[1] == theirs["ca.key"]
    assert json.loads(current(pipeline.PUBLISHED)[1]) == {"set": "aaaabbbbccccdddd"}
    assert versions("pki-staging/") == []
    assert cache(env).load() == theirs


def test_create_pki_loses_to_a_published_set_and_drops_its_own_staged_copy(
    env: config.Environment,
) -> None:
    store = bare_store(env)
    theirs = bucket_objects(env, pki_set(1))
    stage_set(store, "aaaabbbbccccdddd", theirs, publish=True)
    with pytest.raises(Conflict):
        pipeline._create_pki(env, store, pki_set(0))
    assert {n.split("/")[1] for n in store.names(pipeline.STAGING)} == {"aaaabbbbccccdddd"}
    assert store.names("pki/") == []


def test_a_damaged_pki_is_waited_for_briefly_then_reported_never_replaced(
    env: config.Environment, clock: Clock, capsys: pytest.CaptureFixture[str], terminal: None
) -> None:
    prepared = built(env)
    prepared.store.delete(["pki/locked/ca.key"])
    capsys.readouterr()
    before = versions("pki/")
    clock.step = 20.5
    with pytest.raises(pki.PKIError) as raised:
        pipeline.sync_pki(env, prepared.store, write=True)
    assert raised.value.message.startswith("ca.key is missing but its other half exists")
    # Long enough for another operator's write in progress (20 s), not the race's minute:
    # waited at 0 s, reported at 20.5 s.
    assert capsys.readouterr().err == WAITING + "\n"
    assert clock.slept == [2]
    assert versions("pki/") == before


class AlwaysBusy(BucketStore):
    """S3 answering ConditionalRequestConflict to every new etcd/peer object: another operator
    keeps writing them."""

    def put(self, name: str, data: bytes, *, only_if_new: bool = False) -> None:
        if only_if_new and name.startswith("pki/secure/etcd/peer."):
            raise Conflict(f"{name} is being written by someone else", "")
        super().put(name, data, only_if_new=only_if_new)


def test_an_operator_who_keeps_changing_the_pki_stops_this_run_after_a_minute(
    env: config.Environment, clock: Clock, capsys: pytest.CaptureFixture[str], terminal: None
) -> None:
    prepared = built(env)
    peer = ["pki/secure/etcd/peer.crt", "pki/secure/etcd/peer.key"]
    prepared.store.delete(peer)
    busy = AlwaysBusy(prepared.aws, SECRETS, "example", prepared.key_arn)
    capsys.readouterr()
    clock.step = 30.5
    with pytest.raises(KubeplatError) as raised:
        pipeline.sync_pki(env, busy, write=True)
    assert type(raised.value) is KubeplatError
    assert raised.value.message == "another operator kept changing the PKI for a minute"
    assert raised.value.hint == "run again"
    assert raised.value.__suppress_context__
    # Waited at 0 and 30.5 s; stopped at 61 s, past the minute.
    assert capsys.readouterr().err == (WAITING + "\n") * 2
    assert clock.slept == [2, 2]
    assert not set(peer) & set(busy.names("pki/"))


def test_a_missing_certificate_is_issued_said_and_written_alone(
    env: config.Environment, capsys: pytest.CaptureFixture[str], terminal: None
) -> None:
    prepared = built(env)
    peer = ["pki/secure/etcd/peer.crt", "pki/secure/etcd/peer.key"]
    prepared.store.delete(peer)
    capsys.readouterr()
    # A plan: said to the caller, not written, not printed.
    issued: dict[str, str] = {}
    files = pipeline.sync_pki(env, prepared.store, write=False, issued=issued)
    assert issued == {"etcd/peer": "missing"}
    assert files["etcd/peer.crt"] != prepared.files["etcd/peer.crt"]
    assert capsys.readouterr().err == ""
    assert not set(peer) & set(prepared.store.names("pki/"))
    # `up`: issued once, written alone, said.
    wrote: list[str] = []
    files = pipeline.sync_pki(env, prepared.store, write=True, wrote=wrote)
    assert wrote == peer
    assert capsys.readouterr().err == "PKI: issued etcd/peer (missing)\n"
    assert current(peer[0])[1] == files["etcd/peer.crt"]
    assert files["ca.crt"] == prepared.files["ca.crt"]
    assert cache(env).load() == files


def test_a_rotation_in_progress_is_stepped_only_by_up_and_said_in_every_run(
    env: config.Environment,
    capsys: pytest.CaptureFixture[str],
    terminal: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`rotation.step` is a RECORDING stand-in: whether a step may be taken reads the running
    nodes' reports (EC2 and the bucket; tests/unit/test_pki_rotation.py and
    tests/integration/test_ca_rotation.py take real steps). What prepare decides is whether
    this run may write, and it says the answer."""
    from kubeplat import rotation

    built(env)
    capsys.readouterr()
    asked: list[bool] = []

    def step(_env: Any, _store: Any, _aws: Any, *, write: bool) -> rotation.Status:
        asked.append(write)
        if not write:
            hold = "kubeplat up takes it (a plan only looks)"
            return rotation.Status({"etcd/ca": pki.TRUST}, "2026-01-02T03:04:05Z", "a@b", hold=hold)
        return rotation.Status({"etcd/ca": pki.REISSUE}, "2026-01-02T03:04:05Z", "a@b",
                               taken=pki.TRUST)  # fmt: skip

    monkeypatch.setattr(rotation, "step", step)
    prepare(env, new_pki_only=True)  # a plan kept for `apply`
    assert capsys.readouterr().err.splitlines() == [
        "PKI: rotation of etcd/ca: step 1 of 3: the new one is trusted beside the old one, "
        "which still signs",
        "PKI: since 2026-01-02 03:04 UTC (a@b)",
        "PKI: the next step waits: kubeplat up takes it (a plan only looks)",
    ]
    prepare(env, write_pki=False)  # a plan
    capsys.readouterr()
    prepare(env)  # up
    assert capsys.readouterr().err.splitlines() == [
        "PKI: rotation of etcd/ca: now at step 2 of 3: the new one signs, the old one is still "
        "trusted"
    ]
    assert asked == [False, False, True]


def test_a_plan_kept_for_apply_refuses_to_change_an_existing_pki(
    env: config.Environment,
) -> None:
    prepared = built(env)
    prepared.store.delete(["pki/secure/etcd/peer.crt", "pki/secure/etcd/peer.key"])
    before = versions("pki/")
    with pytest.raises(KubeplatError) as raised:
        pipeline.sync_pki(env, prepared.store, write=True, new_only=True)
    assert raised.value.message == (
        "the PKI needs changes that a saved plan must not make (etcd/peer: missing); nothing "
        "was written"
    )
    assert raised.value.hint == (
        "make them first: kubeplat certs renew -e example (running nodes pick them up), then "
        "plan again"
    )
    # A change with no reason to name (a token given its expiry date) is refused the same way.
    prepared.store.put("pki/secure/etcd/peer.crt", prepared.files["etcd/peer.crt"])
    prepared.store.put("pki/secure/etcd/peer.key", prepared.files["etcd/peer.key"])
    prepared.store.delete(["pki/secure/bootstrap-token-expiration"])
    with pytest.raises(KubeplatError) as raised:
        pipeline.sync_pki(env, prepared.store, write=True, new_only=True)
    assert raised.value.message == (
        "the PKI needs changes that a saved plan must not make (objects to rewrite); nothing "
        "was written"
    )
    assert versions("pki/") == sorted(
        [*before, "pki/secure/etcd/peer.crt", "pki/secure/etcd/peer.key",
         "pki/secure/bootstrap-token-expiration"]
    )  # fmt: skip


def test_the_bucket_is_the_source_of_truth_and_the_cache_follows_it(
    env: config.Environment,
) -> None:
    prepared = built(env)
    other = pki_set(1)
    cache(env).save({**other, "old/extra.key": b"left by an older kubeplat\n"})
    assert pipeline.sync_pki(env, prepared.store, write=False) == prepared.files
    assert cache(env).load()["ca.crt"] == other["ca.crt"]  # a plan leaves the cache alone
    assert pipeline.sync_pki(env, prepared.store, write=True) == prepared.files
    assert cache(env).load() == prepared.files


def test_an_environment_that_brings_its_ssh_key_gets_no_key_pair_of_kubeplats(
    env: config.Environment,
) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = (
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    )
    (env.path.parent / "id_ed25519.pub").write_bytes(key + b" me@laptop\n")
    with env.path.open("a") as handle:
        handle.write('ssh_public_key = "id_ed25519.pub"\n')
    brought = config.load("example")
    cache(brought).save(pki_set())
    files = pipeline.sync_pki(brought, bare_store(brought), write=False)
    assert files["ssh/id_ed25519.pub"] == key + b" me@laptop\n"
    assert "ssh/id_ed25519" not in files


@pytest.mark.parametrize(
    "marker",
    [None, b"not json", b'{"other": 1}', b'["a list"]', b'{"set": "0123456789abcdef"}'],
)
def test_no_published_set_is_left_to_copy(env: config.Environment, marker: bytes | None) -> None:
    store = bare_store(env)
    if marker is not None:
        store.put(pipeline.PUBLISHED, marker)
    store.put("pki-staging/fedcba9876543210/pki/common/ca.crt", b"another set\n")
    assert pipeline._published(store) is None


def test_a_published_set_still_staged_is_read_by_its_names_under_pki(
    env: config.Environment,
) -> None:
    store = bare_store(env)
    stage_set(store, "0123456789abcdef", {"pki/common/ca.crt": b"ca\n", "pki/x": b"x\n"},
              publish=True)  # fmt: skip
    assert pipeline._published(store) == (
        "0123456789abcdef", {"pki/common/ca.crt": b"ca\n", "pki/x": b"x\n"},
    )  # fmt: skip
    # Only objects under a prefix are PKI files (a bare `pki/x` is not one).
    assert pipeline.pki_files_of({"pki/secure/sa.key": b"k\n", "pki/x": b"x\n"}) == {
        "sa.key": b"k\n"
    }


class CopiedMeanwhile(BucketStore):
    """Another run finishing the copy (and removing the staged set) right after this run
    listed the staged set."""

    def names(self, under: str = "") -> list[str]:
        found = super().names(under)
        if under.startswith(pipeline.STAGING) and found:
            self.purge(pipeline.STAGING)
        return found


def test_a_staged_set_another_run_just_finished_copying_is_nothing_left_to_copy(
    env: config.Environment,
) -> None:
    base = bare_store(env)
    store = CopiedMeanwhile(base.aws, base.bucket, base.prefix, base.key_arn)
    stage_set(store, "0123456789abcdef", {"pki/common/ca.crt": b"ca\n"}, publish=True)
    assert pipeline._published(store) is None


class PeerInFlight(BucketStore):
    """S3 answering ConditionalRequestConflict for one object: another run is writing it."""

    def put(self, name: str, data: bytes, *, only_if_new: bool = False) -> None:
        if only_if_new and name == "pki/locked/ca.key":
            raise Conflict(f"{name} is being written by someone else", "")
        super().put(name, data, only_if_new=only_if_new)


def test_a_copy_still_in_flight_elsewhere_keeps_the_staged_set(env: config.Environment) -> None:
    base = bare_store(env)
    store = PeerInFlight(base.aws, base.bucket, base.prefix, base.key_arn)
    objects = bucket_objects(env, pki_set())
    stage_set(store, "0123456789abcdef", objects, publish=True)
    pipeline._finish_publishing(store, "0123456789abcdef", objects)
    assert store.names("pki/") == sorted(set(objects) - {"pki/locked/ca.key"})
    assert len(store.names(pipeline.STAGING)) == len(objects)


def test_write_pki_drops_an_old_ca_copy_first_and_other_locked_leftovers_last(
    env: config.Environment,
) -> None:
    store = bare_store(env)
    files = pki_set()
    store.upload(bucket_objects(env, files))
    leftovers = ["pki/locked/ca.prev.crt", "pki/locked/old.key", "pki/control-plane/apiserver.crt"]
    store.upload(dict.fromkeys(leftovers, b"left over\n"))
    new = {**files, "bootstrap-token": b"abcdef.0123456789abcdef\n", "spare.key": b"new\n"}
    assert pipeline._write_pki(env, store, new) == [
        "pki/locked/ca.prev.crt", "pki/locked/spare.key", "pki/compute/bootstrap-token",
        "pki/secure/bootstrap-token", "pki/locked/old.key",
    ]  # fmt: skip
    names = store.names("pki/")
    assert "pki/locked/ca.prev.crt" not in names and "pki/locked/old.key" not in names
    # What nodes of an old layout read goes only after an apply (`prune`).
    assert "pki/control-plane/apiserver.crt" in names
    assert current("pki/secure/bootstrap-token")[1] == b"abcdef.0123456789abcdef\n"
    assert current("pki/locked/spare.key")[1] == b"new\n"
    assert pipeline._write_pki(env, store, new) == []


def test_a_rotation_step_writes_its_set_and_the_cache_and_publishes_the_issuer(
    env: config.Environment, capsys: pytest.CaptureFixture[str], terminal: None
) -> None:
    store = bare_store(env)
    files = pki_set()
    store.upload(bucket_objects(env, files))
    cache(env).save({**files, "gone.key": b"x\n"})
    new = {**files, "bootstrap-token": b"abcdef.0123456789abcdef\n"}
    pipeline.store_pki(env, store, new)
    assert current("pki/compute/bootstrap-token")[1] == b"abcdef.0123456789abcdef\n"
    assert cache(env).load() == new
    err = capsys.readouterr().err
    assert f"published s3://{ISSUER}/example/.well-known/openid-configuration\n" in err
    assert f"published s3://{ISSUER}/example/keys.json\n" in err


def test_certificates_within_the_renewal_window_are_warned_about(
    env: config.Environment, capsys: pytest.CaptureFixture[str], terminal: None
) -> None:
    files = pki_set()
    rows = pki.describe(files)
    shortest = min(row.days_left for row in rows)
    pipeline.warn_expiring(dataclasses.replace(env, cert_renew_days=shortest - 1), files)
    assert capsys.readouterr().err == ""
    pipeline.warn_expiring(dataclasses.replace(env, cert_renew_days=shortest), files)
    assert capsys.readouterr().err == "".join(
        f"Warning: certificate {row.name} expires in {row.days_left} days "
        f"(rotate: kubeplat certs --rotate {row.name})\n"
        for row in rows
        if row.days_left == shortest
    )
    ca = next(row for row in rows if row.name == "ca")
    pipeline.warn_expiring(dataclasses.replace(env, cert_renew_days=ca.days_left), files)
    assert (
        f"Warning: certificate ca expires in {ca.days_left} days (rotate: kubeplat certs "
        "--rotate ca)\n"
    ) in capsys.readouterr().err


def test_a_saved_plan_may_be_made_while_a_service_account_key_rotation_is_staged(
    env: config.Environment, capsys: pytest.CaptureFixture[str]
) -> None:
    """`kubeplat certs --rotate sa` stages the next key: the bucket's sa.pub then holds both
    public keys (the signing one first), which nodes trust. Read back, that is the PKI as it
    was, not a change: `plan --out` must not be refused as if the PKI needed rewriting."""
    from kubeplat import rotation

    built(env)
    prepared = prepare(env)
    rotation.begin(env, prepared.store, "sa")
    bundle = current("pki/secure/sa.pub")[1]
    assert bundle.count(b"-----BEGIN PUBLIC KEY-----") == 2
    capsys.readouterr()
    kept = prepare(env, new_pki_only=True)  # what `plan --out FILE` does
    assert kept.files["sa.pub"] == bundle[: bundle.index(b"-----END PUBLIC KEY-----\n") + 25]
