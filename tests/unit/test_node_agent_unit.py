"""The node agent (`kubeplat-node agent`, kubeplat/node/agent.py) without the emulator: what a
node's folders hold after each pass, what it restarts, when it takes its turn and what it
reports. tests/integration/test_node_agent.py runs the same agent against moto's S3; this file
is the unit tier's (the one mutation testing runs), so it asserts exact files, modes, change
lists, state files, reports and log lines.

STAND-INS, and why:
- S3 is a RECORDING stand-in in memory (moto runs only in the integration tier). It answers the
  calls the agent makes with S3's shapes: list_objects_v2 through a paginator (small pages, in
  the order the objects were put, so the agent's own sorting is what is tested; no `Contents`
  when nothing matches), get_object and put_object. An ETag is the quoted md5 of the body, as
  S3 gives for a plain upload; `reupload` gives the same bytes a new ETag, as a multipart or
  KMS-encrypted upload does. It records every listing and every download.
- The other nodes' reports: a RECORDING stand-in for health.Reporter (publish, read), a dict.
- EC2's describe_instances: a stand-in paginator that records the filters it was given.
- The clock: the agent module's `time` and `datetime` (only the agent's, not the global
  modules) are a stand-in clock, so turns, heartbeats, retries and staleness are tested at
  their exact boundaries without sleeping. A naive `now()` is an hour ahead of UTC, as on a
  machine in Central Europe: the agent must ask for UTC.
- systemctl (the `--reload-command`): a RECORDING stand-in for subprocess.run, or a `sh` line
  that appends the unit to a file.
- An API server's /readyz and etcd's /health: stand-in HTTPS servers on loopback, with
  certificates made here.
The certificates are real (the cryptography package), so the agent's own DER reading
(`key_ids`) is checked against what an X.509 library writes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import http.server
import io
import ipaddress
import json
import logging
import os
import signal
import ssl
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from kubeplat.node import agent as node_agent
from kubeplat.node import aws as node_aws
from tests.tls_standin import running

BUCKET = "kubeplat-dev-secrets"
MANIFESTS = "dev/manifests/compute/"
UTC = dt.UTC
NOW = dt.datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
STAMP = "2026-12-05T12:00:00Z"


def etag_of(body: bytes) -> str:
    return '"' + hashlib.md5(body).hexdigest() + '"'


class RecordingS3:
    """The S3 STAND-IN (see the module docstring): one bucket, recording lists and gets."""

    def __init__(self, page_size: int = 2) -> None:
        self.objects: dict[str, tuple[bytes, str]] = {}  # key → (body, ETag), in put order
        self.page_size = page_size
        self.lists: list[str] = []  # the prefixes listed
        self.gets: list[str] = []  # the keys downloaded
        self.uploads = 0

    def put_object(self, *, Bucket: str, Key: str, Body: bytes) -> dict[str, str]:
        assert Bucket == BUCKET, Bucket
        self.objects[Key] = (Body, etag_of(Body))
        return {"ETag": etag_of(Body)}

    def reupload(self, key: str) -> None:
        """The same bytes again as a multipart upload: a new ETag (not the body's md5)."""
        self.uploads += 1
        body = self.objects[key][0]
        self.objects[key] = (body, f'"{hashlib.md5(body).hexdigest()[:30]}-{self.uploads + 1}"')

    def delete_object(self, *, Bucket: str, Key: str) -> None:
        assert Bucket == BUCKET, Bucket
        del self.objects[Key]

    def etag(self, key: str) -> str:
        return self.objects[key][1]

    def get_paginator(self, operation: str) -> Any:
        assert operation == "list_objects_v2", operation
        return SimpleNamespace(paginate=self._paginate)

    def _paginate(self, *, Bucket: str, Prefix: str) -> Iterator[dict[str, Any]]:
        assert Bucket == BUCKET, Bucket
        self.lists.append(Prefix)
        items = [
            {"Key": key, "ETag": etag, "Size": len(body)}
            for key, (body, etag) in self.objects.items()
            if key.startswith(Prefix)
        ]
        if not items:
            return iter([{"KeyCount": 0, "Prefix": Prefix}])
        size = self.page_size
        pages = [items[at : at + size] for at in range(0, len(items), size)]
        return iter([{"KeyCount": len(page), "Contents": page} for page in pages])

    def get_object(self, *, Bucket: str, Key: str) -> dict[str, Any]:
        assert Bucket == BUCKET, Bucket
        self.gets.append(Key)
        body, etag = self.objects[Key]
        return {"Body": io.BytesIO(body), "ETag": etag}


class RecordingStatus:
    """The health.Reporter STAND-IN: every node's `manifests.json` in a dict; what this node
    publishes is recorded."""

    def __init__(self, me: str) -> None:
        self.me = me
        self.reports: dict[tuple[str, str], dict[str, Any]] = {}
        self.published: list[tuple[str, dict[str, Any]]] = []

    def publish(self, name: str, document: dict[str, Any]) -> bool:
        self.published.append((name, dict(document)))
        self.reports[(self.me, name)] = dict(document)
        return True

    def read(self, instance: str, name: str) -> dict[str, Any] | None:
        found = self.reports.get((instance, name))
        return dict(found) if found is not None else None

    def peer(self, instance: str, digest: str, ready: bool, age_s: float = 10.0) -> None:
        """`instance` reported `digest` (`ready`) `age_s` seconds before NOW."""
        updated = (NOW - dt.timedelta(seconds=age_s)).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.reports[(instance, "manifests")] = {
            "digest": digest,
            "ready": ready,
            "updated": updated,
        }


class StoppedDatetime(dt.datetime):
    """datetime with its clock stopped at NOW; a naive now() is a local time, an hour ahead."""

    @classmethod
    def now(cls, tz: dt.tzinfo | None = None) -> Any:
        if tz is None:
            return (NOW + dt.timedelta(hours=1)).replace(tzinfo=None)
        return NOW.astimezone(tz)


class Clock:
    """The stand-in clock: monotonic time that only sleeping moves, and a wall clock."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.wall = 2_000_000_000.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    def time(self) -> float:
        return self.wall


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    stand_in = Clock()
    monkeypatch.setattr(
        node_agent,
        "time",
        SimpleNamespace(monotonic=stand_in.monotonic, sleep=stand_in.sleep, time=stand_in.time),
    )
    monkeypatch.setattr(node_agent, "datetime", StoppedDatetime)
    return stand_in


@pytest.fixture
def said(caplog: pytest.LogCaptureFixture) -> Callable[[], list[str]]:
    """The agent's log lines so far."""
    caplog.set_level(logging.INFO, logger="kubeplat-agent")

    def lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "kubeplat-agent"]

    return lines


@pytest.fixture
def s3() -> RecordingS3:
    return RecordingS3()


def put(s3: RecordingS3, key: str, body: bytes) -> None:
    s3.put_object(Bucket=BUCKET, Key=key, Body=body)


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def files(folder: Path) -> list[str]:
    """Every file under `folder`, hidden ones included (a temporary file left would show)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if not p.is_dir())


def state(path: Path) -> str:
    return path.read_text()


def fill_digest(folder: Path, names: list[str]) -> str:
    """What `@PKI:names@` becomes: written out here from the agent's documented rule."""
    summed = hashlib.sha256()
    for name in sorted(names):
        path = folder / name
        data = path.read_bytes() if path.is_file() and ".." not in name else b"(absent)"
        summed.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    return summed.hexdigest()[:16]


# --- Agent.sync_once: one prefix, one folder ---------------------------------------------------


def test_first_pass_writes_every_object_and_remembers_what_it_wrote(
    s3: RecordingS3, tmp_path: Path
) -> None:
    put(s3, MANIFESTS + "b.yaml", b"b: 1\n")
    put(s3, MANIFESTS + "a.yaml", b"a: 1\n")
    put(s3, "dev/manifests/secure/other.yaml", b"not this layer's\n")
    put(s3, "dev/manifests/compute-old/x.yaml", b"a prefix that only starts the same\n")
    target = tmp_path / "etc/kubernetes/manifests"  # not there yet
    changed: list[str] = []
    agent = node_agent.Agent(s3, BUCKET, MANIFESTS, target, before_change=changed.append)
    assert agent.sync_once() == ["+a.yaml", "+b.yaml"]
    assert (target / "a.yaml").read_bytes() == b"a: 1\n"
    assert (target / "b.yaml").read_bytes() == b"b: 1\n"
    assert mode(target / "a.yaml") == mode(target / "b.yaml") == 0o644
    assert changed == ["a.yaml", "b.yaml"]
    assert s3.lists == [MANIFESTS]
    assert s3.gets == [MANIFESTS + "a.yaml", MANIFESTS + "b.yaml"]
    assert files(target) == [".kubeplat-agent.json", "a.yaml", "b.yaml"]
    expected = {"a.yaml": s3.etag(MANIFESTS + "a.yaml"), "b.yaml": s3.etag(MANIFESTS + "b.yaml")}
    assert state(target / ".kubeplat-agent.json") == json.dumps(expected, sort_keys=True)
    assert mode(target / ".kubeplat-agent.json") == 0o644
    assert agent.applied() == expected
    assert agent.pending() == []

    # Nothing changed: nothing downloaded, nothing written, nothing said.
    s3.gets.clear()
    assert agent.sync_once() == []
    assert s3.gets == [] and changed == ["a.yaml", "b.yaml"]


def test_a_changed_object_replaces_its_file_and_leaves_the_others_alone(
    s3: RecordingS3, tmp_path: Path
) -> None:
    put(s3, MANIFESTS + "a.yaml", b"a: 1\n")
    put(s3, MANIFESTS + "b.yaml", b"b: 1\n")
    changed: list[str] = []
    agent = node_agent.Agent(s3, BUCKET, MANIFESTS, tmp_path, before_change=changed.append)
    agent.sync_once()
    os.utime(tmp_path / "a.yaml", (1_000_000, 1_000_000))
    inode = (tmp_path / "b.yaml").stat().st_ino
    changed.clear()
    s3.gets.clear()
    put(s3, MANIFESTS + "b.yaml", b"b: 2\n")
    put(s3, MANIFESTS + "a0.yaml", b"new\n")  # sorts between a.yaml and b.yaml
    assert agent.sync_once() == ["+a0.yaml", "~b.yaml"]
    assert changed == ["a0.yaml", "b.yaml"]
    assert s3.gets == [MANIFESTS + "a0.yaml", MANIFESTS + "b.yaml"]
    assert (tmp_path / "b.yaml").read_bytes() == b"b: 2\n"
    assert (tmp_path / "b.yaml").stat().st_ino != inode  # renamed into place, not rewritten
    assert (tmp_path / "a.yaml").stat().st_mtime == 1_000_000
    # The state file is sorted (a0.yaml came last to what was known).
    expected = {n: s3.etag(MANIFESTS + n) for n in ("a.yaml", "a0.yaml", "b.yaml")}
    assert state(tmp_path / ".kubeplat-agent.json") == json.dumps(expected, sort_keys=True)
    assert files(tmp_path) == [".kubeplat-agent.json", "a.yaml", "a0.yaml", "b.yaml"]


