"""The node's pinned binaries (kubeplat/node/fetch.py): downloaded, checked against their
sha256, installed and recorded, run in-process against REAL servers on loopback: an HTTP
artifact mirror (`http.server`, scripted per path: a damaged body, a transfer cut short, an
error status, a redirect, a hang-up, a reset) that records every request, moto's S3 server for
`s3://` mirrors, and a scripted S3 (`BucketS3`) for what moto does not do: refuse a request
signed for another region, or refuse the node's role.
Everything is written under the test's temporary directory (install destinations, the record
file, and the downloads' scratch folders); only `platform.machine` is the test's (amd64 unless
a test says otherwise).

What a node and its operator would notice: the binary in place, executable, replaced
atomically (a running binary is never written over); the record of what is installed; how
many downloads were made (none on a second run); a damaged download fetched once more and
never installed when damaged twice; a tarball that lands only its wanted files, nothing
outside its destination; the exact message of a failure that another attempt cannot fix
(`steps.Permanent`) and of one that it may (`fetch.Transient`); the lines said on the journal.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import io
import json
import os
import platform
import re
import socket
import struct
import tarfile
import tempfile
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest

from kubeplat.node import aws, fetch, steps

REGION = "eu-west-1"
BUCKET = "kubeplat-artifacts"


@dataclass
class Answer:
    """One scripted response. `length` is the Content-Length announced when it is not the
    body's (more than the body: a transfer cut short); `hangup` closes the connection before
    any answer, `reset` resets it after the body (a link or a proxy dropping it mid-transfer)."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    length: int | None = None
    hangup: bool = False  # close the connection without a word
    raw: bytes = b""  # instead of an HTTP answer, these bytes, then close
    reset: bool = False  # after the body, reset the connection (TCP RST) instead of closing it


class Mirror:
    """An HTTP artifact mirror on 127.0.0.1. Each path answers from its queue of scripted
    responses first, then with its file (200), else 404; every request path is recorded."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.queued: dict[str, deque[Answer]] = {}
        self.requests: list[str] = []
        self.lock = threading.Lock()
        mirror = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                answer = mirror.answer(self.path, self.headers)
                if answer.hangup:
                    self.close_connection = True
                    return
                if answer.raw:
                    self.wfile.write(answer.raw)
                    self.close_connection = True
                    return
                self.send_response(answer.status)
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                length = len(answer.body) if answer.length is None else answer.length
                self.send_header("Content-Length", str(length))
                self.end_headers()
                self.wfile.write(answer.body)
                if length != len(answer.body):
                    self.close_connection = True
                if answer.reset:
                    # Closed with a zero linger: an RST, not a FIN (the socket is really closed
                    # when the handler lets go of it, before the server would shut it down).
                    self.connection.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )
                    self.connection.close()
                    self.close_connection = True

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        # A short poll: shutting the server down (each test's teardown) waits for one.
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )
        self.thread.start()
        self.closed = False

    def answer(self, path: str, headers: Any = None) -> Answer:
        with self.lock:
            self.requests.append(path)
            queue = self.queued.get(path)
            if queue:
                return queue.popleft()
            if path in self.files:
                return Answer(200, self.files[path])
            return Answer(404, b"not here")

    def put(self, path: str, body: bytes) -> str:
        """Serve `body` at `path` from now on; its URL."""
        self.files[path] = body
        return self.url(path)

    def queue(self, path: str, *answers: Answer) -> str:
        """Answer the next requests of `path` with `answers`, in order; its URL."""
        self.queued.setdefault(path, deque()).extend(answers)
        return self.url(path)

    def url(self, path: str) -> str:
        return self.base + path

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.server.shutdown()
            self.server.server_close()
            self.thread.join()


class BucketS3(Mirror):
    """S3 on 127.0.0.1 (path-style: /BUCKET/KEY) as a bucket in `region` answers: a request
    signed for another region is refused as S3 refuses it (400 AuthorizationHeaderMalformed,
    naming the bucket's region); others are answered as by a Mirror. Each request's path and
    the region it was signed for are recorded."""

    def __init__(self, region: str) -> None:
        super().__init__()
        self.region = region
        self.signed: list[tuple[str, str]] = []

    def answer(self, path: str, headers: Any = None) -> Answer:
        path = path.partition("?")[0]  # botocore adds ?x-id=GetObject
        scope = re.search(r"Credential=[^/]+/\d{8}/([^/]+)/s3/", headers.get("Authorization", ""))
        region = scope.group(1) if scope else ""
        with self.lock:
            self.signed.append((path, region))
        if region == self.region:
            return super().answer(path)
        return Answer(
            400,
            (
                "<?xml version='1.0' encoding='UTF-8'?>\n<Error>"
                "<Code>AuthorizationHeaderMalformed</Code><Message>The authorization header "
                f"is malformed; the region '{region}' is wrong; expecting '{self.region}'"
                f"</Message><Region>{self.region}</Region><RequestId>0</RequestId></Error>"
            ).encode(),
            {"Content-Type": "application/xml"},
        )


@pytest.fixture(autouse=True)
def node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An amd64 machine without proxies, whose scratch folders are the test's to inspect."""
    for name in list(os.environ):
        if name.lower().endswith("_proxy"):
            monkeypatch.delenv(name)
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    return scratch


@pytest.fixture
def mirror() -> Iterator[Mirror]:
    served = Mirror()
    yield served
    served.close()


@pytest.fixture
def no_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The node's AWS as on an instance without a role: no credentials anywhere (the metadata
    service off), no region but the one kubeplat passes, a fresh session."""
    for name in list(os.environ):
        if name.startswith("AWS_") and name != "AWS_CA_BUNDLE":
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setattr(aws, "_session", None)


@pytest.fixture
def node_role(no_credentials: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The node's AWS with the instance role's credentials."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")


@pytest.fixture
def bucket(node_role: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[BucketS3]:
    """The node's AWS pointed at a scripted S3 whose bucket is in REGION."""
    served = BucketS3(REGION)
    monkeypatch.setenv("AWS_ENDPOINT_URL", served.base)
    yield served
    served.close()


