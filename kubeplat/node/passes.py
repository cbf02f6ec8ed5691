"""The loop of a node program that works in passes (the CSR approver, the roll controller).

Python 3.9 compatible (node images ship 3.9 to 3.12).
"""

from __future__ import annotations

import logging
import signal
import time
from typing import Callable


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