def test_a_new_etag_for_the_same_bytes_rewrites_nothing(s3: RecordingS3, tmp_path: Path) -> None:
    put(s3, MANIFESTS + "a.yaml", b"a: 1\n")
    changed: list[str] = []
    agent = node_agent.Agent(s3, BUCKET, MANIFESTS, tmp_path, before_change=changed.append)
    agent.sync_once()
    os.utime(tmp_path / "a.yaml", (1_000_000, 1_000_000))
    inode = (tmp_path / "a.yaml").stat().st_ino
    changed.clear()
    s3.gets.clear()
    s3.reupload(MANIFESTS + "a.yaml")
    assert agent.sync_once() == []
    assert s3.gets == [MANIFESTS + "a.yaml"]  # fetched once to compare...
    assert changed == []
    assert (tmp_path / "a.yaml").stat().st_mtime == 1_000_000  # ...and left alone
    assert (tmp_path / "a.yaml").stat().st_ino == inode
    assert agent.applied() == {"a.yaml": s3.etag(MANIFESTS + "a.yaml")}  # the new ETag known
    s3.gets.clear()
    assert agent.sync_once() == [] and s3.gets == []


def test_a_file_deleted_by_hand_is_written_again(s3: RecordingS3, tmp_path: Path) -> None:
    put(s3, MANIFESTS + "a.yaml", b"a: 1\n")
    changed: list[str] = []
    agent = node_agent.Agent(s3, BUCKET, MANIFESTS, tmp_path, before_change=changed.append)
    agent.sync_once()
    (tmp_path / "a.yaml").unlink()
    s3.gets.clear()
    changed.clear()
    assert agent.sync_once() == ["+a.yaml"]
    assert s3.gets == [MANIFESTS + "a.yaml"] and changed == ["a.yaml"]
    assert (tmp_path / "a.yaml").read_bytes() == b"a: 1\n"


def test_removed_objects_remove_only_the_files_the_agent_wrote(
    s3: RecordingS3, tmp_path: Path
) -> None:
    (tmp_path / "not-ours.yaml").write_text("kind: Pod\n")
    os.utime(tmp_path / "not-ours.yaml", (1_000_000, 1_000_000))
    names = ["f.yaml", "c.yaml", "e.yaml", "a.yaml", "d.yaml", "b.yaml", "keep.yaml"]
    for name in names:
        put(s3, MANIFESTS + name, name.encode())
    changed: list[str] = []
    agent = node_agent.Agent(s3, BUCKET, MANIFESTS, tmp_path, before_change=changed.append)
    agent.sync_once()
    (tmp_path / "c.yaml").unlink()  # already gone by hand: still reported, no warning first
    for name in names[:-1]:
        s3.delete_object(Bucket=BUCKET, Key=MANIFESTS + name)
    changed.clear()
    s3.gets.clear()
    gone = ["-a.yaml", "-b.yaml", "-c.yaml", "-d.yaml", "-e.yaml", "-f.yaml"]
    assert agent.sync_once() == gone
    assert changed == ["a.yaml", "b.yaml", "d.yaml", "e.yaml", "f.yaml"]  # c.yaml was gone
    assert s3.gets == []
    assert files(tmp_path) == [".kubeplat-agent.json", "keep.yaml", "not-ours.yaml"]
    assert (tmp_path / "not-ours.yaml").read_text() == "kind: Pod\n"
    assert (tmp_path / "not-ours.yaml").stat().st_mtime == 1_000_000
    expected = {"keep.yaml": s3.etag(MANIFESTS + "keep.yaml")}
    assert state(tmp_path / ".kubeplat-agent.json") == json.dumps(expected)
    assert agent.sync_once() == []


def test_a_file_already_there_is_taken_over_and_replaced_only_when_it_differs(
    s3: RecordingS3, tmp_path: Path
) -> None:
    """The user-data stub wrote some files at boot: the same bytes stay, other bytes are
    replaced (`~`, not `+`), and from then on the agent owns both."""
    (tmp_path / "same.yaml").write_bytes(b"same\n")
    (tmp_path / "other.yaml").write_bytes(b"old\n")
    os.utime(tmp_path / "same.yaml", (1_000_000, 1_000_000))
    put(s3, MANIFESTS + "same.yaml", b"same\n")
    put(s3, MANIFESTS + "other.yaml", b"new\n")
    changed: list[str] = []
    agent = node_agent.Agent(s3, BUCKET, MANIFESTS, tmp_path, before_change=changed.append)
    assert agent.sync_once() == ["~other.yaml"]
    assert changed == ["other.yaml"]
    assert (tmp_path / "other.yaml").read_bytes() == b"new\n"
    assert (tmp_path / "same.yaml").stat().st_mtime == 1_000_000
    assert sorted(agent.applied()) == ["other.yaml", "same.yaml"]
    s3.delete_object(Bucket=BUCKET, Key=MANIFESTS + "same.yaml")
    assert agent.sync_once() == ["-same.yaml"]
    assert not (tmp_path / "same.yaml").exists()


def test_sub_folders_and_hidden_names_are_not_a_plain_agents(
    s3: RecordingS3, tmp_path: Path
) -> None:
    put(s3, MANIFESTS + "pod.yaml", b"pod\n")
    put(s3, MANIFESTS + "sub/nested.yaml", b"nested\n")
    put(s3, MANIFESTS + ".hidden.yaml", b"hidden\n")
    agent = node_agent.Agent(s3, BUCKET, MANIFESTS, tmp_path)
    assert agent.listing() == {"pod.yaml": s3.etag(MANIFESTS + "pod.yaml")}
    assert agent.sync_once() == ["+pod.yaml"]
    assert files(tmp_path) == [".kubeplat-agent.json", "pod.yaml"]


def test_a_pki_agent_keeps_sub_folders_and_writes_keys_and_secrets_0600(
    s3: RecordingS3, tmp_path: Path
) -> None:
    prefix = "dev/pki/secure/"
    bodies = {
        "apiserver.crt": 0o644,
        "apiserver.key": 0o600,
        "etcd/server.crt": 0o644,
        "etcd/server.key": 0o600,
        "bootstrap-token": 0o600,
        "encryption-config.yaml": 0o600,
        "encryption-config.yaml.txt": 0o644,
        "key.pub": 0o644,
        "token": 0o644,
    }
    for name in bodies:
        put(s3, prefix + name, name.encode())
    pki = tmp_path / "pki"
    agent = node_agent.Agent(s3, BUCKET, prefix, pki, tree=True)
    assert agent.sync_once() == ["+" + name for name in sorted(bodies)]
    assert {name: mode(pki / name) for name in bodies} == bodies
    assert (pki / "etcd/server.key").read_bytes() == b"etcd/server.key"
    assert mode(pki / "etcd") == 0o700  # a folder the agent makes for keys is private
    assert agent.state_path == pki / ".kubeplat-agent-secure.json"
    assert sorted(json.loads(agent.state_path.read_text())) == sorted(bodies)


def test_two_pki_prefixes_share_a_folder_each_with_its_own_state(
    s3: RecordingS3, tmp_path: Path
) -> None:
    put(s3, "dev/pki/common/ca.crt", b"ca\n")
    put(s3, "dev/pki/secure/apiserver.crt", b"apiserver\n")
    common = node_agent.Agent(s3, BUCKET, "dev/pki/common/", tmp_path, tree=True)
    secure = node_agent.Agent(s3, BUCKET, "dev/pki/secure", tmp_path, tree=True)  # no slash
    assert secure.prefix == "dev/pki/secure/" and common.prefix == "dev/pki/common/"
    assert common.state_path.name == ".kubeplat-agent-common.json"
    assert secure.state_path.name == ".kubeplat-agent-secure.json"
    assert common.sync_once() == ["+ca.crt"]
    assert secure.sync_once() == ["+apiserver.crt"]
    assert s3.lists == ["dev/pki/common/", "dev/pki/secure/"]
    # Neither removes what the other wrote.
    assert common.sync_once() == [] and secure.sync_once() == []
    assert files(tmp_path) == [
        ".kubeplat-agent-common.json",
        ".kubeplat-agent-secure.json",
        "apiserver.crt",
        "ca.crt",
    ]


def test_a_prefix_without_its_slash_is_the_folder_not_every_name_that_starts_so(
    s3: RecordingS3, tmp_path: Path
) -> None:
    put(s3, MANIFESTS + "a.yaml", b"a\n")
    put(s3, "dev/manifests/compute-old/b.yaml", b"b\n")
    agent = node_agent.Agent(s3, BUCKET, "dev/manifests/compute", tmp_path)
    assert agent.prefix == MANIFESTS
    assert agent.state_path == tmp_path / ".kubeplat-agent.json"
    assert agent.sync_once() == ["+a.yaml"]
    assert s3.lists == [MANIFESTS] and s3.gets == [MANIFESTS + "a.yaml"]
    kept = node_agent.Agent(s3, BUCKET, MANIFESTS, tmp_path)
    assert kept.prefix == MANIFESTS


def test_a_pass_with_a_listing_given_does_not_list_again(s3: RecordingS3, tmp_path: Path) -> None:
    put(s3, MANIFESTS + "a.yaml", b"a\n")
    put(s3, MANIFESTS + "b.yaml", b"b\n")
    agent = node_agent.Agent(s3, BUCKET, MANIFESTS, tmp_path)
    listing = {"b.yaml": s3.etag(MANIFESTS + "b.yaml")}
    assert agent.sync_once(listing) == ["+b.yaml"]
    assert s3.lists == []
    assert files(tmp_path) == [".kubeplat-agent.json", "b.yaml"]
    assert agent.sync_once({}) == ["-b.yaml"]


def test_the_target_folder_is_made_and_made_again_quietly(s3: RecordingS3, tmp_path: Path) -> None:
    target = tmp_path / "a/b/c"
    agent = node_agent.Agent(s3, BUCKET, MANIFESTS, target)
    assert agent.sync_once() == [] and agent.sync_once() == []
    assert target.is_dir()
    assert state(target / ".kubeplat-agent.json") == "{}"


def test_a_damaged_state_file_is_as_if_nothing_was_written(s3: RecordingS3, tmp_path: Path) -> None:
    put(s3, MANIFESTS + "a.yaml", b"a\n")
    agent = node_agent.Agent(s3, BUCKET, MANIFESTS, tmp_path)
    agent.sync_once()
    agent.state_path.write_text("{not json")
    assert agent.applied() == {}
    assert agent.sync_once() == []  # the same bytes: kept, and known again
    assert agent.applied() == {"a.yaml": s3.etag(MANIFESTS + "a.yaml")}
    agent.state_path.write_text('{"a.yaml": 5}')
    assert agent.applied() == {"a.yaml": "5"}


def test_without_a_before_change_a_plain_agent_still_writes_and_removes(
    s3: RecordingS3, tmp_path: Path
) -> None:
    put(s3, MANIFESTS + "a.yaml", b"a\n")
    agent = node_agent.Agent(s3, BUCKET, MANIFESTS, tmp_path)
    assert agent.tree is False and agent.fill is None
    assert agent.sync_once() == ["+a.yaml"]
    s3.delete_object(Bucket=BUCKET, Key=MANIFESTS + "a.yaml")
    assert agent.sync_once() == ["-a.yaml"]