@pytest.fixture
def s3(s3_endpoint: str, node_role: None, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The node's AWS pointed at moto's S3, with the artifact bucket; a client to fill it."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    client = boto3.client("s3", region_name=REGION, endpoint_url=s3_endpoint)
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(
            Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION}
        )
    return client


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def artifact(name: str, url: str, data: bytes, install: dict[str, Any]) -> dict[str, Any]:
    """An artifact pinned, for amd64, to `data` at `url`."""
    return {
        "name": name,
        "urls": {"amd64": url},
        "sha256": {"amd64": sha(data)},
        "install": install,
    }


def binary(name: str, url: str, data: bytes, dest: Path) -> dict[str, Any]:
    return artifact(name, url, data, {"kind": "bin", "dest": str(dest)})


def tarball(members: dict[str, bytes | None], links: dict[str, str] | None = None) -> bytes:
    """A gzipped tarball: files (mode 0644), folders (a None body), symbolic links."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                archive.addfile(info)
                continue
            info.size, info.mode = len(data), 0o644
            archive.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            archive.addfile(info)
    return buffer.getvalue()


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def files_under(folder: Path) -> dict[str, bytes]:
    """Every file below `folder` (dot files too), by relative path."""
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def recorded(record: Path) -> dict[str, str]:
    data: dict[str, str] = json.loads(record.read_text())
    return data


# -- binaries -----------------------------------------------------------------------------------


def test_a_pinned_binary_is_downloaded_installed_executable_and_recorded(
    mirror: Mirror, tmp_path: Path, node: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = b"\x7fELF kubelet v1.33"
    dest = tmp_path / "root/usr/local/bin/kubelet"  # its folder does not exist yet
    record = tmp_path / "var/lib/kubeplat/artifacts.json"  # its folders do not exist yet
    kubelet = binary("kubelet", mirror.put("/kubelet", data), data, dest)

    assert fetch.ensure(kubelet, REGION, record=record) is True
    assert dest.read_bytes() == data
    assert mode(dest) == 0o755
    assert sorted(p.name for p in dest.parent.iterdir()) == ["kubelet"]  # no temporary file
    assert recorded(record) == {"kubelet": sha(data)}
    assert sorted(p.name for p in record.parent.iterdir()) == ["artifacts.json"]
    assert mirror.requests == ["/kubelet"]
    assert list(node.iterdir()) == []  # the download's scratch folder is gone
    assert capsys.readouterr().out == ""  # a clean download says nothing


def test_the_record_names_one_artifact_a_line_in_order_of_name(
    mirror: Mirror, tmp_path: Path
) -> None:
    """Whatever order they were installed in: two nodes with the same pins have the same
    record, byte for byte (`sha256sum`, `diff` across nodes)."""
    runc, kubelet = b"\x7fELF runc", b"\x7fELF kubelet"
    record = tmp_path / "artifacts.json"
    for name, data in (("runc", runc), ("kubelet", kubelet)):
        pinned = binary(name, mirror.put(f"/{name}", data), data, tmp_path / "bin" / name)
        assert fetch.ensure(pinned, REGION, record=record) is True

    assert record.read_text() == (
        f'{{\n "kubelet": "{sha(kubelet)}",\n "runc": "{sha(runc)}"\n}}\n'
    )


def test_a_download_in_progress_sits_in_its_own_scratch_folder(
    mirror: Mirror, tmp_path: Path, node: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What an operator finds in /tmp while a download runs (or after the process was
    killed): a folder that says whose it is, with the partial download in it."""
    data = b"\x7fELF kubelet"
    kubelet = binary("kubelet", mirror.put("/kubelet", data), data, tmp_path / "bin/kubelet")
    during: list[list[str]] = []
    answer = mirror.answer

    def looking(path: str, headers: Any = None) -> Answer:
        during.append(sorted(str(p.relative_to(node)) for p in node.rglob("*")))
        return answer(path, headers)

    monkeypatch.setattr(mirror, "answer", looking)

    assert fetch.ensure(kubelet, REGION, record=tmp_path / "artifacts.json") is True
    assert len(during) == 1
    folder, download = during[0]
    assert re.fullmatch(r"kubeplat-fetch\.[a-z0-9_]+", folder)
    assert download == f"{folder}/download"
    assert list(node.iterdir()) == []


