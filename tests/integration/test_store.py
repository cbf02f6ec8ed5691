"""The secrets bucket as the PKI's source of truth, against moto's real S3 semantics."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import boto3
import pytest

from kubeplat import aws as aws_module
from kubeplat import config, pipeline, state
from kubeplat.store import BucketStore

pytestmark = pytest.mark.integration


@pytest.fixture
def store(aws: str, environments: Path) -> BucketStore:
    env = config.load("example")
    session = aws_module.connect(
        env,
        {
            "AWS_ENDPOINT_URL": aws,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
        },
    )
    session.sandbox = True
    key = state.kms_key(session, env)
    s3 = boto3.client("s3")
    for bucket in (env.secrets_bucket_name, env.terraform_bucket_name):
        state.ensure_bucket(session, bucket, key)
        for version in s3.list_object_versions(Bucket=bucket).get("Versions", []):
            s3.delete_object(Bucket=bucket, Key=version["Key"], VersionId=version["VersionId"])
    return BucketStore.of(session, env, key)


def test_two_operators_racing_end_with_one_ca(store: BucketStore, environments: Path) -> None:
    env = config.load("example")
    results: list[dict[str, bytes]] = []
    errors: list[BaseException] = []

    def operator(workdir: str) -> None:
        # Each operator has their own checkout (their own local cache).
        mine = type(env)(
            **{
                **env.__dict__,
                "path": environments.parent / workdir / "environments" / "example.tfvars",
            }
        )
        try:
            results.append(pipeline.sync_pki(mine, store, write=True))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=operator, args=(name,)) for name in ("alice", "bob")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert results[0]["ca.crt"] == results[1]["ca.crt"]
    assert results[0]["etcd/ca.crt"] == results[1]["etcd/ca.crt"]
    assert store.load_pki()["ca.crt"] == results[0]["ca.crt"]


def test_uploads_only_changed_objects_sse_kms(store: BucketStore) -> None:
    objects = {"manifests/compute/a.yaml": b"a: 1\n", "manifests/compute/b.yaml": b"b: 1\n"}
    assert store.upload(objects) == sorted(objects)
    assert store.upload(objects) == []
    assert store.upload({**objects, "manifests/compute/b.yaml": b"b: 2\n"}) == [
        "manifests/compute/b.yaml"
    ]
    head = boto3.client("s3").head_object(
        Bucket=store.bucket, Key="example/manifests/compute/a.yaml"
    )
    assert head["ServerSideEncryption"] == "aws:kms"


def stub_program(userdata: bytes, root: Path) -> str:
    """The Python the user-data stub runs, with its node paths moved under `root`."""
    found = re.search(r"<<'PY'[^\n]*\n(.*?)\nPY\n", userdata.decode(), re.DOTALL)
    assert found, "no Python in the stub"
    body = found[1]
    return body.replace("/var/lib/kubeplat", str(root / "var")).replace(
        "/etc/kubernetes/pki", str(root / "pki")
    )


def test_a_node_gets_exactly_its_own_configuration(
    store: BucketStore, environments: Path, tmp_path: Path, aws: str
) -> None:
    """Nodes never see half of a new set: a stub from before an upload still gets its own
    cloud-config (an earlier version of the object); a stub from after gets the new one."""
    import dataclasses
    import os
    import subprocess
    import sys

    from kubeplat import pki, render

    env = config.load("example")
    files = pki.ensure(env, {}).files
    old = render.bundle(env, files)
    new = render.bundle(dataclasses.replace(env, etcd_version="3.5.23"), files)
    assert old["cloudconfig/master"] != new["cloudconfig/master"]
    objects = {k: v for k, v in old.items() if k.startswith(("pki/", "cloudconfig/"))}
    store.upload(objects)
    store.upload({"cloudconfig/master": new["cloudconfig/master"]})  # a newer configuration lands
    (tmp_path / "var").mkdir()
    env_vars = {
        **os.environ,
        "AWS_ENDPOINT_URL": aws,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }
    for name, bundle in (("old", old), ("new", new)):
        root = tmp_path / name
        (root / "var").mkdir(parents=True)
        run = subprocess.run(
            [sys.executable, "-c", stub_program(bundle["userdata/secure"], root)],
            env=env_vars, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        assert (root / "var" / "cloud-config.yaml").read_bytes() == bundle["cloudconfig/master"]
        assert (root / "pki" / "etcd" / "peer.key").read_bytes() == files["etcd/peer.key"]
        assert (root / "pki" / "etcd" / "peer.key").stat().st_mode & 0o777 == 0o600
        assert not (root / "pki" / "ca.key").exists()  # the locked prefix is never fetched


def test_a_damaged_bucket_pki_is_an_error_not_a_new_ca(
    store: BucketStore, environments: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Half a CA in the bucket is waited on (another operator may be writing it), then reported;
    never replaced by a new CA."""
    from kubeplat import pki

    monkeypatch.setattr(pipeline, "DAMAGE_WAIT_S", 1.0)
    env = config.load("example")
    pipeline.sync_pki(env, store, write=True)
    ca = store.get("pki/common/ca.crt")
    store.delete(["pki/locked/ca.key"])
    with pytest.raises(pki.PKIError, match=r"ca\.key is missing but its other half exists"):
        pipeline.sync_pki(env, store, write=True)
    assert store.get("pki/common/ca.crt") == ca