def test_a_filled_manifests_state_remembers_the_pki_it_was_filled_from(
    s3: RecordingS3, tmp_path: Path
) -> None:
    pki = tmp_path / "pki"
    pki.mkdir()
    (pki / "ca.crt").write_bytes(b"ca 1\n")
    (pki / ".kubeplat-agent-common.json").write_text('{"ca.crt": "\\"1\\""}')
    put(s3, MANIFESTS + "pod.yaml", b'pki: "@PKI:ca.crt@"\n')
    target = tmp_path / "manifests"
    agent = node_agent.Agent(s3, BUCKET, MANIFESTS, target, fill=pki)
    assert agent.sync_once() == ["+pod.yaml"]
    filled = f'pki: "{fill_digest(pki, ["ca.crt"])}"\n'
    assert (target / "pod.yaml").read_text() == filled
    etag = s3.etag(MANIFESTS + "pod.yaml")
    context = node_agent.tree_digest(pki)
    assert state(agent.state_path) == json.dumps({"pod.yaml": f"{etag} {context}"})
    assert agent.applied() == {"pod.yaml": etag}  # what it runs: the bucket's ETag
    # The PKI's state changes (a new certificate): the manifest is looked at again.
    (pki / "ca.crt").write_bytes(b"ca 2\n")
    (pki / ".kubeplat-agent-common.json").write_text('{"ca.crt": "\\"2\\""}')
    s3.gets.clear()
    assert agent.sync_once() == ["~pod.yaml"]
    assert s3.gets == [MANIFESTS + "pod.yaml"]
    assert (target / "pod.yaml").read_text() == f'pki: "{fill_digest(pki, ["ca.crt"])}"\n'
    assert (target / "pod.yaml").read_text() != filled


# --- list_prefix, tree_digest, fill_placeholders, digest --------------------------------------


def test_listing_a_prefix_names_plain_files_across_pages(s3: RecordingS3) -> None:
    keys = [
        MANIFESTS,  # a folder marker
        MANIFESTS + "a.yaml",
        MANIFESTS + ".hidden",
        MANIFESTS + "sub/b.yaml",
        MANIFESTS + "sub/deeper/c.crt",
        MANIFESTS + "sub/.hidden",
        MANIFESTS + ".git/config",
        MANIFESTS + "sub/",
        MANIFESTS + "x//y",
        MANIFESTS + "z.yaml",
        "dev/manifests/other/q.yaml",
    ]
    for key in keys:
        put(s3, key, key.encode())
    flat = node_agent.list_prefix(s3, BUCKET, MANIFESTS)
    assert flat == {n: s3.etag(MANIFESTS + n) for n in ("a.yaml", "z.yaml")}
    tree = node_agent.list_prefix(s3, BUCKET, MANIFESTS, tree=True)
    names = ("a.yaml", "sub/b.yaml", "sub/deeper/c.crt", "z.yaml")
    assert tree == {n: s3.etag(MANIFESTS + n) for n in names}
    assert s3.lists == [MANIFESTS, MANIFESTS]


def test_listing_an_empty_prefix_is_empty(s3: RecordingS3) -> None:
    assert node_agent.list_prefix(s3, BUCKET, MANIFESTS) == {}
    assert node_agent.list_prefix(s3, BUCKET, MANIFESTS, tree=True) == {}


def test_the_tree_digest_is_of_the_agents_state_files_only(tmp_path: Path) -> None:
    assert node_agent.tree_digest(tmp_path) == hashlib.sha256(b"").hexdigest()[:16]
    (tmp_path / ".kubeplat-agent-secure.json").write_text('{"b": "2"}')
    (tmp_path / ".kubeplat-agent-common.json").write_text('{"a": "1"}')
    (tmp_path / ".kubeplat-restarts-owed.json").write_text('["etcd.service"]')
    (tmp_path / "ca.crt").write_text("ca\n")
    text = '.kubeplat-agent-common.json\0{"a": "1"}.kubeplat-agent-secure.json\0{"b": "2"}'
    expected = hashlib.sha256(text.encode()).hexdigest()[:16]
    assert node_agent.tree_digest(tmp_path) == expected
    (tmp_path / "ca.crt").write_text("another\n")
    (tmp_path / ".kubeplat-restarts-owed.json").write_text("[]")
    assert node_agent.tree_digest(tmp_path) == expected
    (tmp_path / ".kubeplat-agent-common.json").write_text('{"a": "3"}')
    assert node_agent.tree_digest(tmp_path) != expected