def test_a_second_run_downloads_nothing_and_leaves_the_binary_alone(
    mirror: Mirror, tmp_path: Path
) -> None:
    data = b"\x7fELF kubectl"
    dest = tmp_path / "bin/kubectl"
    record = tmp_path / "artifacts.json"
    kubectl = binary("kubectl", mirror.put("/kubectl", data), data, dest)
    assert fetch.ensure(kubectl, REGION, record=record) is True
    installed = dest.stat()
    record_text = record.read_text()

    assert fetch.ensure(kubectl, REGION, record=record) is False
    assert fetch.ensure(kubectl, REGION, record=record) is False
    assert mirror.requests == ["/kubectl"]
    assert (dest.stat().st_ino, dest.stat().st_mtime_ns) == (
        installed.st_ino,
        installed.st_mtime_ns,
    )
    assert record.read_text() == record_text


def test_a_recorded_binary_whose_file_was_deleted_is_downloaded_again(
    mirror: Mirror, tmp_path: Path
) -> None:
    data = b"\x7fELF runc"
    dest = tmp_path / "sbin/runc"
    record = tmp_path / "artifacts.json"
    runc = binary("runc", mirror.put("/runc.amd64", data), data, dest)
    assert fetch.ensure(runc, REGION, record=record) is True
    dest.unlink()

    assert fetch.ensure(runc, REGION, record=record) is True
    assert dest.read_bytes() == data
    assert mode(dest) == 0o755
    assert mirror.requests == ["/runc.amd64", "/runc.amd64"]
    assert recorded(record) == {"runc": sha(data)}


def test_a_new_pin_replaces_the_installed_binary_and_keeps_the_other_records(
    mirror: Mirror, tmp_path: Path
) -> None:
    old, new = b"\x7fELF kubelet v1.32", b"\x7fELF kubelet v1.33"
    dest = tmp_path / "bin/kubelet"
    dest.parent.mkdir()
    dest.write_bytes(old)
    record = tmp_path / "artifacts.json"
    record.write_text(json.dumps({"kubelet": sha(old), "runc": "1" * 64}))

    kubelet = binary("kubelet", mirror.put("/v1.33/kubelet", new), new, dest)
    assert fetch.ensure(kubelet, REGION, record=record) is True
    assert dest.read_bytes() == new
    assert recorded(record) == {"kubelet": sha(new), "runc": "1" * 64}
    assert mirror.requests == ["/v1.33/kubelet"]


@pytest.mark.parametrize(
    "damaged",
    [b"{not json", b"", b"\xff\xfe\x00", b"[]", b'[["kubelet", "PIN"]]', b'"kubelet"'],
    ids=["not-json", "empty", "not-text", "empty-list", "list-of-pairs", "a-string"],
)
def test_a_damaged_record_file_means_downloading_again(
    mirror: Mirror, tmp_path: Path, damaged: bytes
) -> None:
    data = b"\x7fELF kubelet"
    dest = tmp_path / "bin/kubelet"
    record = tmp_path / "artifacts.json"
    kubelet = binary("kubelet", mirror.put("/kubelet", data), data, dest)
    assert fetch.ensure(kubelet, REGION, record=record) is True  # in place, recorded
    record.write_bytes(damaged.replace(b"PIN", sha(data).encode()))

    assert fetch.ensure(kubelet, REGION, record=record) is True
    assert mirror.requests == ["/kubelet", "/kubelet"]
    assert dest.read_bytes() == data
    assert recorded(record) == {"kubelet": sha(data)}  # written whole again


def test_an_install_that_fails_records_nothing_and_the_next_run_installs(
    mirror: Mirror, tmp_path: Path
) -> None:
    data = b"\x7fELF kubelet"
    (tmp_path / "usr").write_text("a file where the folder should be")
    dest = tmp_path / "usr/bin/kubelet"
    record = tmp_path / "artifacts.json"
    record.write_text('{"runc": "' + "1" * 64 + '"}\n')
    kubelet = binary("kubelet", mirror.put("/kubelet", data), data, dest)

    with pytest.raises(OSError):
        fetch.ensure(kubelet, REGION, record=record)
    assert record.read_text() == '{"runc": "' + "1" * 64 + '"}\n'

    (tmp_path / "usr").unlink()
    assert fetch.ensure(kubelet, REGION, record=record) is True
    assert dest.read_bytes() == data
    assert recorded(record) == {"kubelet": sha(data), "runc": "1" * 64}
    assert mirror.requests == ["/kubelet", "/kubelet"]


def test_installing_over_a_binary_replaces_it_atomically_never_writing_over_it(
    mirror: Mirror, tmp_path: Path
) -> None:
    old, new = b"\x7fELF kubelet v1.32", b"\x7fELF kubelet v1.33"
    dest = tmp_path / "bin/kubelet"
    dest.parent.mkdir()
    dest.write_bytes(old)
    dest.chmod(0o755)
    before = dest.stat().st_ino
    kubelet = binary("kubelet", mirror.put("/kubelet", new), new, dest)

    with dest.open("rb") as running:  # the old binary, as a running process holds it
        assert fetch.ensure(kubelet, REGION, record=tmp_path / "artifacts.json") is True
        assert running.read() == old
    assert dest.stat().st_ino != before
    assert dest.read_bytes() == new
    assert mode(dest) == 0o755
    assert sorted(p.name for p in dest.parent.iterdir()) == ["kubelet"]  # no .kubelet.kubeplat-new


