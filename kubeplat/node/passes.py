"""The loop of a node program that works in passes (the CSR approver, the roll controller).

Python 3.9 compatible (node images ship 3.9 to 3.12).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from typing import Callable


def arguments(prog: str, description: str, interval: float) -> argparse.ArgumentParser:
    """The options every such program takes: its environment and region, the API server it
    talks to as the control plane's addons identity (renewed in place by the agent), and its
    pace."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--environment", required=True)
    parser.add_argument("--region", default="")
    parser.add_argument("--api", default="https://127.0.0.1:6443")
    parser.add_argument("--ca", default="/etc/kubernetes/pki/ca.crt")
    parser.add_argument("--cert", default="/etc/kubernetes/pki/apiserver-kubelet-client.crt")
    parser.add_argument("--key", default="/etc/kubernetes/pki/apiserver-kubelet-client.key")
    parser.add_argument("--interval", type=float, default=interval)
    parser.add_argument("--once", action="store_true", help="one pass, then exit")
    return parser


def parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """The parsed options, with the journal's log format set up."""
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)
    return args


def forever(do_pass: Callable[[], list[str]], log: logging.Logger, interval: float,
            once: bool = False) -> int:  # fmt: skip
    """Run `do_pass` every `interval` seconds until SIGTERM (or once), logging what each pass
    says: a line the pass before said too is not said again (a wait is said once, not every
    pass), and a failed pass (AWS or the API server not answering yet) is a warning, and the
    next pass tries again."""
    stopping: list[bool] = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    said: set[str] = set()
    while not stopping:
        try:
            lines = do_pass()
            for line in lines:
                if line not in said:
                    log.info("%s", line)
            said = set(lines)
        except Exception as exc:
            message = f"pass failed: {type(exc).__name__}: {exc}"
            if message not in said:
                log.warning("%s", message)
            said = {message}
        if once:
            return 0
        time.sleep(interval)
    return 0
