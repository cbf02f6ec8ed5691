"""`kubeplat-node COMMAND …`: the one entry point of the node programs.

On a node it is `/opt/kubeplat/bin/kubeplat-node`; on an operator's machine (tests, a look at
the code) `python -m kubeplat.node`.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

COMMANDS = {
    "bootstrap": ("bootstrap", "bring this node to what its layer needs (every boot)"),
    "agent": ("agent", "keep the layer's manifests in step with the secrets bucket"),
    "etcd-member": ("etcd", "prepare: decide how this etcd member starts; watch: promote, prune"),
    "csr-approver": (
        "approver",
        "approve kubelet serving certificates of this environment's nodes",
    ),
    "roller": ("roller", "order the layers' instance refreshes; drain leaving nodes"),
    "status": ("", "print this node's bootstrap record"),
    "account": ("", "print this instance's AWS account id (its identity document)"),
}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] not in COMMANDS:
        lines = [f"  {name:<12} {text}" for name, (_, text) in COMMANDS.items()]
        print("usage: kubeplat-node COMMAND [options]\n" + "\n".join(lines), file=sys.stderr)
        return 2
    if args[0] == "status":
        return status(Path(args[1]) if len(args) > 1 else Path("/var/lib/kubeplat/status.json"))
    if args[0] == "account":
        return account()
    module = importlib.import_module(f".{COMMANDS[args[0]][0]}", __package__)
    from .aws import NoCredentials

    try:
        code: int = module.main(args[1:])
    except NoCredentials as exc:  # one line in the journal; the unit starts it again
        print(f"kubeplat-node {args[0]}: {exc}", file=sys.stderr)
        return 1
    return code


def status(path: Path) -> int:
    """The bootstrap record, one line a step; exit 0 when done, 1 when failed, 3 when booting."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        print(f"kubeplat: no bootstrap record at {path} ({exc})", file=sys.stderr)
        return 1
    print(f"{data.get('instance', '?')} {data.get('layer', '?')}: {data.get('state', '?')}")
    for step in data.get("steps", []):
        detail = step.get("error") or step.get("note") or ""
        name, state, attempts = step.get("name", "?"), step.get("state", "?"), step.get("attempts")
        print(f"  {name:<10} {state:<8} x{attempts}  {detail}")
    if data.get("health"):
        print(f"  health: {data['health']}")
    return {"done": 0, "failed": 1}.get(str(data.get("state")), 3)


def account() -> int:
    """The account id of this instance, from its identity document (the instance metadata)."""
    from .aws import imds

    try:
        document = json.loads(imds("dynamic/instance-identity/document"))
        print(document["accountId"])
    except (OSError, ValueError, KeyError) as exc:
        print(f"kubeplat-node account: no identity document: {exc}", file=sys.stderr)
        return 1
    return 0


def entry() -> None:
    """The node programs' one exit point (`kubeplat-node`, `python -m kubeplat.node`): the
    commands return their exit code; only this turns it into the process's."""
    sys.exit(main())