# -- damaged downloads --------------------------------------------------------------------------


def test_a_body_damaged_once_is_downloaded_again_and_installed(
    mirror: Mirror, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, damaged = b"\x7fELF kubelet", b"\x7fELF kubelXt"
    dest = tmp_path / "bin/kubelet"
    record = tmp_path / "artifacts.json"
    mirror.queue("/kubelet", Answer(200, damaged))
    kubelet = binary("kubelet", mirror.put("/kubelet", data), data, dest)

    assert fetch.ensure(kubelet, REGION, record=record) is True
    assert capsys.readouterr().out == (
        f"kubeplat: kubelet: sha256 {sha(damaged)} is not the pinned {sha(data)}; "
        "downloading again\n"
    )
    assert mirror.requests == ["/kubelet", "/kubelet"]
    assert dest.read_bytes() == data
    assert mode(dest) == 0o755
    assert recorded(record) == {"kubelet": sha(data)}


def test_a_transfer_cut_short_is_downloaded_again_and_installed(
    mirror: Mirror, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = bytes(range(256)) * 64
    dest = tmp_path / "bin/kubelet"
    mirror.queue("/kubelet", Answer(200, data[:1000], length=len(data)))
    kubelet = binary("kubelet", mirror.put("/kubelet", data), data, dest)

    assert fetch.ensure(kubelet, REGION, record=tmp_path / "artifacts.json") is True
    assert capsys.readouterr().out == (
        f"kubeplat: kubelet: sha256 {sha(data[:1000])} is not the pinned {sha(data)}; "
        "downloading again\n"
    )
    assert mirror.requests == ["/kubelet", "/kubelet"]
    assert dest.read_bytes() == data


def test_a_body_damaged_twice_is_refused_and_nothing_is_installed(
    mirror: Mirror, tmp_path: Path, node: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old, new = b"\x7fELF kubelet v1.32", b"\x7fELF kubelet v1.33"
    first, second = b"<html>proxy error</html>", b"\x7fELF kubelet v1.3"
    dest = tmp_path / "bin/kubelet"
    dest.parent.mkdir()
    dest.write_bytes(old)  # the version in place keeps running
    record = tmp_path / "artifacts.json"
    record.write_text(json.dumps({"kubelet": sha(old), "runc": "1" * 64}))
    record_text = record.read_text()
    url = mirror.queue("/kubelet", Answer(200, first), Answer(200, second))
    mirror.put("/kubelet", new)  # a third download would get the right file
    kubelet = binary("kubelet", url, new, dest)

    with pytest.raises(steps.Permanent) as refused:
        fetch.ensure(kubelet, REGION, record=record)
    assert str(refused.value) == (
        f"kubelet from {url}: sha256 {sha(second)} does not match the pinned {sha(new)}"
    )
    assert capsys.readouterr().out == (
        f"kubeplat: kubelet: sha256 {sha(first)} is not the pinned {sha(new)}; downloading again\n"
    )
    assert mirror.requests == ["/kubelet", "/kubelet"]
    assert dest.read_bytes() == old
    assert sorted(p.name for p in dest.parent.iterdir()) == ["kubelet"]
    assert record.read_text() == record_text
    assert list(node.iterdir()) == []  # the refused download is not left on disk


# -- tarballs -----------------------------------------------------------------------------------


def test_a_tarball_lands_only_its_wanted_files_minus_strip_and_nothing_escapes(
    mirror: Mirror, tmp_path: Path
) -> None:
    etcd = tarball(
        {
            "etcd-v3.5.21-linux-amd64/": None,
            "etcd-v3.5.21-linux-amd64/etcd": b"etcd",
            "etcd-v3.5.21-linux-amd64/etcdctl": b"etcdctl",
            "etcd-v3.5.21-linux-amd64/README.md": b"docs",
            "etcd-v3.5.21-linux-amd64/Documentation/": None,
            "etcd-v3.5.21-linux-amd64/Documentation/dev-guide.md": b"docs",
            "etcd": b"shorter than strip",
            "etcd-v3.5.21-linux-amd64/../../../etcdctl": b"escaped",
            "../etcd": b"escaped",
        },
        links={"etcd-v3.5.21-linux-amd64/etcdutl": "/etc/shadow"},
    )
    root = tmp_path / "root"
    bindir = root / "usr/local/bin"
    record = tmp_path / "artifacts.json"
    install = {
        "kind": "tar",
        "dest": str(bindir),
        "strip": 1,
        "only": ["etcd", "etcdctl", "etcdutl"],
        "check": ["etcd", "etcdctl"],
    }
    wanted = artifact("etcd", mirror.put("/etcd.tar.gz", etcd), etcd, install)

    assert fetch.ensure(wanted, REGION, record=record) is True
    assert files_under(root) == {"usr/local/bin/etcd": b"etcd", "usr/local/bin/etcdctl": b"etcdctl"}
    assert [p for p in root.rglob("*") if p.is_symlink()] == []
    assert (mode(bindir / "etcd"), mode(bindir / "etcdctl")) == (0o755, 0o755)
    assert files_under(tmp_path) == {
        "artifacts.json": record.read_bytes(),
        "root/usr/local/bin/etcd": b"etcd",
        "root/usr/local/bin/etcdctl": b"etcdctl",
    }
    assert recorded(record) == {"etcd": sha(etcd)}


def test_unwanted_files_before_the_wanted_ones_do_not_stop_the_extraction(
    mirror: Mirror, tmp_path: Path
) -> None:
    """As etcd's release tarballs are laid out: the documentation comes first."""
    etcd = tarball(
        {
            "etcd-v3.5.21-linux-amd64/Documentation/README.md": b"docs",
            "etcd-v3.5.21-linux-amd64/README.md": b"docs",
            "etcd-v3.5.21-linux-amd64/etcd": b"etcd",
            "etcd-v3.5.21-linux-amd64/README-etcdctl.md": b"docs",
            "etcd-v3.5.21-linux-amd64/etcdctl": b"etcdctl",
        }
    )
    bindir = tmp_path / "bin"
    install = {"kind": "tar", "dest": str(bindir), "strip": 1, "only": ["etcd", "etcdctl"]}
    wanted = artifact("etcd", mirror.put("/etcd.tgz", etcd), etcd, install)

    assert fetch.ensure(wanted, REGION, record=tmp_path / "artifacts.json") is True
    assert files_under(bindir) == {"etcd": b"etcd", "etcdctl": b"etcdctl"}


def test_a_tarball_without_only_lands_every_regular_file_below_its_folders(
    mirror: Mirror, tmp_path: Path
) -> None:
    containerd = tarball(
        {
            "bin/": None,
            "bin/containerd": b"containerd",
            "bin/ctr": b"ctr",
            "./bin/containerd-shim-runc-v2": b"shim",
            "README": b"shorter than strip",
            "bin/../../escape": b"escaped",
        },
        links={"bin/runc": "../../../usr/sbin/runc"},
    )
    dest = tmp_path / "root/usr/local/lib"
    install = {"kind": "tar", "dest": str(dest), "strip": 1, "check": ["containerd"]}
    wanted = artifact("containerd", mirror.put("/containerd.tgz", containerd), containerd, install)

    assert fetch.ensure(wanted, REGION, record=tmp_path / "artifacts.json") is True
    assert files_under(tmp_path / "root") == {
        "usr/local/lib/containerd": b"containerd",
        "usr/local/lib/ctr": b"ctr",
        "usr/local/lib/containerd-shim-runc-v2": b"shim",
    }
    assert {mode(p) for p in dest.iterdir()} == {0o755}
    assert not (tmp_path / "escape").exists() and not (tmp_path / "root/usr/escape").exists()


def test_a_member_with_an_absolute_name_lands_under_the_destination(
    mirror: Mirror, tmp_path: Path
) -> None:
    """Without `strip`, as containerd and the CNI plugins are installed: an absolute member
    name is taken below `dest`, as tar takes it, never written where it points."""
    outside = tmp_path / "outside" / "evil"
    plugins = tarball({"./bridge": b"bridge", str(outside): b"evil"})
    dest = tmp_path / "opt/cni/bin"
    install = {"kind": "tar", "dest": str(dest), "check": ["bridge"]}
    cni = artifact("cni-plugins", mirror.put("/cni.tgz", plugins), plugins, install)
    assert fetch.ensure(cni, REGION, record=tmp_path / "artifacts.json") is True
    assert not outside.exists()
    assert (dest / str(outside).lstrip("/")).read_bytes() == b"evil"
    assert (dest / "bridge").read_bytes() == b"bridge"


def test_the_check_list_decides_whether_a_tarball_counts_as_installed(
    mirror: Mirror, tmp_path: Path
) -> None:
    plugins = tarball({"./bridge": b"bridge", "./loopback": b"loopback", "./LICENSE": b"text"})
    dest = tmp_path / "opt/cni/bin"
    record = tmp_path / "artifacts.json"
    install = {"kind": "tar", "dest": str(dest), "check": ["bridge", "loopback"]}
    cni = artifact("cni-plugins", mirror.put("/cni.tgz", plugins), plugins, install)
    assert fetch.ensure(cni, REGION, record=record) is True
    assert sorted(p.name for p in dest.iterdir()) == ["LICENSE", "bridge", "loopback"]

    (dest / "LICENSE").unlink()  # not in `check`: still installed
    assert fetch.ensure(cni, REGION, record=record) is False
    assert mirror.requests == ["/cni.tgz"]

    (dest / "loopback").unlink()  # in `check`: installed again
    assert fetch.ensure(cni, REGION, record=record) is True
    assert mirror.requests == ["/cni.tgz", "/cni.tgz"]
    assert files_under(dest) == {"LICENSE": b"text", "bridge": b"bridge", "loopback": b"loopback"}

    # No `check`: the record alone says it is installed.
    unchecked = artifact("cni-plugins", cni["urls"]["amd64"], plugins, {**install, "check": []})
    (dest / "bridge").unlink()
    assert fetch.ensure(unchecked, REGION, record=record) is False
    assert mirror.requests == ["/cni.tgz", "/cni.tgz"]


def test_a_tarball_without_a_check_list_counts_as_installed_by_its_record(
    mirror: Mirror, tmp_path: Path
) -> None:
    plugins = tarball({"./bridge": b"bridge"})
    dest = tmp_path / "opt/cni/bin"
    record = tmp_path / "artifacts.json"
    cni = artifact(
        "cni", mirror.put("/cni.tgz", plugins), plugins, {"kind": "tar", "dest": str(dest)}
    )
    assert fetch.ensure(cni, REGION, record=record) is True
    assert files_under(dest) == {"bridge": b"bridge"}

    assert fetch.ensure(cni, REGION, record=record) is False
    assert mirror.requests == ["/cni.tgz"]


def test_a_tarball_over_installed_files_replaces_them_atomically(
    mirror: Mirror, tmp_path: Path
) -> None:
    etcd = tarball({"etcd-v3.5.22/etcd": b"etcd v3.5.22"})
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "etcd").write_bytes(b"etcd v3.5.21")
    before = (bindir / "etcd").stat().st_ino
    install = {"kind": "tar", "dest": str(bindir), "strip": 1, "check": ["etcd"]}
    wanted = artifact("etcd", mirror.put("/etcd.tgz", etcd), etcd, install)

    with (bindir / "etcd").open("rb") as running:
        assert fetch.ensure(wanted, REGION, record=tmp_path / "artifacts.json") is True
        assert running.read() == b"etcd v3.5.21"
    assert (bindir / "etcd").stat().st_ino != before
    assert files_under(bindir) == {"etcd": b"etcd v3.5.22"}  # no .etcd.kubeplat-new


# -- HTTP answers -------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [404, 403, 401, 410])
def test_a_file_the_mirror_refuses_or_does_not_have_is_a_permanent_failure(
    mirror: Mirror, tmp_path: Path, status: int
) -> None:
    url = mirror.queue("/kubelet", Answer(status, b"no"))
    dest = tmp_path / "bin/kubelet"
    record = tmp_path / "artifacts.json"

    with pytest.raises(steps.Permanent) as refused:
        fetch.ensure(binary("kubelet", url, b"x", dest), REGION, record=record)
    assert str(refused.value) == f"{url}: HTTP {status}"
    assert mirror.requests == ["/kubelet"]
    assert not dest.exists() and not record.exists()


def fails_once_then_installs(mirror: Mirror, tmp_path: Path, first: Answer, data: bytes) -> str:
    """The mirror answers `first`, then the file: the first attempt is a failure another attempt
    may fix (`Transient`) that installs and records nothing and leaves no download behind; the
    next (the step's retry) installs. The first failure's message."""
    url = mirror.queue("/kubelet", first)
    mirror.put("/kubelet", data)
    dest = tmp_path / "bin/kubelet"
    record = tmp_path / "artifacts.json"
    kubelet = binary("kubelet", url, data, dest)
    with pytest.raises(fetch.Transient) as trouble:
        fetch.ensure(kubelet, REGION, record=record)
    assert not isinstance(trouble.value, steps.Permanent)
    assert not dest.exists() and not record.exists()
    assert list((tmp_path / "scratch").iterdir()) == []  # no partial download left on disk
    assert fetch.ensure(kubelet, REGION, record=record) is True
    assert dest.read_bytes() == data
    assert mirror.requests == ["/kubelet", "/kubelet"]
    return str(trouble.value).removeprefix(url + ": ")


@pytest.mark.parametrize("status", [500, 502, 503, 429])
def test_a_mirror_in_trouble_is_a_transient_failure(
    mirror: Mirror, tmp_path: Path, status: int
) -> None:
    answer = Answer(status, b"busy")
    assert fails_once_then_installs(mirror, tmp_path, answer, b"\x7fELF kubelet") == (
        f"HTTP {status}"
    )


def test_a_refused_connection_is_a_transient_failure(mirror: Mirror, tmp_path: Path) -> None:
    url = mirror.put("/kubelet", b"x")
    mirror.close()  # nothing listens on its port any more
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", mirror.server.server_address[1])) != 0
    dest = tmp_path / "bin/kubelet"
    record = tmp_path / "artifacts.json"

    with pytest.raises(fetch.Transient) as trouble:
        fetch.ensure(binary("kubelet", url, b"x", dest), REGION, record=record)
    assert re.fullmatch(re.escape(url) + r": .*Connection refused", str(trouble.value))
    assert not isinstance(trouble.value, steps.Permanent)
    assert not dest.exists() and not record.exists()


def test_a_mirror_that_hangs_up_without_answering_is_a_transient_failure(
    mirror: Mirror, tmp_path: Path
) -> None:
    said = fails_once_then_installs(mirror, tmp_path, Answer(hangup=True), b"\x7fELF kubelet")
    assert said == "Remote end closed connection without response"


def test_a_connection_reset_mid_transfer_is_a_transient_failure(
    mirror: Mirror, tmp_path: Path
) -> None:
    data = bytes(range(256)) * 64
    first = Answer(200, data[:1000], length=len(data), reset=True)
    assert re.fullmatch(
        r".*Connection reset by peer", fails_once_then_installs(mirror, tmp_path, first, data)
    )


def test_a_redirect_is_followed_to_the_file(mirror: Mirror, tmp_path: Path) -> None:
    data = b"\x7fELF kubectl"
    url = mirror.queue("/releases/kubectl", Answer(302, b"", {"Location": "/objects/kubectl"}))
    mirror.put("/objects/kubectl", data)
    dest = tmp_path / "bin/kubectl"

    assert fetch.ensure(binary("kubectl", url, data, dest), REGION, tmp_path / "a.json") is True
    assert dest.read_bytes() == data
    assert mirror.requests == ["/releases/kubectl", "/objects/kubectl"]


# -- S3 mirrors ---------------------------------------------------------------------------------


def test_an_s3_mirror_is_read_with_the_node_role(s3: Any, tmp_path: Path) -> None:
    data = b"\x7fELF runc"
    key = "kubeplat/github.com/opencontainers/runc/releases/download/v1.3.2/runc.amd64"
    s3.put_object(Bucket=BUCKET, Key=key, Body=data)
    dest = tmp_path / "sbin/runc"
    record = tmp_path / "artifacts.json"
    runc = binary("runc", f"s3://{BUCKET}/{key}", data, dest)

    assert fetch.ensure(runc, REGION, record=record) is True
    assert dest.read_bytes() == data
    assert mode(dest) == 0o755
    assert recorded(record) == {"runc": sha(data)}
    assert fetch.ensure(runc, REGION, record=record) is False


def test_a_damaged_s3_object_is_refused_after_a_second_download(
    s3: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, stored = b"\x7fELF runc", b"\x7fELF runc, another build"
    s3.put_object(Bucket=BUCKET, Key="runc.damaged", Body=stored)
    url = f"s3://{BUCKET}/runc.damaged"
    dest = tmp_path / "sbin/runc"

    with pytest.raises(steps.Permanent) as refused:
        fetch.ensure(binary("runc", url, data, dest), REGION, record=tmp_path / "a.json")
    assert str(refused.value) == (
        f"runc from {url}: sha256 {sha(stored)} does not match the pinned {sha(data)}"
    )
    assert capsys.readouterr().out == (
        f"kubeplat: runc: sha256 {sha(stored)} is not the pinned {sha(data)}; downloading again\n"
    )
    assert not dest.exists() and not (tmp_path / "a.json").exists()


@pytest.mark.parametrize(
    ("where", "code"),
    [(f"{BUCKET}/kubeplat/nothing", "NoSuchKey"), ("kubeplat-no-such-bucket/runc", "NoSuchBucket")],
)
def test_a_missing_s3_object_or_bucket_is_a_permanent_failure(
    s3: Any, tmp_path: Path, where: str, code: str
) -> None:
    dest = tmp_path / "sbin/runc"
    record = tmp_path / "artifacts.json"

    with pytest.raises(steps.Permanent) as refused:
        fetch.ensure(binary("runc", f"s3://{where}", b"x", dest), REGION, record=record)
    assert str(refused.value) == f"s3://{where}: {code}"
    assert not dest.exists() and not record.exists()


def test_an_s3_mirror_is_asked_in_the_nodes_region_the_second_download_too(
    bucket: BucketS3, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Signed for another region, S3 refuses a request (and outside the region, a node in a
    private subnet may not reach S3 at all): every download is asked in the node's region."""
    data = b"\x7fELF runc"
    bucket.queue(f"/{BUCKET}/runc", Answer(200, data[:5]))  # a first download cut short
    bucket.put(f"/{BUCKET}/runc", data)
    dest = tmp_path / "sbin/runc"
    runc = binary("runc", f"s3://{BUCKET}/runc", data, dest)

    assert fetch.ensure(runc, REGION, record=tmp_path / "artifacts.json") is True
    assert dest.read_bytes() == data
    assert bucket.signed == [(f"/{BUCKET}/runc", REGION), (f"/{BUCKET}/runc", REGION)]
    assert "downloading again" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("answer", "code"),
    [
        (
            Answer(
                403,
                b"<?xml version='1.0' encoding='UTF-8'?>\n<Error><Code>AccessDenied</Code>"
                b"<Message>Access Denied</Message><RequestId>0</RequestId></Error>",
                {"Content-Type": "application/xml"},
            ),
            "AccessDenied",
        ),
        (Answer(403), "403"),
        (Answer(404), "404"),
    ],
    ids=["access-denied", "403-without-a-body", "404-without-a-body"],
)
def test_an_s3_mirror_that_refuses_the_node_is_a_permanent_failure(
    bucket: BucketS3, tmp_path: Path, answer: Answer, code: str
) -> None:
    """The role is not allowed the object (or a proxy on the way refuses it without a word):
    another attempt would be refused the same."""
    url = f"s3://{BUCKET}/runc"
    bucket.queue(f"/{BUCKET}/runc", answer)
    bucket.put(f"/{BUCKET}/runc", b"x")
    dest = tmp_path / "sbin/runc"
    record = tmp_path / "artifacts.json"

    with pytest.raises(steps.Permanent) as refused:
        fetch.ensure(binary("runc", url, b"x", dest), REGION, record=record)
    assert str(refused.value) == f"{url}: {code}"
    assert bucket.signed == [(f"/{BUCKET}/runc", REGION)]
    assert not dest.exists() and not record.exists()


def test_a_node_without_credentials_for_its_s3_mirror_is_a_transient_failure(
    no_credentials: None, mirror: Mirror, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The instance profile is not attached yet (or the metadata service is slow): the
    step's next attempt asks for credentials again."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", mirror.base)
    url = f"s3://{BUCKET}/runc"
    dest = tmp_path / "sbin/runc"
    record = tmp_path / "artifacts.json"

    with pytest.raises(fetch.Transient) as trouble:
        fetch.ensure(binary("runc", url, b"x", dest), REGION, record=record)
    assert str(trouble.value).startswith(
        f"{url}: no AWS credentials: the metadata service gave none for the instance role"
    )
    assert not isinstance(trouble.value, steps.Permanent)
    assert mirror.requests == []
    assert not dest.exists() and not record.exists()


def test_an_s3_object_larger_than_a_chunk_arrives_whole(s3: Any, tmp_path: Path) -> None:
    data = hashlib.sha256(b"seed").digest() * (5 * fetch.CHUNK // 64)  # 2.5 chunks
    s3.put_object(Bucket=BUCKET, Key="big", Body=data)
    target = tmp_path / "download"

    assert fetch.download(f"s3://{BUCKET}/big", target, REGION) == sha(data)
    assert target.read_bytes() == data


# -- architecture and download ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("machine", "name"),
    [("x86_64", "amd64"), ("amd64", "amd64"), ("aarch64", "arm64"), ("arm64", "arm64")],
)
def test_the_architecture_is_named_as_release_files_name_it(
    monkeypatch: pytest.MonkeyPatch, machine: str, name: str
) -> None:
    monkeypatch.setattr(platform, "machine", lambda: machine)
    assert fetch.arch() == name


@pytest.mark.parametrize("machine", ["riscv64", "i686", "armv7l", "ppc64le", ""])
def test_an_unsupported_architecture_is_refused_before_any_download(
    mirror: Mirror, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, machine: str
) -> None:
    monkeypatch.setattr(platform, "machine", lambda: machine)
    message = f"unsupported architecture {machine} (amd64 and arm64 are)"
    with pytest.raises(steps.Permanent) as refused:
        fetch.arch()
    assert str(refused.value) == message

    kubelet = binary("kubelet", mirror.put("/kubelet", b"x"), b"x", tmp_path / "kubelet")
    with pytest.raises(steps.Permanent) as refused:
        fetch.ensure(kubelet, REGION, record=tmp_path / "artifacts.json")
    assert str(refused.value) == message
    assert mirror.requests == []


def test_an_arm64_machine_gets_the_arm64_file_and_pin(
    mirror: Mirror, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    amd64, arm64 = b"\x7fELF kubelet x86-64", b"\x7fELF kubelet aarch64"
    dest = tmp_path / "bin/kubelet"
    record = tmp_path / "artifacts.json"
    kubelet = {
        "name": "kubelet",
        "urls": {
            "amd64": mirror.put("/amd64/kubelet", amd64),
            "arm64": mirror.put("/arm64/kubelet", arm64),
        },
        "sha256": {"amd64": sha(amd64), "arm64": sha(arm64)},
        "install": {"kind": "bin", "dest": str(dest)},
    }

    assert fetch.ensure(kubelet, REGION, record=record) is True
    assert dest.read_bytes() == arm64
    assert recorded(record) == {"kubelet": sha(arm64)}
    assert mirror.requests == ["/arm64/kubelet"]


def test_download_returns_the_sha256_of_everything_that_arrived(
    mirror: Mirror, tmp_path: Path
) -> None:
    data = hashlib.sha256(b"seed").digest() * (5 * fetch.CHUNK // 64)  # 2.5 MiB: 3 chunks
    assert len(data) == 5 * fetch.CHUNK // 2
    target = tmp_path / "download"
    target.write_bytes(b"an older, longer download" * (fetch.CHUNK // 8))

    assert fetch.download(mirror.put("/big", data), target, REGION) == sha(data)
    assert target.read_bytes() == data
    assert mirror.requests == ["/big"]


def test_an_answer_that_is_not_http_is_a_transient_failure_naming_the_url(
    mirror: Mirror, tmp_path: Path
) -> None:
    """A captive proxy or another service on the mirror's port: the failure names the URL (the
    bootstrap's journal line and status say which mirror), and the next attempt installs."""
    said = fails_once_then_installs(mirror, tmp_path, Answer(raw=b"garbage\r\n"), b"\x7fELF")
    # One line: the answer's own line ends are shown escaped.
    assert said == "not an HTTP answer (BadStatusLine('garbage\\r\\n'))"


def test_an_s3_object_cut_short_is_a_transient_failure_naming_the_url(
    bucket: BucketS3, tmp_path: Path
) -> None:
    """The S3 body ends before its announced length (a dropped connection): botocore's own
    error becomes a failure another attempt may fix, naming the object."""
    data = bytes(range(256)) * 16
    bucket.queue(f"/{BUCKET}/runc", Answer(200, data[:100], length=len(data)))
    url = f"s3://{BUCKET}/runc"
    dest = tmp_path / "bin/runc"
    with pytest.raises(fetch.Transient) as trouble:
        fetch.ensure(binary("runc", url, data, dest), REGION, record=tmp_path / "a.json")
    assert str(trouble.value).startswith(f"{url}: ")
    assert "100" in str(trouble.value) and str(len(data)) in str(trouble.value)
    assert not dest.exists()
