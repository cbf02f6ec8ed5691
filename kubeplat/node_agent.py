#!/usr/bin/env python3
"""kubeplat node agent: keep a directory in step with a prefix of the secrets bucket.

Runs on every node (python3 and boto3 from the distribution, nothing else) as
`kubeplat-agent --bucket B --prefix ENV/manifests/LAYER/ --target /etc/kubernetes/manifests`.
Every interval it lists the prefix; an object whose ETag changed is downloaded and, when its
bytes differ from the file on disk, written to a temporary file and renamed into place, so the
kubelet never reads half a manifest. Files it wrote whose object is gone are removed; files it
did not write are never touched. Unchanged files keep their mtime.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

STATE_NAME = ".kubeplat-agent.json"
log = logging.getLogger("kubeplat-agent")


class Agent:
    """One sync loop over one prefix and one target directory."""

    def __init__(self, client: Any, bucket: str, prefix: str, target: Path) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix if prefix.endswith("/") else prefix + "/"
        self.target = target
        self.state_path = target / STATE_NAME

    def _state(self) -> dict[str, str]:
        try:
            data = json.loads(self.state_path.read_text())
            return {str(k): str(v) for k, v in data.items()}
        except (OSError, ValueError):
            return {}

    def _listing(self) -> dict[str, str]:
        """Object name (relative to the prefix) → ETag, for every object under the prefix."""
        found: dict[str, str] = {}
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
            for item in page.get("Contents", []):
                name = item["Key"][len(self.prefix) :]
                # Only plain files directly under the prefix: no sub-folders, no hidden files.
                if name and "/" not in name and not name.startswith("."):
                    found[name] = item["ETag"]
        return found

    def sync_once(self) -> list[str]:
        """One pass; returns what changed, as `+name`, `~name` or `-name`."""
        self.target.mkdir(parents=True, exist_ok=True)
        known = self._state()
        listing = self._listing()
        changes: list[str] = []
        for name, etag in sorted(listing.items()):
            path = self.target / name
            if known.get(name) == etag and path.exists():
                continue
            body = self.client.get_object(Bucket=self.bucket, Key=self.prefix + name)["Body"].read()
            existed = path.exists()
            if not existed or path.read_bytes() != body:
                _atomic_write(path, body)
                changes.append(("~" if existed else "+") + name)
            known[name] = etag
        for name in sorted(set(known) - set(listing)):
            (self.target / name).unlink(missing_ok=True)
            del known[name]
            changes.append("-" + name)
        _atomic_write(self.state_path, json.dumps(known, sort_keys=True).encode())
        return changes

    def run(self, interval: float) -> None:
        """Sync forever, every `interval` seconds; a failed pass is logged and retried."""
        stopping = []
        signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
        while not stopping:
            started = time.monotonic()
            try:
                for change in self.sync_once():
                    log.info("synced %s", change)
            except Exception as exc:  # keep running: the next pass may succeed
                log.warning("sync failed: %s", exc)
            time.sleep(max(0.0, interval - (time.monotonic() - started)))


def _atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` so a reader sees the old file or the new one, never a part."""
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Sync a bucket prefix to a directory.")
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--target", required=True, type=Path)
    parser.add_argument("--region", default=os.environ.get("AWS_REGION"))
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--once", action="store_true", help="one pass, then exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)
    import boto3

    client = boto3.client("s3", region_name=args.region)
    agent = Agent(client, args.bucket, args.prefix, args.target)
    if args.once:
        for change in agent.sync_once():
            log.info("synced %s", change)
        return 0
    agent.run(args.interval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
