"""Pinned binaries: download from upstream or the environment's artifact mirror, check the
sha256, install. Nothing unchecked is ever installed.

An artifact names one URL per architecture (already the mirror's when the environment names
one: `https://…`, `http://…` or `s3://bucket/prefix/…`, read with the instance role) and its
sha256. What was installed is recorded in `/var/lib/kubeplat/artifacts.json`, so a second run
(a reboot, a retried bootstrap) downloads nothing that is already in place.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import platform
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from .steps import Permanent, say

RECORD = Path("/var/lib/kubeplat/artifacts.json")
ARCHES = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64", "amd64": "amd64"}
CHUNK = 1 << 20


class Transient(Exception):
    """A download that may work next time (network, 5xx, throttling)."""


def arch() -> str:
    """This machine's architecture as release files name it (amd64, arm64)."""
    machine = platform.machine()
    if machine not in ARCHES:
        raise Permanent(f"unsupported architecture {machine} (amd64 and arm64 are)")
    return ARCHES[machine]


def download(url: str, target: Path, region: str) -> str:
    """Download `url` to `target`; return the sha256 of what arrived."""
    digest = hashlib.sha256()
    with target.open("wb") as handle:
        for chunk in _chunks(url, region):
            digest.update(chunk)
            handle.write(chunk)
    return digest.hexdigest()


def _chunks(url: str, region: str) -> Any:
    if url.startswith("s3://"):
        from . import aws

        bucket, _, key = url[len("s3://") :].partition("/")
        try:
            body = aws.client("s3", region).get_object(Bucket=bucket, Key=key)["Body"]
        except Exception as exc:
            code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "NoSuchBucket", "AccessDenied", "403", "404"):
                raise Permanent(f"{url}: {code}") from None
            raise Transient(f"{url}: {exc}") from None

        def read_object() -> Any:
            while True:
                try:
                    chunk = body.read(CHUNK)
                except Exception as exc:  # a read timeout, a body cut short (botocore's own)
                    raise Transient(f"{url}: {exc}") from None
                if not chunk:
                    return
                yield chunk

        return read_object()
    try:
        answer = urllib.request.urlopen(url, timeout=30)
    except urllib.error.HTTPError as exc:
        if exc.code in (404, 403, 401, 410):
            raise Permanent(f"{url}: HTTP {exc.code}") from None
        raise Transient(f"{url}: HTTP {exc.code}") from None
    except OSError as exc:
        raise Transient(f"{url}: {getattr(exc, 'reason', exc)}") from None
    except http.client.HTTPException as exc:  # an answer that is not HTTP (a captive proxy…)
        raise Transient(f"{url}: not an HTTP answer ({exc!r})") from None

    def read() -> Any:
        with answer:
            while True:
                try:
                    chunk = answer.read(CHUNK)
                except (OSError, http.client.HTTPException) as exc:
                    raise Transient(f"{url}: {exc}") from None
                if not chunk:
                    return
                yield chunk

    return read()


def ensure(artifact: dict[str, Any], region: str, record: Path = RECORD) -> bool:
    """Install one artifact unless it already is; True when something was installed."""
    machine = arch()
    want = artifact["sha256"][machine]
    url = artifact["urls"][machine]
    install = artifact["install"]
    done = _read_record(record)
    if done.get(artifact["name"]) == want and all(Path(p).exists() for p in _outputs(install)):
        return False
    with tempfile.TemporaryDirectory(prefix="kubeplat-fetch.") as work:
        target = Path(work) / "download"
        got = download(url, target, region)
        if got != want:
            # Once more: a proxy or a flaky link may have damaged it. Twice is a wrong file.
            say(f"{artifact['name']}: sha256 {got} is not the pinned {want}; downloading again")
            got = download(url, target, region)
            if got != want:
                raise Permanent(
                    f"{artifact['name']} from {url}: sha256 {got} does not match the pinned {want}"
                )
        _install(target, install)
    done[artifact["name"]] = want
    _write_record(record, done)
    return True


def _outputs(install: dict[str, Any]) -> list[str]:
    """The files an installed artifact must have put in place."""
    if install["kind"] == "bin":
        return [install["dest"]]
    return [str(Path(install["dest"]) / name) for name in install.get("check", [])]


def _install(source: Path, install: dict[str, Any]) -> None:
    dest = Path(install["dest"])
    if install["kind"] == "bin":
        dest.parent.mkdir(parents=True, exist_ok=True)
        _replace(source, dest)
        return
    strip = int(install.get("strip", 0))
    only = set(install.get("only", []))
    with tarfile.open(source) as archive:
        for member in archive.getmembers():
            # A leading "/" is dropped (as tar does): an absolute member lands under `dest` too.
            parts = [p for p in Path(member.name).parts if p not in (".", "", "/")]
            if not member.isfile() or len(parts) <= strip or ".." in parts:
                continue
            relative = Path(*parts[strip:])
            if only and relative.name not in only:
                continue
            extracted = archive.extractfile(member)
            if extracted is None:
                continue
            target = dest / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            temporary = target.with_name(f".{target.name}.kubeplat-new")
            with temporary.open("wb") as handle:
                shutil.copyfileobj(extracted, handle)
            _executable(temporary, target)


def _replace(source: Path, dest: Path) -> None:
    temporary = dest.with_name(f".{dest.name}.kubeplat-new")
    shutil.copyfile(source, temporary)
    _executable(temporary, dest)


def _executable(temporary: Path, dest: Path) -> None:
    """Move an executable into place atomically: a running binary is never written over."""
    os.chmod(temporary, 0o755)
    os.replace(temporary, dest)


def _read_record(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def _write_record(path: Path, data: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.new")
    temporary.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(temporary, path)
