"""kubeplat with the node-boot tier's pins: `python tests/node/pinned_kubeplat.py ARGS…`.

The tier's artifact mirror serves Debian's and PyPI's builds and stand-ins (tests/node/mirror.py),
not upstream's release files, so their digests replace the amd64 pins of the versions in use
(read from the JSON file named by KUBEPLAT_TEST_PINS). Everything else is kubeplat as shipped:
the nodes check these digests with kubeplat's own code and refuse anything else.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def apply(path: Path) -> None:
    from kubeplat import artifacts

    pins = json.loads(path.read_text())
    amd64 = pins["amd64"]
    for name in ("kubelet", "kubectl"):
        artifacts.KUBERNETES[pins["kubernetes"]][name]["amd64"] = amd64[name]
    artifacts.ETCD[pins["etcd"]]["amd64"] = amd64["etcd"]
    for artifact in artifacts.RUNTIME:
        artifact.sha256["amd64"] = amd64[artifact.name]


if __name__ == "__main__":
    apply(Path(os.environ["KUBEPLAT_TEST_PINS"]))
    from kubeplat.cli import main

    main(sys.argv[1:])
