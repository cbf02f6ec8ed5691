"""The main job's details (kubeplat/pipeline.py) in the unit tier: the requests the bucket
gets (one round of digests per run, nothing written twice, each leftover deleted once), the
new PKI's marker, what is said when the issuer is published, the outputs as Terraform prints
them, and the early plan's environment and stop.

Stand-ins, and why: the same as test_pipeline_unit.py's and test_pipeline_terraform_unit.py's,
whose helpers these tests reuse. S3 and KMS are moto's in-process mock; which requests reach
S3 is recorded by a `BucketStore` subclass (`Recording`) that then does each of them for real.
Terraform is that module's STAND-IN script; steps 1-5 around the early plan are its recording
stand-ins (`Steps`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from moto import mock_aws

from kubeplat import config, console, pipeline
from kubeplat.errors import KubeplatError
from kubeplat.store import BucketStore
from kubeplat.terraform import Terraform, found
from tests.conftest import local_zone
from tests.unit import test_pipeline_terraform_unit as tfu
from tests.unit import test_pipeline_unit as pu


@pytest.fixture
def env(environments: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[config.Environment]:
    """The example environment in an empty AWS account (moto's) answering in this process."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", pu.REGION)
    with mock_aws():
        yield config.load("example")


class Recording(BucketStore):
    """The secrets bucket, every write, deletion and digest request done and recorded."""

    puts: list[str]
    deletes: list[list[str]]
    asked: list[list[str]]

    @classmethod
    def over(cls, store: BucketStore) -> Recording:
        recording = cls(store.aws, store.bucket, store.prefix, store.key_arn)
        recording.forget()
        return recording

    def forget(self) -> None:
        self.puts, self.deletes, self.asked = [], [], []

    def put(self, name: str, data: bytes, *, only_if_new: bool = False) -> None:
        self.puts.append(name)
        super().put(name, data, only_if_new=only_if_new)

    def delete(self, names: Iterable[str]) -> None:
        names = list(names)
        self.deletes.append(names)
        super().delete(names)

    def digests(self, names: Iterable[str]) -> dict[str, str | None]:
        names = list(names)
        self.asked.append(names)
        return super().digests(names)


# -- the bucket's requests ------------------------------------------------------------------------


def test_upload_and_promote_send_what_prepare_found_changed_once_and_ask_nothing_again(
    env: config.Environment,
) -> None:
    rendered = pu.built(env).objects[pu.COMPUTE_PROXY]
    pu.put(pu.COMPUTE_PROXY, rendered + b"# what the compute nodes run\n")
    pu.put("cloudconfig/worker", b"#cloud-config\n# older\n")
    prepared = pu.prepare(env)
    assert prepared.deferred == [pu.COMPUTE_PROXY]
    prepared.store = store = Recording.over(prepared.store)
    assert pipeline.upload(prepared) == ["cloudconfig/worker"]
    assert store.asked == []  # prepare's digests stand: one round of HEADs per run
    assert sorted(store.puts) == sorted([pipeline.staged_name(rendered), "cloudconfig/worker"])
    assert pu.current("cloudconfig/worker")[1] == prepared.objects["cloudconfig/worker"]
    # After the apply the staged bytes are copied inside the bucket, not sent again.
    store.forget()
    assert pipeline.promote(prepared) == [pu.COMPUTE_PROXY]
    assert store.puts == []
    assert pu.current(pu.COMPUTE_PROXY)[1] == rendered


def test_finishing_a_half_copied_set_writes_only_what_pki_lacks(
    env: config.Environment,
) -> None:
    store = Recording.over(pu.bare_store(env))
    objects = pu.bucket_objects(env, pu.pki_set())
    pu.stage_set(store, "0123456789abcdef", objects, publish=True)
    order = pipeline.write_order(objects)
    for name in order[:5]:  # the run stopped after five copies
        store.put(name, objects[name])
    store.forget()
    pipeline._finish_publishing(store, "0123456789abcdef", objects)
    assert store.puts == order[5:]
    assert store.names("pki/") == sorted(objects)
    assert pu.versions(pipeline.STAGING) == []


def test_an_old_ca_copy_is_deleted_once_and_first(env: config.Environment) -> None:
    store = Recording.over(pu.bare_store(env))
    files = pu.pki_set()
    store.upload(pu.bucket_objects(env, files))
    store.upload(dict.fromkeys(["pki/locked/ca.prev.crt", "pki/locked/old.key"], b"left\n"))
    store.forget()
    pipeline._write_pki(env, store, files)
    assert store.deletes == [["pki/locked/ca.prev.crt"], ["pki/locked/old.key"]]
    # The versioned bucket keeps one delete marker over each: nothing was deleted twice.
    assert pu.versions("pki/locked/ca.prev.crt") == ["pki/locked/ca.prev.crt"] * 2
    assert pu.versions("pki/locked/old.key") == ["pki/locked/old.key"] * 2


@pytest.fixture
def far_east() -> Iterator[None]:
    """The operator's clock on UTC+14 (Kiribati's Line Islands): local time is not UTC."""
    with local_zone("LINT-14"):
        yield


def test_a_new_pkis_marker_says_in_utc_when_it_was_published(
    env: config.Environment, far_east: None
) -> None:
    store = pu.bare_store(env)
    pipeline._create_pki(env, store, pu.pki_set())
    marker = json.loads(store.get(pipeline.PUBLISHED))
    at = dt.datetime.strptime(marker["at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    assert abs(at - dt.datetime.now(dt.UTC)) < dt.timedelta(minutes=5)


def test_each_issuer_document_published_is_said_as_done(
    env: config.Environment, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = pu.bare_store(env)
    said: list[tuple[str, str]] = []

    def status(message: str, style: str = "info") -> None:
        said.append((message, style))

    monkeypatch.setattr(console, "status", status)
    pipeline._publish_issuer(env, store, pu.pki_set())
    # (the issuer's bucket, made on the first publication, is said first)
    assert [line for line in said if line[0].startswith("published ")] == [
        (f"published s3://{pu.ISSUER}/example/.well-known/openid-configuration", "ok"),
        (f"published s3://{pu.ISSUER}/example/keys.json", "ok"),
    ]


# -- Terraform's outputs and the early plan -------------------------------------------------------


def test_outputs_printed_from_the_first_character_are_read() -> None:
    assert pipeline.parse_outputs('{"api": {"value": "https://api", "type": "string"}}') == {
        "api": "https://api"
    }


@pytest.fixture
def standin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tfu.Standin]:
    """test_pipeline_terraform_unit.py's stand-in terraform."""
    folder = tmp_path / "standin"
    folder.mkdir()
    binary = folder / "terraform"
    binary.write_text(tfu.STANDIN.format(python=sys.executable))
    binary.chmod(0o755)
    monkeypatch.setenv("KUBEPLAT_TERRAFORM", str(binary))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    fake = tfu.Standin(folder)
    monkeypatch.setenv("STANDIN_LOG", str(fake.log))
    monkeypatch.setenv("STANDIN_SCRIPT", str(fake.script))
    found.cache_clear()
    yield fake
    found.cache_clear()


@pytest.fixture
def example(environments: Path) -> config.Environment:
    return config.load("example")


def initialised(env: config.Environment, standin: tfu.Standin, *, sandbox: bool) -> None:
    tf = pipeline._terraform(env, {}, sandbox)
    tf.init(pipeline._backend(env, sandbox, tfu.KEY))
    standin.forget()


def test_an_early_plan_on_aws_runs_with_the_environments_region(
    example: config.Environment,
    standin: tfu.Standin,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    adopted: list[Any],
) -> None:
    outside = dataclasses.replace(example, sandbox=False)
    initialised(outside, standin, sandbox=False)
    tfu.Steps(outside, None).install(monkeypatch)
    standin.answer("plan", {"lines": [tfu.summary_line()], "write_plan": "x"})
    _prepared, tf, _summary = pipeline.prepare_and_plan(
        "example", None, False, tmp_path / "p", write_pki=True
    )
    assert [argv[0] for argv in standin.argvs()] == ["plan"]  # the early plan stood
    assert tf.env == {"AWS_REGION": pu.REGION, "AWS_DEFAULT_REGION": pu.REGION}
    assert standin.runs()[0]["endpoint"] is None


@pytest.fixture
def adopted(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """adopt.adopt: nothing to adopt (its own tests in test_adopt*.py)."""
    from kubeplat import adopt

    calls: list[Any] = []
    monkeypatch.setattr(adopt, "adopt", lambda *args: calls.append(args))
    return calls


def test_a_preparation_that_fails_stops_the_early_plan_before_it_ends(
    example: config.Environment,
    standin: tfu.Standin,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    initialised(example, standin, sandbox=True)
    ended = tmp_path / "plan-ended"
    command = Terraform.command

    def slow_plan(self: Terraform, subcommand: str, *args: str) -> list[str]:
        if subcommand != "plan":
            return command(self, subcommand, *args)
        # A plan that takes two seconds, unless stopped as on Ctrl-C.
        code = f"import pathlib, time; time.sleep(2); pathlib.Path({str(ended)!r}).touch()"
        return [sys.executable, "-c", code]

    monkeypatch.setattr(Terraform, "command", slow_plan)
    wrong = KubeplatError("the credentials are for account 999999999999", "use the right ones")
    tfu.Steps(example, dict(tfu.SANDBOX_ENV), fail=wrong).install(monkeypatch)
    with pytest.raises(KubeplatError) as raised:
        pipeline.prepare_and_plan("example", None, False, tmp_path / "p", write_pki=True)
    assert raised.value is wrong
    assert not ended.exists()
