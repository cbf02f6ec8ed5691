"""The secrets bucket as the PKI's source of truth, against moto's real S3 semantics."""

from __future__ import annotations

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