def test_a_placeholder_becomes_a_digest_of_the_files_it_names(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    (pki / "etcd").mkdir(parents=True)
    (pki / "ca.crt").write_bytes(b"ca\n")
    (pki / "etcd/ca.crt").write_bytes(b"etcd ca\n")
    body = b'a: "@PKI:ca.crt,etcd/ca.crt@"\nb: "@PKI:ca.crt@"\nc: 1\n'
    filled = node_agent.fill_placeholders(body, pki)
    both = fill_digest(pki, ["ca.crt", "etcd/ca.crt"])
    one = fill_digest(pki, ["ca.crt"])
    assert filled == f'a: "{both}"\nb: "{one}"\nc: 1\n'.encode()
    assert len(both) == 16 and both != one
    # Written out by hand once, so the rule itself is pinned, not only restated.
    ca = hashlib.sha256(b"ca\n").digest()
    assert one == hashlib.sha256(b"ca.crt\0" + ca).hexdigest()[:16]
    # Order and empty names do not matter.
    again = node_agent.fill_placeholders(b"@PKI:etcd/ca.crt,,ca.crt,@", pki)
    assert again == both.encode()
    assert (
        node_agent.fill_placeholders(b"@PKI:@", pki) == hashlib.sha256().hexdigest()[:16].encode()
    )


def test_absent_files_and_names_outside_the_folder_count_as_absent(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    (pki / "etcd").mkdir(parents=True)
    (tmp_path / "secret").write_bytes(b"outside\n")
    absent = hashlib.sha256(b"(absent)").digest()

    def absent_digest(name: str) -> bytes:
        return hashlib.sha256(name.encode() + b"\0" + absent).hexdigest()[:16].encode()

    fill = node_agent.fill_placeholders
    assert fill(b"@PKI:missing.crt@", pki) == absent_digest("missing.crt")
    assert fill(b"@PKI:../secret@", pki) == absent_digest("../secret")
    assert fill(b"@PKI:etcd@", pki) == absent_digest("etcd")  # a folder is not a file
    # An absolute name is outside too (joining the folder and it gives the absolute path: a
    # manifest could otherwise fingerprint any file root reads, e.g. /etc/shadow).
    name = str(tmp_path / "secret")
    assert fill(f"@PKI:{name}@".encode(), pki) == absent_digest(name)
    (pki / "a..b.crt").write_bytes(b"dots, not a way out\n")
    assert fill(b"@PKI:a..b.crt@", pki) != absent_digest("a..b.crt")
    (pki / "missing.crt").write_bytes(b"here now\n")
    assert fill(b"@PKI:missing.crt@", pki) != absent_digest("missing.crt")


def test_a_body_without_placeholders_is_returned_as_it_is(tmp_path: Path) -> None:
    body = b"kind: Pod\nnote: '@PKI without a colon, @PKI:unclosed'\n"
    plain = b"kind: Pod\n\xff not even text\n"
    assert node_agent.fill_placeholders(plain, tmp_path) is plain
    assert node_agent.fill_placeholders(body, tmp_path) == body  # "@PKI:" but nothing matched


def test_one_digest_names_a_set_on_every_node() -> None:
    listing = {"b.yaml": '"2"', "a.yaml": '"1"'}
    expected = hashlib.sha256(b'a.yaml "1"\nb.yaml "2"').hexdigest()
    assert node_agent.digest(listing) == expected
    assert node_agent.digest(dict(reversed(listing.items()))) == expected
    assert node_agent.digest({"b.yaml": '"3"', "a.yaml": '"1"'}) != expected
    assert node_agent.digest({}) == hashlib.sha256(b"").hexdigest()


# --- Sync: the PKI, then the manifests, then the restarts -------------------------------------

PKI_OBJECTS = {
    "dev/pki/common/ca.crt": b"ca 1\n",
    "dev/pki/common/etcd/ca.crt": b"etcd ca 1\n",
    "dev/pki/secure/apiserver.crt": b"apiserver 1\n",
    "dev/pki/secure/etcd/server.crt": b"etcd server 1\n",
    "dev/pki/secure/etcd/server.key": b"etcd server key 1\n",
}
RELOADS_BOTH = ["etcd.service", "kubelet.service"]
RELOADS = {
    "etcd.service": ("etcd/ca.crt", "etcd/server.crt", "etcd/server.key"),
    "kubelet.service": ("ca.crt",),
}
APISERVER = b'pki: "@PKI:apiserver.crt,ca.crt@"\n'
SCHEDULER = b"kind: Pod\n"


def secure_bucket(s3: RecordingS3) -> None:
    for key, body in PKI_OBJECTS.items():
        put(s3, key, body)
    put(s3, "dev/manifests/secure/kube-apiserver.yaml", APISERVER)
    put(s3, "dev/manifests/secure/kube-scheduler.yaml", SCHEDULER)


def booted(root: Path) -> None:
    """The PKI as the user-data stub wrote it at boot."""
    for key, body in PKI_OBJECTS.items():
        path = root / "pki" / key.split("/", 3)[3]
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.write_bytes(body)


def secure_node(s3: RecordingS3, root: Path, restart: Callable[[str], None]) -> node_agent.Sync:
    manifests = node_agent.Agent(s3, BUCKET, "dev/manifests/secure/", root / "manifests")
    pki = [
        node_agent.Agent(s3, BUCKET, f"dev/pki/{part}/", root / "pki", tree=True)
        for part in ("common", "secure")
    ]
    return node_agent.Sync(manifests, pki, RELOADS, restart)


def test_a_node_lists_and_reports_its_pki_and_manifests_under_one_name_each(
    s3: RecordingS3, tmp_path: Path
) -> None:
    secure_bucket(s3)
    booted(tmp_path)
    restarted: list[str] = []
    node = secure_node(s3, tmp_path, restarted.append)
    assert node.pending_path == tmp_path / "pki/.kubeplat-restarts-owed.json"
    assert node.manifests.fill == tmp_path / "pki"
    names = {
        "pki/common/ca.crt": "dev/pki/common/ca.crt",
        "pki/common/etcd/ca.crt": "dev/pki/common/etcd/ca.crt",
        "pki/secure/apiserver.crt": "dev/pki/secure/apiserver.crt",
        "pki/secure/etcd/server.crt": "dev/pki/secure/etcd/server.crt",
        "pki/secure/etcd/server.key": "dev/pki/secure/etcd/server.key",
        "manifests/kube-apiserver.yaml": "dev/manifests/secure/kube-apiserver.yaml",
        "manifests/kube-scheduler.yaml": "dev/manifests/secure/kube-scheduler.yaml",
    }
    listing = {name: s3.etag(key) for name, key in names.items()}
    assert node.listing() == listing
    assert node.applied() == {}
    # Boot: the PKI is what the stub wrote (nothing to restart); the manifests are new.
    assert node.sync_once() == ["+manifests/kube-apiserver.yaml", "+manifests/kube-scheduler.yaml"]
    assert restarted == [] and node.pending() == []
    assert node.applied() == listing
    apiserver = (tmp_path / "manifests/kube-apiserver.yaml").read_text()
    assert apiserver == f'pki: "{fill_digest(tmp_path / "pki", ["apiserver.crt", "ca.crt"])}"\n'
    assert (tmp_path / "manifests/kube-scheduler.yaml").read_bytes() == SCHEDULER
    s3.lists.clear()
    assert node.sync_once(listing) == []
    assert s3.lists == []  # the listing given is the one used


def test_a_changed_certificate_restarts_exactly_the_units_and_pods_that_read_it(
    s3: RecordingS3, tmp_path: Path, said: Callable[[], list[str]]
) -> None:
    secure_bucket(s3)
    booted(tmp_path)
    restarted: list[str] = []
    node = secure_node(s3, tmp_path, restarted.append)
    node.sync_once()
    manifests, pki = tmp_path / "manifests", tmp_path / "pki"
    os.utime(manifests / "kube-apiserver.yaml", (1_000_000, 1_000_000))
    os.utime(manifests / "kube-scheduler.yaml", (1_000_000, 1_000_000))

    # etcd's server certificate and key: etcd restarts, no pod is touched.
    put(s3, "dev/pki/secure/etcd/server.crt", b"etcd server 2\n")
    put(s3, "dev/pki/secure/etcd/server.key", b"etcd server key 2\n")
    assert node.sync_once() == ["~pki/secure/etcd/server.crt", "~pki/secure/etcd/server.key"]
    assert restarted == ["etcd.service"]
    assert said() == ["restarting etcd.service: a file it reads changed"]
    assert node.pending() == [] and node.pending_path.read_text() == "[]"
    assert mode(pki / "etcd/server.key") == 0o600 and mode(pki / "etcd/server.crt") == 0o644
    assert (manifests / "kube-apiserver.yaml").stat().st_mtime == 1_000_000

    # The API server's certificate: its manifest changes, the scheduler's does not; no unit.
    put(s3, "dev/pki/secure/apiserver.crt", b"apiserver 2\n")
    s3.gets.clear()
    assert node.sync_once() == ["~pki/secure/apiserver.crt", "~manifests/kube-apiserver.yaml"]
    assert restarted == ["etcd.service"]
    assert s3.gets == [
        "dev/pki/secure/apiserver.crt",
        "dev/manifests/secure/kube-apiserver.yaml",  # a changed PKI: both filled again
        "dev/manifests/secure/kube-scheduler.yaml",
    ]
    digest = fill_digest(pki, ["apiserver.crt", "ca.crt"])
    assert (manifests / "kube-apiserver.yaml").read_text() == f'pki: "{digest}"\n'
    assert (manifests / "kube-scheduler.yaml").stat().st_mtime == 1_000_000

    # A key the layer no longer holds leaves the node (and restarts what read it).
    s3.delete_object(Bucket=BUCKET, Key="dev/pki/secure/etcd/server.key")
    assert node.sync_once() == ["-pki/secure/etcd/server.key"]
    assert restarted == ["etcd.service", "etcd.service"]
    assert not (pki / "etcd/server.key").exists()
    assert node.sync_once() == []


def test_the_restart_owed_is_written_down_before_the_file_changes(
    s3: RecordingS3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secure_bucket(s3)
    booted(tmp_path)
    owed_when: list[tuple[str, list[str]]] = []
    during_restart: list[tuple[str, list[str]]] = []
    node = secure_node(s3, tmp_path, lambda unit: during_restart.append((unit, node.pending())))
    node.sync_once()
    real = node_agent._atomic_write

    def recording(path: Path, *args: Any) -> None:
        if path.suffix == ".crt":
            owed_when.append((path.name, node.pending()))  # what was owed before it changed
        real(path, *args)

    monkeypatch.setattr(node_agent, "_atomic_write", recording)
    put(s3, "dev/pki/common/ca.crt", b"ca 2\n")
    put(s3, "dev/pki/common/etcd/ca.crt", b"etcd ca 2\n")
    assert node.sync_once() == [
        "~pki/common/ca.crt",
        "~pki/common/etcd/ca.crt",
        "~manifests/kube-apiserver.yaml",
    ]
    assert owed_when == [("ca.crt", ["kubelet.service"]), ("ca.crt", RELOADS_BOTH)]
    assert during_restart == [
        ("etcd.service", ["etcd.service", "kubelet.service"]),  # restarted one at a time,
        ("kubelet.service", ["kubelet.service"]),  # each crossed off when done
    ]
    assert node.pending_path.read_text() == "[]"


def test_a_restart_owed_when_the_agent_died_is_done_when_it_starts_again(
    s3: RecordingS3, tmp_path: Path
) -> None:
    secure_bucket(s3)
    booted(tmp_path)
    restarted: list[str] = []
    secure_node(s3, tmp_path, restarted.append).sync_once()
    put(s3, "dev/pki/common/etcd/ca.crt", b"etcd ca 2\n")

    def killed(unit: str) -> None:
        raise KeyboardInterrupt  # the agent dies between writing the file and the restart

    with pytest.raises(KeyboardInterrupt):
        secure_node(s3, tmp_path, killed).sync_once()
    assert (tmp_path / "pki/etcd/ca.crt").read_bytes() == b"etcd ca 2\n"
    assert json.loads((tmp_path / "pki/.kubeplat-restarts-owed.json").read_text()) == [
        "etcd.service"
    ]
    again = secure_node(s3, tmp_path, restarted.append)
    assert again.pending() == ["etcd.service"]
    assert again.sync_once() == []  # nothing left to write, but the restart is owed
    assert restarted == ["etcd.service"]
    assert again.pending() == []


def test_a_restart_already_owed_is_not_written_again(tmp_path: Path) -> None:
    manifests = node_agent.Agent(None, BUCKET, "m/", tmp_path / "manifests")
    pki = node_agent.Agent(None, BUCKET, "dev/pki/secure/", tmp_path / "etc/kubernetes/pki")
    node = node_agent.Sync(manifests, [pki], RELOADS, lambda unit: None)
    assert pki.before_change == node._owe
    pki.before_change("apiserver.crt")  # read by no unit: nothing owed, nothing written
    assert not node.pending_path.exists()
    pki.before_change("etcd/server.crt")  # the folder is not there yet
    assert node.pending_path.read_text() == '["etcd.service"]'
    inode = node.pending_path.stat().st_ino
    pki.before_change("etcd/server.key")
    assert node.pending_path.stat().st_ino == inode
    pki.before_change("ca.crt")
    assert node.pending_path.read_text() == '["etcd.service", "kubelet.service"]'


@pytest.mark.parametrize(
    ("text", "owed"),
    [
        ('["kubelet.service", "etcd.service"]', ["etcd.service", "kubelet.service"]),
        ("[]", []),
        ("{damaged", []),
        ("5", []),
    ],
)
def test_restarts_owed_are_read_sorted_and_a_damaged_list_is_none(
    tmp_path: Path, text: str, owed: list[str]
) -> None:
    manifests = node_agent.Agent(None, BUCKET, "m/", tmp_path / "manifests")
    pki = node_agent.Agent(None, BUCKET, "p/", tmp_path)
    node = node_agent.Sync(manifests, [pki], {}, lambda unit: None)
    assert node.pending() == []  # no file yet
    node.pending_path.write_text(text)
    assert node.pending() == owed


def test_a_node_without_pki_keeps_its_manifests_as_they_are(
    s3: RecordingS3, tmp_path: Path, said: Callable[[], list[str]], certs: dict[str, Any]
) -> None:
    """No PKI: no placeholders filled, no restarts owed, and no kubelet CA to judge the
    kubelet's certificate by (it is left alone, even one a retired CA signed, however old)."""
    put(s3, MANIFESTS + "pod.yaml", b'pki: "@PKI:ca.crt@"\n')
    manifests = node_agent.Agent(s3, BUCKET, MANIFESTS, tmp_path)
    restarted: list[str] = []
    client = link(tmp_path, "client", pem(certs["old-leaf"][0]))
    node = node_agent.Sync(manifests, [], RELOADS, restarted.append, client)
    assert node.pending_path == tmp_path / ".kubeplat-restarts-owed.json"
    assert manifests.fill is None
    assert (node.ssh_user, node.root, node.kubelet_serving) == ("", Path("/"), None)
    assert node.sync_once() == ["+manifests/pod.yaml"]
    assert (tmp_path / "pod.yaml").read_bytes() == b'pki: "@PKI:ca.crt@"\n'
    assert node.kubelet_client_state() == ""
    node.renew_kubelet_client()
    assert restarted == [] and said() == [] and client.is_symlink()


# --- SSH keys ---------------------------------------------------------------------------------


def ssh_node(tmp_path: Path, user: str = "core", pki: bool = True) -> node_agent.Sync:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True, exist_ok=True)
    (root / "home/core").mkdir(parents=True, exist_ok=True)
    passwd = f"core:x:{os.getuid()}:{os.getgid()}:core:/home/core:/bin/sh\n"
    (root / "etc/passwd").write_text(passwd)
    manifests = node_agent.Agent(None, BUCKET, "m/", tmp_path / "manifests")
    agents = [node_agent.Agent(None, BUCKET, "dev/pki/common/", tmp_path / "pki", tree=True)]
    return node_agent.Sync(
        manifests, agents if pki else [], {}, lambda unit: None, ssh_user=user, root=root
    )


def test_the_node_users_ssh_keys_follow_the_pki_and_a_failure_is_said_once(
    tmp_path: Path, said: Callable[[], list[str]]
) -> None:
    node = ssh_node(tmp_path)
    authorized = tmp_path / "root/home/core/.ssh/authorized_keys"
    missing = tmp_path / "pki/ssh/authorized_keys"
    problem = f"SSH keys of core not installed: no keys to install: {missing}: "
    node.install_ssh_keys()
    node.install_ssh_keys()
    assert said() == [problem + "No such file or directory"]
    missing.parent.mkdir(parents=True)
    missing.write_bytes(b"ssh-ed25519 AAAA one\n# a comment\nssh-ed25519 AAAA two\n")
    node.install_ssh_keys()
    node.install_ssh_keys()  # the same keys: nothing to say
    assert authorized.read_bytes() == missing.read_bytes()
    assert said()[1:] == ["installed home/core/.ssh/authorized_keys: 2 key(s)"]
    missing.unlink()
    node.install_ssh_keys()  # failing again after a success: said again
    assert said()[2:] == [problem + "No such file or directory"]


def test_ssh_keys_are_left_alone_without_a_user_or_a_pki(
    tmp_path: Path, said: Callable[[], list[str]]
) -> None:
    (tmp_path / "pki/ssh").mkdir(parents=True)
    (tmp_path / "pki/ssh/authorized_keys").write_bytes(b"ssh-ed25519 AAAA one\n")
    ssh_node(tmp_path, user="").install_ssh_keys()
    ssh_node(tmp_path, pki=False).install_ssh_keys()
    assert said() == []
    assert not (tmp_path / "root/home/core/.ssh").exists()


def test_a_pass_installs_the_ssh_keys(s3: RecordingS3, tmp_path: Path) -> None:
    node = ssh_node(tmp_path)
    node.manifests.client = s3
    for agent in node.pki:
        agent.client = s3
    put(s3, "dev/pki/common/ssh/authorized_keys", b"ssh-ed25519 AAAA one\n")
    assert node.sync_once() == ["+pki/common/ssh/authorized_keys"]
    keys = tmp_path / "root/home/core/.ssh/authorized_keys"
    assert keys.read_bytes() == b"ssh-ed25519 AAAA one\n"


# --- certificates: key ids and the kubelet's certificates -------------------------------------


def issue(
    name: str,
    signer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None,
    *,
    ca: bool = False,
    ski: bool = True,
    aki: str = "keyid",
    aki_critical: bool = False,
    ip: str = "",
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_key = signer[1] if signer else key
    now = dt.datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(signer[0].subject if signer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
    )
    if ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
    if ski:
        identifier = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        builder = builder.add_extension(identifier, critical=False)
    if aki == "keyid":
        authority = x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key())
        builder = builder.add_extension(authority, critical=aki_critical)
    elif aki == "issuer":
        issuer_name = signer[0].subject if signer else subject
        authority = x509.AuthorityKeyIdentifier(None, [x509.DirectoryName(issuer_name)], 1)
        builder = builder.add_extension(authority, critical=False)
    if ip:
        names = [x509.IPAddress(ipaddress.ip_address(ip))]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(issuer_key, hashes.SHA256()), key


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def ski_of(cert: x509.Certificate) -> bytes:
    return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest


@pytest.fixture(scope="module")
def certs() -> dict[str, Any]:
    old_ca = issue("kubelet-ca old", ca=True)
    new_ca = issue("kubelet-ca new", ca=True)
    return {
        "old-ca": old_ca,
        "new-ca": new_ca,
        "old-leaf": issue("system:node:a", old_ca),
        "new-leaf": issue("system:node:a", new_ca),
        "no-aki-leaf": issue("system:node:a", new_ca, aki=""),
        "issuer-aki-leaf": issue("system:node:a", new_ca, aki="issuer"),
        "critical-aki-leaf": issue("system:node:a", new_ca, aki_critical=True),
        "no-ski-ca": issue("kubelet-ca bare", ca=True, ski=False, aki=""),
        "server": issue("127.0.0.1", new_ca, ip="127.0.0.1"),
        "client": issue("healthcheck", new_ca),
    }


def test_key_ids_are_read_from_the_certificate_as_an_x509_library_writes_them(
    certs: dict[str, Any],
) -> None:
    ca, _ = certs["new-ca"]
    leaf, leaf_key = certs["new-leaf"]
    assert node_agent.key_ids(pem(ca)) == (ski_of(ca), ski_of(ca))  # self-signed
    assert node_agent.key_ids(pem(leaf)) == (ski_of(leaf), ski_of(ca))
    assert node_agent.key_ids(pem(leaf))[1] == node_agent.key_ids(pem(ca))[0]
    old_leaf, _ = certs["old-leaf"]
    assert node_agent.key_ids(pem(old_leaf))[1] == ski_of(certs["old-ca"][0])
    # kubelet-client-current.pem holds the certificate, then its key.
    assert node_agent.key_ids(pem(leaf) + key_pem(leaf_key)) == (ski_of(leaf), ski_of(ca))
    critical, _ = certs["critical-aki-leaf"]
    assert node_agent.key_ids(pem(critical)) == (ski_of(critical), ski_of(ca))


def test_key_ids_absent_or_unreadable_are_none(certs: dict[str, Any]) -> None:
    no_aki, _ = certs["no-aki-leaf"]
    assert node_agent.key_ids(pem(no_aki)) == (ski_of(no_aki), None)
    by_issuer, _ = certs["issuer-aki-leaf"]  # names its issuer, not the issuer's key
    assert node_agent.key_ids(pem(by_issuer)) == (ski_of(by_issuer), None)
    assert node_agent.key_ids(pem(certs["no-ski-ca"][0])) == (None, None)
    assert node_agent.key_ids(b"not a certificate") == (None, None)
    bad = b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n"
    assert node_agent.key_ids(bad) == (None, None)
    assert node_agent.key_ids(key_pem(certs["new-leaf"][1])) == (None, None)


def test_the_der_reader_gives_none_for_truncated_or_odd_extensions() -> None:
    oid = b"\x06\x03\x55\x1d\x0e"
    assert node_agent._extension(b"\x30\x00", oid) is None  # not there
    assert node_agent._extension(b"\x30\x05" + oid, oid) is None  # nothing after it
    assert node_agent._extension(oid + b"\x01\x01\xff", oid) is None  # critical, then nothing
    assert node_agent._extension(oid + b"\x05\x00", oid) is None  # not an OCTET STRING
    assert node_agent._extension(oid + b"\x04\x02\x04\x00", oid) == b"\x04\x00"
    assert node_agent._extension(oid + b"\x01\x01\xff\x04\x01\x07", oid) == b"\x07"
    assert node_agent._extension(oid + b"\x04\x05\x04", oid) is None  # truncated
    assert node_agent._tlv(b"\x04\x02ab", 0) == b"ab"
    assert node_agent._tlv(b"\x04", 0) is None


def kubelet_node(
    tmp_path: Path, ca: x509.Certificate | None, restart: Callable[[str], None]
) -> node_agent.Sync:
    pki = tmp_path / "pki"
    pki.mkdir(exist_ok=True)
    if ca is not None:
        (pki / "kubelet-ca.crt").write_bytes(pem(ca))
    manifests = node_agent.Agent(None, BUCKET, "m/", tmp_path / "manifests")
    agents = [node_agent.Agent(None, BUCKET, "dev/pki/common/", pki, tree=True)]
    return node_agent.Sync(manifests, agents, {}, restart)


def link(tmp_path: Path, kind: str, cert: bytes, mtime: float = 1_000_000.0) -> Path:
    """The kubelet's `kubelet-KIND-current.pem`: a symbolic link to a dated file."""
    folder = tmp_path / "var/lib/kubelet/pki"
    folder.mkdir(parents=True, exist_ok=True)
    dated = folder / f"kubelet-{kind}-{mtime:.0f}.pem"
    dated.write_bytes(cert)
    current = folder / f"kubelet-{kind}-current.pem"
    current.unlink(missing_ok=True)
    current.symlink_to(dated.name)
    os.utime(current, (mtime, mtime), follow_symlinks=False)
    return current


@pytest.mark.parametrize(
    ("client", "serving", "told"),
    [
        ("new-leaf", None, "current"),
        ("old-leaf", None, "old"),
        (None, "old-leaf", "old"),
        ("new-leaf", "old-leaf", "old"),
        ("old-leaf", "new-leaf", "old"),
        ("new-leaf", "new-leaf", "current"),
        ("new-leaf", "missing", "current"),
        ("missing", None, ""),
        ("no-aki-leaf", None, ""),
        (None, None, ""),
    ],
)
def test_the_node_tells_whether_its_kubelets_certificates_are_of_the_current_kubelet_ca(
    tmp_path: Path, certs: dict[str, Any], client: str | None, serving: str | None, told: str
) -> None:
    node = kubelet_node(tmp_path, certs["new-ca"][0], lambda unit: None)
    for kind, which in (("client", client), ("serving", serving)):
        if which is None:
            continue
        path = tmp_path / f"{kind}.pem"
        if which != "missing":
            path = link(tmp_path, kind, pem(certs[which][0]))
        setattr(node, f"kubelet_{kind}", path)
    assert node.kubelet_client_state() == told


def test_without_a_kubelet_ca_or_its_key_id_nothing_is_told(
    tmp_path: Path, certs: dict[str, Any]
) -> None:
    node = kubelet_node(tmp_path, None, lambda unit: None)
    node.kubelet_client = link(tmp_path, "client", pem(certs["old-leaf"][0]))
    assert node.kubelet_client_state() == ""
    node = kubelet_node(tmp_path, certs["no-ski-ca"][0], lambda unit: None)
    node.kubelet_client = link(tmp_path, "client", pem(certs["old-leaf"][0]))
    assert node.kubelet_client_state() == ""
    node.renew_kubelet_client()
    assert node.kubelet_client.is_symlink()


def test_a_kubelet_certificate_of_a_retired_kubelet_ca_is_asked_for_again_every_ten_minutes(
    tmp_path: Path, certs: dict[str, Any], clock: Clock, said: Callable[[], list[str]]
) -> None:
    restarted: list[str] = []
    node = kubelet_node(tmp_path, certs["new-ca"][0], restarted.append)
    old = pem(certs["old-leaf"][0])
    node.kubelet_client = link(tmp_path, "client", old, clock.wall - 599)
    node.renew_kubelet_client()  # asked for less than KUBELET_RETRY_S ago: not yet
    assert restarted == [] and node.kubelet_client.is_symlink()
    node.kubelet_client = link(tmp_path, "client", old, clock.wall - 600)
    node.renew_kubelet_client()
    assert restarted == ["kubelet.service"]
    assert not node.kubelet_client.is_symlink()
    assert (tmp_path / f"var/lib/kubelet/pki/kubelet-client-{clock.wall - 600:.0f}.pem").exists()
    assert said() == [
        "restarting kubelet.service: its client certificate is signed by a kubelet CA that "
        "is being retired; it asks for a new one"
    ]
    node.renew_kubelet_client()  # gone: nothing more to do
    assert restarted == ["kubelet.service"]


def test_both_kubelet_certificates_of_a_retired_kubelet_ca_cost_one_restart(
    tmp_path: Path, certs: dict[str, Any], clock: Clock, said: Callable[[], list[str]]
) -> None:
    restarted: list[str] = []
    node = kubelet_node(tmp_path, certs["new-ca"][0], restarted.append)
    old, new = pem(certs["old-leaf"][0]), pem(certs["new-leaf"][0])
    node.kubelet_client = link(tmp_path, "client", old, clock.wall - 3600)
    node.kubelet_serving = link(tmp_path, "serving", old, clock.wall - 3600)
    node.renew_kubelet_client()
    assert restarted == ["kubelet.service"]
    assert said() == [
        "restarting kubelet.service: its client and serving certificate is signed by a "
        "kubelet CA that is being retired; it asks for a new one"
    ]
    node.kubelet_client = link(tmp_path, "client", new, clock.wall - 3600)
    node.kubelet_serving = link(tmp_path, "serving", new, clock.wall - 3600)
    node.renew_kubelet_client()  # current ones are never removed, however old
    assert restarted == ["kubelet.service"]
    assert node.kubelet_client.is_symlink() and node.kubelet_serving.is_symlink()


def test_a_pass_renews_an_old_kubelet_certificate(
    s3: RecordingS3, tmp_path: Path, certs: dict[str, Any], clock: Clock
) -> None:
    put(s3, "dev/pki/common/kubelet-ca.crt", pem(certs["new-ca"][0]))
    restarted: list[str] = []
    manifests = node_agent.Agent(s3, BUCKET, MANIFESTS, tmp_path / "manifests")
    pki = [node_agent.Agent(s3, BUCKET, "dev/pki/common/", tmp_path / "pki", tree=True)]
    current = link(tmp_path, "client", pem(certs["old-leaf"][0]), clock.wall - 600)
    node = node_agent.Sync(manifests, pki, {}, restarted.append, current)
    assert node.sync_once() == ["+pki/common/kubelet-ca.crt"]
    assert restarted == ["kubelet.service"] and not current.is_symlink()


# --- Roll: taking turns -----------------------------------------------------------------------


def manifests_agent(s3: RecordingS3, tmp_path: Path, body: bytes = b"v: 1\n") -> Any:
    put(s3, MANIFESTS + "a.yaml", body)
    return node_agent.Agent(s3, BUCKET, MANIFESTS, tmp_path / "manifests")


def test_a_roll_starts_with_no_report_and_waits_five_minutes_for_readiness() -> None:
    roll = node_agent.Roll(list, RecordingStatus("i-a"), "i-a", lambda: True)
    assert (roll.ready_timeout_s, roll.poll_s, roll.last_report) == (300.0, 2.0, 0.0)
    assert roll.facts() == {} and roll.waiting_for == ("", [])


def test_the_first_set_at_boot_is_applied_at_once_even_while_earlier_nodes_are_busy(
    s3: RecordingS3, tmp_path: Path, clock: Clock, said: Callable[[], list[str]]
) -> None:
    agent = manifests_agent(s3, tmp_path)
    status = RecordingStatus("i-b")
    status.peer("i-a", "an older set", ready=False)
    roll = node_agent.Roll(lambda: ["i-a", "i-b"], status, "i-b", lambda: True)
    roll.step(agent)
    wanted = node_agent.digest(agent.listing())
    assert (tmp_path / "manifests/a.yaml").read_bytes() == b"v: 1\n"
    assert said() == ["synced +a.yaml", f"set {wanted[:12]} applied; this node ready"]
    assert status.published == [("manifests", {"digest": wanted, "ready": True, "updated": STAMP})]
    assert roll.last_report == clock.now
    assert s3.lists == [MANIFESTS, MANIFESTS]  # one for the step, one for `wanted` above


def test_a_changed_set_waits_its_turn_and_says_so_once(
    s3: RecordingS3, tmp_path: Path, clock: Clock, said: Callable[[], list[str]]
) -> None:
    agent = manifests_agent(s3, tmp_path)
    agent.sync_once()
    running = node_agent.digest(agent.applied())
    put(s3, MANIFESTS + "a.yaml", b"v: 2\n")
    wanted = node_agent.digest(agent.listing())
    status = RecordingStatus("i-c")
    status.peer("i-a", running, ready=True)  # runs the old set
    status.peer("i-b", wanted, ready=False)  # runs the new one, not ready yet
    status.peer("i-c", running, ready=True)  # this node's own last report
    status.peer("i-d", running, ready=True)  # after this node: never waited for
    roll = node_agent.Roll(lambda: ["i-d", "i-a", "i-c", "i-b"], status, "i-c", lambda: True)

    roll.step(agent)
    clock.now += 10
    roll.step(agent)
    waiting = f"new manifests {wanted[:12]}: waiting for "
    assert said() == [waiting + "i-a, i-b"]  # once, not every pass
    assert roll.waiting_for == (wanted, ["i-a", "i-b"])
    assert (tmp_path / "manifests/a.yaml").read_bytes() == b"v: 1\n"
    # While it waits it reports what it runs (a heartbeat, not every pass).
    assert status.published == [("manifests", {"digest": running, "ready": True, "updated": STAMP})]

    status.peer("i-a", wanted, ready=True)
    roll.step(agent)
    assert said()[1:] == [waiting + "i-b"]

    status.peer("i-b", wanted, ready=False, age_s=301)  # silent too long: not waited for
    roll.step(agent)
    assert said()[2:] == ["synced ~a.yaml", f"set {wanted[:12]} applied; this node ready"]
    assert roll.waiting_for == (wanted, [])
    assert (tmp_path / "manifests/a.yaml").read_bytes() == b"v: 2\n"
    assert status.published[-1] == (
        "manifests",
        {"digest": wanted, "ready": True, "updated": STAMP},
    )


def test_a_node_never_waits_for_itself_or_for_the_nodes_after_it(
    s3: RecordingS3, tmp_path: Path, clock: Clock, said: Callable[[], list[str]]
) -> None:
    agent = manifests_agent(s3, tmp_path)
    agent.sync_once()
    running = node_agent.digest(agent.applied())
    put(s3, MANIFESTS + "a.yaml", b"v: 2\n")
    status = RecordingStatus("i-b")
    status.peer("i-b", running, ready=True)
    status.peer("i-c", running, ready=False)
    roll = node_agent.Roll(lambda: ["i-c", "i-b"], status, "i-b", lambda: True)
    roll.step(agent)
    assert (tmp_path / "manifests/a.yaml").read_bytes() == b"v: 2\n"
    assert not [line for line in said() if "waiting" in line]


@pytest.mark.parametrize(
    ("report", "waited_for"),
    [
        (None, False),  # never reported
        ({"digest": "WANTED", "ready": True, "updated": "FRESH"}, False),
        ({"digest": "WANTED", "ready": False, "updated": "FRESH"}, True),
        ({"digest": "older", "ready": True, "updated": "FRESH"}, True),
        ({"digest": "older", "ready": False, "updated": "2026-12-05T11:55:00Z"}, True),
        ({"digest": "older", "ready": False, "updated": "2026-12-05T11:54:59Z"}, False),
        ({"digest": "older", "ready": False, "updated": "yesterday"}, False),
        ({"digest": "older", "ready": False}, False),
    ],
)
def test_an_earlier_node_is_waited_for_while_it_reports_and_does_not_run_the_set_ready(
    clock: Clock, report: dict[str, Any] | None, waited_for: bool
) -> None:
    status = RecordingStatus("i-b")
    if report is not None:
        filled = {k: {"WANTED": "w" * 64, "FRESH": STAMP}.get(v, v) for k, v in report.items()}
        status.reports[("i-a", "manifests")] = filled
    roll = node_agent.Roll(lambda: ["i-a", "i-b"], status, "i-b", lambda: True)
    assert roll._blockers("w" * 64) == (["i-a"] if waited_for else [])


def test_a_layer_without_manifests_yet_reports_that_it_runs_the_empty_set(
    s3: RecordingS3, tmp_path: Path, clock: Clock, said: Callable[[], list[str]]
) -> None:
    agent = node_agent.Agent(s3, BUCKET, MANIFESTS, tmp_path / "manifests")
    status = RecordingStatus("i-a")
    roll = node_agent.Roll(list, status, "i-a", lambda: True)
    roll.step(agent)
    empty = hashlib.sha256(b"").hexdigest()
    assert said() == []  # in step with an empty layer: nothing applied, nothing to say
    assert status.published == [("manifests", {"digest": empty, "ready": True, "updated": STAMP})]
    roll.step(agent)  # and not applied again every pass: a heartbeat once a minute
    assert len(status.published) == 1 and said() == []


def test_a_node_in_step_reports_once_a_minute(
    s3: RecordingS3, tmp_path: Path, clock: Clock, said: Callable[[], list[str]]
) -> None:
    agent = manifests_agent(s3, tmp_path)
    answers = [True, False]
    facts = {"kubelet_client": "old", "digest": "not this"}
    status = RecordingStatus("i-a")
    roll = node_agent.Roll(
        lambda: ["i-a"], status, "i-a", lambda: answers.pop(0), facts=lambda: facts
    )
    roll.step(agent)  # boot: applied and reported
    wanted = node_agent.digest(agent.listing())
    first = {"kubelet_client": "old", "digest": wanted, "ready": True, "updated": STAMP}
    assert status.published == [("manifests", first)]
    clock.now += 59
    roll.step(agent)
    assert len(status.published) == 1
    clock.now += 1
    roll.step(agent)
    again = {"kubelet_client": "old", "digest": wanted, "ready": False, "updated": STAMP}
    assert status.published == [("manifests", first), ("manifests", again)]
    assert roll.last_report == clock.now
    assert said() == ["synced +a.yaml", f"set {wanted[:12]} applied; this node ready"]


def test_an_in_step_node_after_a_restart_reports_at_once(
    s3: RecordingS3, tmp_path: Path, clock: Clock
) -> None:
    agent = manifests_agent(s3, tmp_path)
    agent.sync_once()
    status = RecordingStatus("i-a")
    clock.now = 60.0  # a freshly booted machine's monotonic clock
    node_agent.Roll(list, status, "i-a", lambda: True).step(agent)
    wanted = node_agent.digest(agent.listing())
    assert status.published == [("manifests", {"digest": wanted, "ready": True, "updated": STAMP})]


def test_after_applying_a_set_the_node_waits_for_its_api_server(
    s3: RecordingS3, tmp_path: Path, clock: Clock, said: Callable[[], list[str]]
) -> None:
    agent = manifests_agent(s3, tmp_path)
    answers = [False, False, True]
    status = RecordingStatus("i-a")
    node_agent.Roll(list, status, "i-a", lambda: answers.pop(0)).step(agent)
    assert clock.slept == [2.0, 2.0]
    wanted = node_agent.digest(agent.listing())
    assert said()[-1] == f"set {wanted[:12]} applied; this node ready"
    assert status.published[-1][1]["ready"] is True


def test_an_api_server_that_does_not_come_back_is_reported_not_ready(
    s3: RecordingS3, tmp_path: Path, clock: Clock, said: Callable[[], list[str]]
) -> None:
    agent = manifests_agent(s3, tmp_path)
    asked: list[float] = []
    status = RecordingStatus("i-a")

    def ready() -> bool:
        asked.append(clock.now)
        return False

    roll = node_agent.Roll(list, status, "i-a", ready, ready_timeout_s=3.0, poll_s=1.5)
    roll.step(agent)
    assert asked == [1000.0, 1001.5]  # not again at the deadline
    assert clock.slept == [1.5, 1.5]
    wanted = node_agent.digest(agent.listing())
    assert said()[-1] == f"set {wanted[:12]} applied; this node NOT ready"
    assert status.published == [("manifests", {"digest": wanted, "ready": False, "updated": STAMP})]


def test_a_restart_owed_in_this_nodes_turn_finishes_the_turn(
    s3: RecordingS3, tmp_path: Path, clock: Clock, said: Callable[[], list[str]]
) -> None:
    secure_bucket(s3)
    booted(tmp_path)
    restarted: list[str] = []
    node = secure_node(s3, tmp_path, restarted.append)
    node.sync_once()
    node.pending_path.write_text('["etcd.service"]')  # the agent died before the restart
    status = RecordingStatus("i-b")
    status.peer("i-a", "an older set", ready=False)  # would block a new set, not this
    roll = node_agent.Roll(lambda: ["i-a", "i-b"], status, "i-b", lambda: True)
    s3.lists.clear()
    roll.step(node)
    wanted = node_agent.digest(node.listing())
    assert restarted == ["etcd.service"] and node.pending() == []
    assert said() == [
        "restarting etcd.service: a file it reads changed",
        f"set {wanted[:12]} applied; this node ready",
    ]
    assert status.published == [("manifests", {"digest": wanted, "ready": True, "updated": STAMP})]
    assert len(s3.lists) == 3 + 3  # the step's listing (used for the pass) and `wanted`'s


def test_every_step_of_a_node_gives_its_kubelet_certificates_a_chance(
    s3: RecordingS3, tmp_path: Path, clock: Clock
) -> None:
    secure_bucket(s3)
    booted(tmp_path)
    node = secure_node(s3, tmp_path, lambda unit: None)
    node.sync_once()
    renewals: list[bool] = []
    node.renew_kubelet_client = lambda: renewals.append(True)  # type: ignore[method-assign]
    roll = node_agent.Roll(list, RecordingStatus("i-a"), "i-a", lambda: True)
    roll.step(node)
    roll.step(node)
    assert renewals == [True, True]


# --- run: the loop ----------------------------------------------------------------------------


def stopped_after(passes: int, monkeypatch: pytest.MonkeyPatch, times: list[float]) -> list[float]:
    """Stand-ins for the agent's signal and time modules: SIGTERM arrives during the sleep
    after `passes` passes; returns the sleeps."""
    handlers: dict[int, Any] = {}
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        if len(slept) == passes:
            handlers[signal.SIGTERM](signal.SIGTERM, None)

    monkeypatch.setattr(
        node_agent,
        "signal",
        SimpleNamespace(SIGTERM=signal.SIGTERM, signal=handlers.__setitem__),
    )
    ticks = iter(times)
    monkeypatch.setattr(
        node_agent, "time", SimpleNamespace(monotonic=lambda: next(ticks), sleep=sleep)
    )
    return slept


def test_the_agent_syncs_every_interval_survives_a_failed_pass_and_stops_on_sigterm(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kubeplat-agent")
    slept = stopped_after(2, monkeypatch, [100.0, 103.0, 200.0, 215.0])
    outcomes: list[Any] = [["+a.yaml", "~b.yaml"], RuntimeError("bucket unreachable")]

    class Syncer:
        def sync_once(self) -> list[str]:
            outcome = outcomes.pop(0)
            if isinstance(outcome, Exception):
                raise outcome
            return list(outcome)

    node_agent.run(Syncer(), 10.0)  # type: ignore[arg-type]
    assert slept == [7.0, 0.0]  # the rest of the interval; none after a long pass
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("INFO", "synced +a.yaml"),
        ("INFO", "synced ~b.yaml"),
        ("WARNING", "sync failed: bucket unreachable"),
    ]


def test_a_rolling_agent_steps_its_roll_instead(monkeypatch: pytest.MonkeyPatch) -> None:
    slept = stopped_after(1, monkeypatch, [0.0, 1.0])
    stepped: list[Any] = []
    syncer = SimpleNamespace(sync_once=lambda: pytest.fail("synced outside the roll"))
    node_agent.run(syncer, 10.0, SimpleNamespace(step=stepped.append))  # type: ignore[arg-type]
    assert stepped == [syncer] and slept == [9.0]


# --- small parts ------------------------------------------------------------------------------


def test_report_times_are_read_as_utc_and_anything_else_is_none() -> None:
    parsed = node_agent._parse_time("2026-12-05T12:00:00Z")
    assert parsed == NOW and parsed is not None and parsed.tzinfo == UTC
    for text in (None, "", "2026-12-05 12:00:00", "2026-12-05T12:00:00", "yesterday", 5):
        assert node_agent._parse_time(text) is None


def test_a_file_is_written_whole_with_its_mode_and_no_temporary_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[tuple[str, str]] = []
    real = node_agent.tempfile.mkstemp

    def mkstemp(*, prefix: str, dir: str) -> tuple[int, str]:
        made.append((prefix, dir))
        return real(prefix=prefix, dir=dir)

    monkeypatch.setattr(node_agent, "tempfile", SimpleNamespace(mkstemp=mkstemp))
    target = tmp_path / "etc/kubernetes/pki/etcd/server.key"
    node_agent._atomic_write(target, b"key\n", 0o600)
    assert target.read_bytes() == b"key\n" and mode(target) == 0o600
    assert mode(target.parent) == 0o700
    assert made == [(".server.key.", str(target.parent))]  # hidden from the kubelet
    node_agent._atomic_write(target, b"key 2\n")
    assert target.read_bytes() == b"key 2\n" and mode(target) == 0o644
    assert files(tmp_path) == ["etc/kubernetes/pki/etcd/server.key"]


def test_a_failed_write_leaves_nothing_behind(tmp_path: Path) -> None:
    folder = tmp_path / "manifests"
    (folder / "pod.yaml").mkdir(parents=True)  # in the way: cannot be replaced by a file
    with pytest.raises(IsADirectoryError):
        node_agent._atomic_write(folder / "pod.yaml", b"kind: Pod\n")
    assert [p.name for p in folder.iterdir()] == ["pod.yaml"]


def test_reload_options_name_each_units_files() -> None:
    given = ["etcd.service=etcd/ca.crt,etcd/server.crt", "kubelet.service=ca.crt,,", "x=", "y"]
    assert node_agent.reloads([*given, "etcd.service=etcd/server.key"]) == {
        "etcd.service": ("etcd/ca.crt", "etcd/server.crt", "etcd/server.key"),
        "kubelet.service": ("ca.crt",),
        "x": (),
        "y": (),
    }
    assert node_agent.reloads([]) == {}


def test_a_restart_runs_the_command_and_a_failure_is_logged(
    monkeypatch: pytest.MonkeyPatch, said: Callable[[], list[str]]
) -> None:
    ran: list[tuple[list[str], dict[str, Any]]] = []
    codes = [0, 1, 5]

    def run(command: list[str], **options: Any) -> subprocess.CompletedProcess[str]:
        ran.append((command, options))
        stderr = "Failed to restart.\n" + "e" * 300 + "\n"
        return subprocess.CompletedProcess(command, codes.pop(0), "", stderr)

    monkeypatch.setattr(node_agent, "subprocess", SimpleNamespace(run=run))
    restart = node_agent.restarter("systemctl try-restart {unit}")
    restart("etcd.service")
    assert said() == []
    restart("kubelet.service")
    node_agent.restarter("sh -c 'systemctl restart {unit} && true'")("a.service")
    options = {"capture_output": True, "text": True, "timeout": 300, "check": False}
    assert ran == [
        (["systemctl", "try-restart", "etcd.service"], options),
        (["systemctl", "try-restart", "kubelet.service"], options),
        (["sh", "-c", "systemctl restart a.service && true"], options),
    ]
    assert said() == [
        "systemctl try-restart kubelet.service failed: " + "e" * 300,
        "sh -c systemctl restart a.service && true failed: " + "e" * 300,
    ]


class RecordingEc2:
    """The EC2 STAND-IN: describe_instances pages as given; records the filters."""

    def __init__(self, pages: list[dict[str, Any]]) -> None:
        self.pages = pages
        self.filters: list[Any] = []

    def get_paginator(self, operation: str) -> Any:
        assert operation == "describe_instances", operation
        return SimpleNamespace(paginate=self._paginate)

    def _paginate(self, *, Filters: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        self.filters.append(Filters)
        return iter(self.pages)


def test_the_layers_running_nodes_are_asked_of_ec2_by_tag() -> None:
    pages = [
        {"Reservations": [{"Instances": [{"InstanceId": "i-c"}, {"InstanceId": "i-a"}]}]},
        {"Reservations": [{"Instances": []}, {"Instances": [{"InstanceId": "i-b"}]}]},
        {"Reservations": []},
    ]
    ec2 = RecordingEc2(pages)
    assert node_agent.running_instances(ec2, "dev", "secure") == ["i-a", "i-b", "i-c"]
    assert ec2.filters == [
        [
            {"Name": "tag:Environment", "Values": ["dev"]},
            {"Name": "tag:Layer", "Values": ["secure"]},
            {"Name": "instance-state-name", "Values": ["running"]},
        ]
    ]


# --- probes: /readyz and etcd's /health over TLS ---------------------------------------------


class Probed(http.server.BaseHTTPRequestHandler):
    answers: ClassVar[dict[str, tuple[int, bytes]]] = {
        "/readyz": (200, b"ok"),
        "/broken": (500, b"[-]etcd failed"),
        "/health": (200, b'{"health":"true","reason":""}'),
        "/sick": (200, b'{"health":"false","reason":"no leader"}'),
        "/garbled": (200, b"<html>"),
    }

    def do_GET(self) -> None:
        code, body = self.answers.get(self.path, (404, b""))
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def tls_files(tmp_path: Path, certs: dict[str, Any]) -> Path:
    """etcd's PKI folder as the agent reads it for its health check."""
    pki = tmp_path / "tls"
    (pki / "etcd").mkdir(parents=True)
    (pki / "etcd/ca.crt").write_bytes(pem(certs["new-ca"][0]))
    (pki / "server.crt").write_bytes(pem(certs["server"][0]))
    (pki / "server.key").write_bytes(key_pem(certs["server"][1]))
    (pki / "etcd/healthcheck-client.crt").write_bytes(pem(certs["client"][0]))
    (pki / "etcd/healthcheck-client.key").write_bytes(key_pem(certs["client"][1]))
    return pki


class ProbedServer(http.server.ThreadingHTTPServer):
    """TLS per connection, in the connection's own thread: a client that fails or stalls its
    handshake never holds up the others, nor the server's shutdown."""

    context: ssl.SSLContext

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(5)
        try:
            tls = self.context.wrap_socket(request, server_side=True)
        except OSError:  # a refused handshake (ssl.SSLError is an OSError)
            return
        try:
            super().finish_request(tls, client_address)
        finally:
            tls.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass


@contextmanager
def https(pki: Path, client_certificate: bool) -> Iterator[str]:
    """A stand-in HTTPS server on loopback; yields its base URL."""
    server = ProbedServer(("127.0.0.1", 0), Probed)
    server.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.context.load_cert_chain(pki / "server.crt", pki / "server.key")
    if client_certificate:
        server.context.load_verify_locations(pki / "etcd/ca.crt")
        server.context.verify_mode = ssl.CERT_REQUIRED
    with running(server):
        yield f"https://127.0.0.1:{server.server_address[1]}"


def test_an_api_server_is_ready_when_its_readyz_answers_200(tls_files: Path) -> None:
    ca = str(tls_files / "etcd/ca.crt")
    with https(tls_files, client_certificate=False) as url:
        assert node_agent.readyz(url + "/readyz", ca)() is True
        assert node_agent.readyz(url + "/broken", ca)() is False
        assert node_agent.readyz(url + "/readyz", str(tls_files / "none.crt"))() is False
        other = tls_files / "other-ca.crt"
        other.write_bytes(pem(issue("another ca", ca=True)[0]))
        assert node_agent.readyz(url + "/readyz", str(other))() is False  # not trusted
    assert node_agent.readyz("not a url", ca)() is False


def test_etcd_is_healthy_when_its_health_says_so_to_the_health_check_client(
    tls_files: Path,
) -> None:
    with https(tls_files, client_certificate=True) as url:
        assert node_agent.etcd_health(url + "/health", tls_files)() is True
        assert node_agent.etcd_health(url + "/sick", tls_files)() is False
        assert node_agent.etcd_health(url + "/garbled", tls_files)() is False
        assert node_agent.etcd_health(url + "/health", tls_files / "etcd")() is False
    assert node_agent.etcd_health("not a url", tls_files)() is False


# --- main: the program as its unit runs it ----------------------------------------------------


@pytest.fixture
def ec2() -> RecordingEc2:
    return RecordingEc2([
        {"Reservations": [{"Instances": [{"InstanceId": "i-2"}]}]},
        {"Reservations": [{"Instances": [{"InstanceId": "i-1"}]}]},
    ])  # fmt: skip


@pytest.fixture
def clients(
    monkeypatch: pytest.MonkeyPatch, s3: RecordingS3, ec2: RecordingEc2
) -> list[tuple[str, str]]:
    """aws.client hands out the stand-ins by service name and records what was asked for;
    the instance's identity is fixed (no metadata service)."""
    asked: list[tuple[str, str]] = []

    def client(service: str, region: str) -> Any:
        asked.append((service, region))
        return {"s3": s3, "ec2": ec2}[service]

    def identity(cls: Any) -> node_aws.Identity:
        return node_aws.Identity("i-0me", "eu-north-1", "10.0.0.9", "ip-10-0-0-9")

    monkeypatch.setattr(node_aws, "client", client)
    monkeypatch.setattr(node_aws.Identity, "read", classmethod(identity))
    return asked


def once(monkeypatch: pytest.MonkeyPatch) -> None:
    """With --once the agent's loop must not run: it would never return."""
    monkeypatch.setattr(node_agent, "run", lambda *args: pytest.fail("--once ran the loop"))


def started(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, float, Any]]:
    """The agent's loop, replaced: records what it would run forever."""
    runs: list[tuple[Any, float, Any]] = []
    monkeypatch.setattr(
        node_agent, "run", lambda syncer, interval, roll=None: runs.append((syncer, interval, roll))
    )
    return runs


def test_the_program_once_syncs_the_manifests_and_exits(
    s3: RecordingS3,
    tmp_path: Path,
    clients: list[tuple[str, str]],
    monkeypatch: pytest.MonkeyPatch,
    said: Callable[[], list[str]],
) -> None:
    once(monkeypatch)
    put(s3, MANIFESTS + "pod.yaml", b"kind: Pod\n")
    target = tmp_path / "manifests"
    argv = ["--bucket", BUCKET, "--prefix", MANIFESTS, "--target", str(target), "--once"]
    assert node_agent.main([*argv, "--region", "eu-west-1"]) == 0
    assert (target / "pod.yaml").read_bytes() == b"kind: Pod\n"
    assert said() == ["synced +pod.yaml"]
    monkeypatch.setenv("AWS_REGION", "eu-central-1")
    assert node_agent.main(argv) == 0
    assert clients == [("s3", "eu-west-1"), ("s3", "eu-central-1")]


def test_the_program_once_with_pki_restarts_with_its_reload_command(
    s3: RecordingS3,
    tmp_path: Path,
    clients: list[tuple[str, str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    once(monkeypatch)
    secure_bucket(s3)
    booted(tmp_path)
    put(s3, "dev/pki/secure/etcd/server.crt", b"etcd server 2\n")
    restarts = tmp_path / "restarts.log"
    code = node_agent.main([
        "--bucket", BUCKET, "--prefix", "dev/manifests/secure/",
        "--target", str(tmp_path / "manifests"),
        "--pki-prefix", "dev/pki/common/", "--pki-prefix", "dev/pki/secure/",
        "--pki-dir", str(tmp_path / "pki"),
        "--reload", "etcd.service=etcd/ca.crt,etcd/server.crt,etcd/server.key",
        "--reload", "kubelet.service=ca.crt",
        "--reload-command", f"sh -c 'echo {{unit}} >> {restarts}'",
        "--region", "eu-west-1", "--once",
    ])  # fmt: skip
    assert code == 0
    assert restarts.read_text() == "etcd.service\n"
    assert (tmp_path / "pki/etcd/server.crt").read_bytes() == b"etcd server 2\n"
    digest = fill_digest(tmp_path / "pki", ["apiserver.crt", "ca.crt"])
    assert (tmp_path / "manifests/kube-apiserver.yaml").read_text() == f'pki: "{digest}"\n'
    assert clients == [("s3", "eu-west-1")]


def test_the_program_that_takes_turns_is_wired_to_its_layer_probes_and_kubelet(
    s3: RecordingS3,
    tmp_path: Path,
    clients: list[tuple[str, str]],
    ec2: RecordingEc2,
    monkeypatch: pytest.MonkeyPatch,
    certs: dict[str, Any],
) -> None:
    runs = started(monkeypatch)
    probes: list[tuple[str, Any]] = []
    answers = {"api": True, "etcd": True}

    def readyz(url: str, ca: str) -> Callable[[], bool]:
        probes.append((url, ca))
        return lambda: answers["api"]

    def etcd_health(url: str, pki: Path) -> Callable[[], bool]:
        probes.append((url, pki))
        return lambda: answers["etcd"]

    monkeypatch.setattr(node_agent, "readyz", readyz)
    monkeypatch.setattr(node_agent, "etcd_health", etcd_health)
    client_pem = tmp_path / "kubelet-client-current.pem"
    code = node_agent.main([
        "--bucket", BUCKET, "--prefix", "dev/manifests/control-plane/",
        "--target", str(tmp_path / "manifests"),
        "--pki-prefix", "dev/pki/common/", "--pki-prefix", "dev/pki/control-plane/",
        "--pki-dir", str(tmp_path / "pki"), "--reload", "kubelet.service=ca.crt",
        "--roll", "dev/control-plane", "--interval", "3",
        "--readyz", "https://127.0.0.1:6443/readyz",
        "--etcd-health", "https://127.0.0.1:2379/health",
        "--kubelet-client", str(client_pem), "--kubelet-serving", str(tmp_path / "serving.pem"),
        "--ssh-user", "core", "--root", str(tmp_path / "root"),
    ])  # fmt: skip
    assert code == 0
    ((syncer, interval, roll),) = runs
    assert interval == 3.0
    assert clients == [("ec2", "eu-north-1"), ("s3", "eu-north-1")]  # the instance's region
    assert probes == [
        ("https://127.0.0.1:6443/readyz", "/etc/kubernetes/pki/ca.crt"),
        ("https://127.0.0.1:2379/health", tmp_path / "pki"),
    ]
    assert isinstance(syncer, node_agent.Sync)
    assert syncer.manifests.prefix == "dev/manifests/control-plane/"
    assert syncer.manifests.target == tmp_path / "manifests"
    assert [(a.prefix, a.target, a.tree) for a in syncer.pki] == [
        ("dev/pki/common/", tmp_path / "pki", True),
        ("dev/pki/control-plane/", tmp_path / "pki", True),
    ]
    assert syncer.reloads == {"kubelet.service": ("ca.crt",)}
    assert (syncer.kubelet_client, syncer.kubelet_serving) == (client_pem, tmp_path / "serving.pem")
    assert (syncer.ssh_user, syncer.root) == ("core", tmp_path / "root")
    assert syncer.manifests.client is s3 and syncer.pki[1].client is s3
    # Its turn: after the layer's running nodes, by instance id; its report in its own place.
    assert roll.me == "i-0me"
    assert roll.peers() == ["i-1", "i-2"]
    assert [f["Values"] for f in ec2.filters[0][:2]] == [["dev"], ["control-plane"]]
    assert (roll.status.bucket, roll.status.base) == (BUCKET, "dev/status/control-plane")
    assert roll.ready() is True
    answers["etcd"] = False
    assert roll.ready() is False
    answers["etcd"], answers["api"] = True, False
    assert roll.ready() is False
    # It reports its kubelet's certificate once there is one to tell about.
    assert roll.facts() == {}
    (tmp_path / "pki").mkdir()
    (tmp_path / "pki/kubelet-ca.crt").write_bytes(pem(certs["new-ca"][0]))
    client_pem.write_bytes(pem(certs["new-leaf"][0]))
    assert roll.facts() == {"kubelet_client": "current"}
    roll.status.publish("manifests", {"digest": "d"})
    key = "dev/status/control-plane/i-0me/manifests.json"
    assert json.loads(s3.objects[key][0]) == {"digest": "d"}


def test_the_program_that_only_reports_asks_no_one_and_uses_the_defaults(
    s3: RecordingS3,
    tmp_path: Path,
    clients: list[tuple[str, str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runs = started(monkeypatch)
    ran: list[list[str]] = []

    def run(command: list[str], **options: Any) -> subprocess.CompletedProcess[str]:
        ran.append(command)
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(node_agent, "subprocess", SimpleNamespace(run=run))
    argv = ["--bucket", BUCKET, "--prefix", MANIFESTS, "--target", str(tmp_path)]
    assert node_agent.main([*argv, "--pki-prefix", "dev/pki/common/", "--report", "dev/x"]) == 0
    ((syncer, interval, roll),) = runs
    assert interval == 10.0
    assert clients == [("s3", "eu-north-1")]  # no EC2: it takes no turns
    assert roll.peers() == [] and roll.ready() is True and roll.facts() == {}
    assert roll.status.base == "dev/status/x"
    assert [a.target for a in syncer.pki] == [Path("/etc/kubernetes/pki")]
    assert (syncer.kubelet_client, syncer.kubelet_serving, syncer.ssh_user) == (None, None, "")
    assert syncer.root == Path("/")
    syncer.restart("etcd.service")
    assert ran == [["systemctl", "try-restart", "etcd.service"]]

    # Neither turns nor reports: the plain agent, in its region.
    assert node_agent.main([*argv, "--region", "eu-west-1"]) == 0
    plain, _, no_roll = runs[1]
    assert isinstance(plain, node_agent.Agent) and no_roll is None
    assert (plain.prefix, plain.target, plain.tree) == (MANIFESTS, tmp_path, False)
    assert clients[1:] == [("s3", "eu-west-1")]


def test_only_a_serving_certificate_is_enough_to_report_the_kubelets_state(
    s3: RecordingS3,
    tmp_path: Path,
    clients: list[tuple[str, str]],
    monkeypatch: pytest.MonkeyPatch,
    certs: dict[str, Any],
) -> None:
    runs = started(monkeypatch)
    serving = tmp_path / "serving.pem"
    argv = ["--bucket", BUCKET, "--prefix", MANIFESTS, "--target", str(tmp_path / "m")]
    pki = ["--pki-prefix", "dev/pki/common/", "--pki-dir", str(tmp_path / "pki")]
    watched = ["--report", "dev/x", "--kubelet-serving", str(serving)]
    assert node_agent.main([*argv, *pki, *watched]) == 0
    assert node_agent.main([*argv, *pki, "--report", "dev/x"]) == 0
    (tmp_path / "pki").mkdir()
    (tmp_path / "pki/kubelet-ca.crt").write_bytes(pem(certs["new-ca"][0]))
    serving.write_bytes(pem(certs["old-leaf"][0]))
    assert runs[0][2].facts() == {"kubelet_client": "old"}
    assert runs[1][2].facts is dict  # not asked to watch the kubelet: nothing to report


def test_a_newer_set_while_waiting_is_said_with_its_own_name(
    s3: RecordingS3, tmp_path: Path, clock: Clock, said: Callable[[], list[str]]
) -> None:
    """The bucket moves on (another `up`) while this node waits for the same earlier node: the
    journal names the set it now waits to apply, not the one before."""
    agent = manifests_agent(s3, tmp_path)
    agent.sync_once()
    running = node_agent.digest(agent.applied())
    status = RecordingStatus("i-b")
    status.peer("i-a", running, ready=True)
    roll = node_agent.Roll(lambda: ["i-a", "i-b"], status, "i-b", lambda: True)
    put(s3, MANIFESTS + "a.yaml", b"v: 2\n")
    second = node_agent.digest(agent.listing())
    roll.step(agent)
    put(s3, MANIFESTS + "a.yaml", b"v: 3\n")
    third = node_agent.digest(agent.listing())
    roll.step(agent)
    assert said() == [
        f"new manifests {second[:12]}: waiting for i-a",
        f"new manifests {third[:12]}: waiting for i-a",
    ]