def test_a_second_checkout_caches_the_bucket_pki(
    store: BucketStore, environments: Path, tmp_path: Path
) -> None:
    """The bucket is the source of truth: a checkout that creates nothing still gets its cache."""
    env = config.load("example")
    first = pipeline.sync_pki(env, store, write=True)
    other = type(env)(
        **{**env.__dict__, "path": tmp_path / "other" / "environments" / "example.tfvars"}
    )
    assert pipeline.sync_pki(other, store, write=True)["ca.crt"] == first["ca.crt"]
    assert (tmp_path / "other" / ".kubeplat" / "example" / "pki" / "ca.crt").read_bytes() == first[
        "ca.crt"
    ]


def _empty(store: BucketStore, cache: Path) -> None:
    s3 = boto3.client("s3")
    for version in s3.list_object_versions(Bucket=store.bucket).get("Versions", []):
        s3.delete_object(Bucket=store.bucket, Key=version["Key"], VersionId=version["VersionId"])
    import shutil

    shutil.rmtree(cache, ignore_errors=True)


def test_a_first_pki_write_interrupted_anywhere_is_finished_or_discarded_by_the_next_run(
    store: BucketStore, environments: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 16, item 3: Ctrl-C during the first write of the PKI (here: at the first write,
    inside the staged set, at the publishing write, just after it, and inside the copy) never
    leaves a set that later runs refuse. Before the publishing write nothing counts and the next
    run makes its own set; after it, every later run (a plan too, read-only) has exactly the
    published set, and `up` finishes copying it."""
    from kubeplat.store import BucketStore as Store

    monkeypatch.setattr(pipeline, "DAMAGE_WAIT_S", 1.0)
    env = config.load("example")
    cache = env.workdir / "pki"
    real_put = Store.put
    writes: list[str] = []

    def counting(self: Store, name: str, data: bytes, *, only_if_new: bool = False) -> None:
        writes.append(name)
        real_put(self, name, data, only_if_new=only_if_new)

    monkeypatch.setattr(Store, "put", counting)
    pipeline.sync_pki(env, store, write=True)
    order = list(writes)
    published_at = order.index(pipeline.PUBLISHED)
    assert all(n.startswith(pipeline.STAGING) for n in order[:published_at])
    assert not any(n.startswith(pipeline.STAGING) for n in order[published_at + 1 :])

    for stop in sorted({0, published_at // 2, published_at, published_at + 1, len(order) - 1}):
        _empty(store, cache)
        calls = iter(range(len(order) + 1))

        def interrupted(self: Store, name: str, data: bytes, *, only_if_new: bool = False) -> None:
            if next(calls) >= stop:  # noqa: B023 (this iteration's stop)
                raise KeyboardInterrupt
            real_put(self, name, data, only_if_new=only_if_new)

        monkeypatch.setattr(Store, "put", interrupted)
        with pytest.raises(KeyboardInterrupt):
            pipeline.sync_pki(env, store, write=True)
        monkeypatch.setattr(Store, "put", real_put)
        staged = pipeline._published(store)
        if stop > published_at:
            assert staged is not None
            planned = pipeline.sync_pki(env, store, write=False)  # a plan, read-only
            assert planned["ca.crt"] == pipeline.pki_files_of(staged[1])["ca.crt"]
        else:
            assert staged is None
        files = pipeline.sync_pki(env, store, write=True)
        if staged is not None:
            assert files["ca.crt"] == pipeline.pki_files_of(staged[1])["ca.crt"], stop
        assert store.load_pki() == files, stop
        left = boto3.client("s3").list_object_versions(
            Bucket=store.bucket, Prefix=store.key(pipeline.STAGING)
        )
        assert not left.get("Versions") and not left.get("DeleteMarkers"), stop


def test_a_kept_plan_creates_a_new_pki_but_never_renews_one(
    store: BucketStore, environments: Path
) -> None:
    """`plan --out` (new_only): a bucket without PKI gets one (no node reads it before the
    apply); a PKI that needs renewing is refused, nothing written (`certs renew` does that)."""
    import datetime as dt

    from kubeplat.errors import KubeplatError

    env = config.load("example")
    files = pipeline.sync_pki(env, store, write=True, new_only=True)
    assert store.load_pki() == files
    before = sorted(store.names("pki/"))
    digests = store.digests(before)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=350)  # every leaf within 90 days of expiry
    with pytest.raises(
        KubeplatError, match="the PKI needs changes that a saved plan must not make"
    ):
        pipeline.sync_pki(env, store, write=True, new_only=True, now=later)
    assert sorted(store.names("pki/")) == before and store.digests(before) == digests


def test_a_published_pki_removed_by_hand_is_named_never_replaced(
    store: BucketStore, environments: Path
) -> None:
    """Once published, an environment's PKI is never made a second time: pki/ emptied by hand
    is an error saying so (the published marker stays), not a new CA."""
    from kubeplat.errors import KubeplatError

    env = config.load("example")
    pipeline.sync_pki(env, store, write=True)
    store.delete(store.names("pki/"))
    import shutil

    shutil.rmtree(env.workdir / "pki")
    with pytest.raises(KubeplatError, match=r"was published .* and later removed from pki/"):
        pipeline.sync_pki(env, store, write=True)
    assert store.names("pki/") == []
