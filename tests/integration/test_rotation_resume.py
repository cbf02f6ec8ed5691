"""A rotation step stopped after any single write to the bucket (moto's S3, SSE-KMS): the next
run completes that step and holds (its nodes must run it first) instead of taking the next one
on top of it; the step after that is taken only then. A run stopped between writing the
rotation record and the PKI never shortens the service-account key's day of turnover."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from pathlib import Path
from typing import Any

import boto3
import pytest

from kubeplat import config, pki, render, rotation
from kubeplat.aws import Aws
from kubeplat.pipeline import store_pki, write_order
from kubeplat.store import BucketStore

pytestmark = pytest.mark.integration

NOW = dt.datetime.now(dt.UTC)


@pytest.fixture
def world(aws: str, environments: Path) -> tuple[config.Environment, BucketStore, Aws]:
    env = config.load("example")
    session = Aws(boto3.Session(), "eu-west-1", aws)
    s3 = session.client("s3")
    with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
        s3.create_bucket(
            Bucket=env.secrets_bucket_name,
            CreateBucketConfiguration={"LocationConstraint": "eu-west-1"},
        )
    for item in s3.list_objects_v2(Bucket=env.secrets_bucket_name).get("Contents", []):
        s3.delete_object(Bucket=env.secrets_bucket_name, Key=item["Key"])
    key = session.client("kms").create_key()["KeyMetadata"]["Arn"]
    return env, BucketStore.of(session, env, key), session


def objects(store: BucketStore) -> dict[str, bytes]:
    return {n: store.get(n) for n in store.names("pki/")}


def layout(env: config.Environment, files: dict[str, bytes]) -> dict[str, bytes]:
    return {f"pki/{k}": v for k, v in render.pki_layout(env, files).items()}


def stopped_after(
    store: BucketStore, old: dict[str, bytes], new: dict[str, bytes], count: int
) -> None:
    """The bucket as a run that wrote `count` objects of the step from `old` to `new` left it."""
    for name in set(store.names("pki/")) - set(old):
        store.delete([name])
    for name, data in old.items():
        store.put(name, data)
    writes = [n for n in write_order(new) if old.get(n) != new[n]]
    for name in writes[:count]:
        store.put(name, new[name])


@pytest.mark.parametrize("names", [["ca", "etcd/ca"], ["sa"]])
def test_a_step_stopped_half_way_is_completed_then_held(
    world: tuple[config.Environment, BucketStore, Aws], names: list[str]
) -> None:
    env, store, session = world
    start = pki.ensure(env, {}, now=NOW).files
    begun = pki.ensure(env, pki.begin(env, start, names, NOW).files, now=NOW).files
    promoted = pki.advance(env, begun, NOW).files
    old, new = layout(env, begun), layout(env, promoted)
    writes = [n for n in write_order(new) if old.get(n) != new[n]]
    for count in range(1, len(writes)):
        stopped_after(store, old, new, count)
        status = rotation.step(env, store, session, now=NOW)  # no instance runs: none to wait for
        assert status is not None
        assert not status.taken, (count, writes[count - 1])
        assert "completed just now" in status.hold
        # Completed: a whole set (nothing left to issue), each name at a step of its own (a
        # stop between two CAs' writes leaves one promoted and one not: both are safe).
        held = pki.settle(store.load_pki())
        phases = pki.staged(held)
        assert set(names) == set(phases) and set(phases.values()) <= {pki.TRUST, pki.REISSUE}
        assert pki.ensure(env, held, now=NOW).issued == [], count
        assert layout(env, pki.ensure(env, held, now=NOW).files) == objects(store), count
        again = rotation.step(env, store, session, now=NOW)
        assert again is not None and not again.hold.startswith("this step was completed")
        if len(set(phases.values())) == 2:  # the one behind catches up, alone
            assert again.taken == pki.TRUST and set(again.phases.values()) == {pki.REISSUE}
    # The whole step written: nothing to complete, the next step is taken.
    stopped_after(store, old, new, len(writes))
    store.delete([n for n in set(store.names("pki/")) - set(new)])
    status = rotation.step(env, store, session, now=NOW)
    assert status is not None
    if names == ["sa"]:  # a day for the tokens first
        assert "service-account tokens signed by the old key may be in use" in status.hold
    else:
        assert status.taken == pki.REISSUE and status.phases == {}


def test_a_record_written_before_its_step_does_not_shorten_the_token_turnover(
    world: tuple[config.Environment, BucketStore, Aws],
) -> None:
    env, store, session = world
    store_pki(env, store, pki.ensure(env, {}, now=NOW).files)
    day_ago = NOW - dt.timedelta(days=2)
    rotation.begin(env, store, "sa", day_ago)
    taken = rotation.step(env, store, session, now=day_ago)
    assert taken is not None and taken.taken == pki.TRUST and taken.phases == {"sa": pki.REISSUE}
    # A run stopped after writing the next step's record, before the PKI: the record says the
    # last step began now-ish; the bucket is still at step 2 of a key that began signing two
    # days ago. The next run believes the bucket and counts the step from now.
    record: dict[str, Any] = json.loads(store.get(rotation.RECORD))
    record["steps"] = {}
    store.put(rotation.RECORD, json.dumps(record).encode())
    held = rotation.step(env, store, session, now=NOW)
    assert held is not None and "may be in use until" in held.hold
    assert json.loads(store.get(rotation.RECORD))["steps"] == {"sa": pki.REISSUE}
    # …and a record that is lost altogether holds the step from now, too.
    store.delete([rotation.RECORD])
    assert "may be in use until" in (rotation.step(env, store, session, now=NOW) or held).hold
    later = rotation.step(env, store, session, now=NOW + dt.timedelta(hours=25))
    assert later is not None and later.phases == {} and later.taken == pki.REISSUE
    assert rotation.RECORD not in store.names(rotation.RECORD)


def test_the_encryption_key_is_dropped_only_when_the_operator_says_secrets_are_rewritten(
    world: tuple[config.Environment, BucketStore, Aws],
) -> None:
    env, store, session = world
    store_pki(env, store, pki.ensure(env, {}, now=NOW).files)
    old = store.get("pki/locked/encryption/secretbox.key")
    begun = rotation.begin(env, store, "encryption", NOW)
    assert begun.phases == {"encryption": pki.TRUST}
    assert rotation.describe(begun)[0].endswith(rotation.ENCRYPTION_STEP[pki.TRUST])
    # No node runs here: step 2 (the new key encrypts) is taken as soon as it is asked for.
    taken = rotation.step(env, store, session, now=NOW)
    assert taken is not None and taken.phases == {"encryption": pki.REISSUE}
    assert store.get("pki/locked/encryption/secretbox.prev.key") == old
    # Step 3 would leave Secrets still under the old key unreadable: it waits for the operator.
    held = rotation.step(env, store, session, now=NOW + dt.timedelta(days=30))
    assert held is not None and held.phases == {"encryption": pki.REISSUE}
    assert rotation.REWRITE in held.hold and "--force" in held.hold
    assert "pki/locked/encryption/secretbox.prev.key" in store.names("pki/locked/")
    done = rotation.step(env, store, session, force=True, now=NOW)
    assert done is not None and done.phases == {} and done.taken == pki.REISSUE
    assert "pki/locked/encryption/secretbox.prev.key" not in store.names("pki/locked/")
    assert store.get("pki/locked/encryption/secretbox.key") != old
