"""Download what the node-boot tier needs, before the tests: `python -m tests.node.prepare`.

The tests themselves send traffic only to loopback and to their own namespaces, so everything
that comes from Debian's mirror is fetched here, once, into the cache the tests read:

- the Debian 12 root filesystem the nodes boot (debootstrap; harness.rootfs);
- Debian's containerd, runc and CNI plugin packages, unpacked, from which the tier's artifact
  mirror is built (mirror.fetch_sources).

.ci/run calls this before `pytest -m node_boot`; run it by hand (as root) before running the
tier locally. A second run finds the cache and returns at once.
"""

from __future__ import annotations

import sys
import time

from tests.node import harness, mirror


def main() -> int:
    reason = harness.missing_prerequisites()
    if reason:
        print(f"the node-boot tier cannot run on this machine: {reason}", file=sys.stderr)
        return 1
    started = time.monotonic()
    print(f"root filesystem: {harness.rootfs()}", flush=True)
    print(f"runtime packages: {mirror.fetch_sources(mirror.CACHE)}", flush=True)
    print(f"ready in {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
