"""Output: status and progress on stderr, data on stdout.

On a terminal, rich colours and tables; without one, or with NO_COLOR, plain lines that a CI
log or a pipe can read. `-o json` output goes through `data_json` and nothing else touches stdout.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from functools import cache
from typing import Any, TextIO

_STYLES = {"ok": "green", "warn": "yellow", "error": "bold red", "dim": "dim", "info": "cyan"}


_debug = False


def enable_debug(on: bool = True) -> None:
    """--debug: show tracebacks and every line of Terraform's output (set for each command)."""
    global _debug
    _debug = on


def debug_enabled() -> bool:
    """Whether --debug was given."""
    return _debug


def debug(message: str) -> None:
    """A line shown only with --debug, on stderr."""
    if _debug:
        print(message, file=sys.stderr, flush=True)


def fancy(stream: TextIO) -> bool:
    """True when `stream` is a terminal and NO_COLOR is not set."""
    return "NO_COLOR" not in os.environ and stream.isatty()


@cache
def _rich(stderr: bool) -> Any:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def status(message: str, style: str = "info") -> None:
    """A progress or status line, on stderr."""
    if fancy(sys.stderr):
        from rich.markup import escape

        _rich(True).print(f"[{_STYLES.get(style, style)}]{escape(message)}[/]")
    else:
        print(message, file=sys.stderr, flush=True)


def warn(message: str) -> None:
    """A warning, on stderr."""
    status(f"Warning: {message}", "warn")


def error(message: str, hint: str = "") -> None:
    """The one `Error: …` line and its hint, on stderr."""
    status(f"Error: {message}", "error")
    if hint:
        status(f"Hint: {hint}", "dim")


def data(text: str) -> None:
    """A line of the command's result, on stdout."""
    print(text, flush=True)


def data_json(document: Any) -> None:
    """The command's result as one JSON document on stdout."""
    json.dump(document, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")
    sys.stdout.flush()


def table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    title: str = "",
    row_styles: Sequence[str] | None = None,
) -> None:
    """A table of results on stdout: rich on a terminal, aligned plain text otherwise."""
    # Rich's table on a terminal wide enough for every cell whole; otherwise (or without a
    # terminal) aligned plain lines, which are narrower and never cut what a user copies.
    if fancy(sys.stdout) and _fits(headers, rows):
        from rich.table import Table

        grid = Table(title=title or None)
        for header in headers:
            grid.add_column(header, no_wrap=True)
        for index, row in enumerate(rows):
            style = _STYLES.get(row_styles[index], "") if row_styles else ""
            grid.add_row(*row, style=style or None)
        _rich(False).print(grid)
        return
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    for line in lines:
        print(line.rstrip(), flush=True)


def _fits(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> bool:
    """Whether rich's boxed table (3 columns of border and padding per cell) fits the terminal."""
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    return sum(widths) + 3 * len(widths) + 1 <= int(_rich(False).width)


def clock() -> str:
    """The wall-clock time that starts a plain progress line."""
    import time

    return time.strftime("%H:%M:%S")


class Activity:
    """What a long step is doing, while it does it: on a terminal (and without NO_COLOR) a
    spinner line redrawn four times a second with the elapsed time, removed when the step ends;
    otherwise one timestamped line when the step starts (CI logs, pipes)."""

    def __init__(self, text: str, detail: Any = None) -> None:
        import time

        self.text = text
        # A callable giving the rest of the line at each redraw (e.g. resources in flight).
        self.detail = detail
        self.started = time.monotonic()
        self._live: Any = None

    def __rich__(self) -> Any:
        import time

        from rich.text import Text

        elapsed = time.monotonic() - self.started
        frame = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"[int(elapsed * 4) % 10]  # one frame per redraw
        line = Text(f"{frame} {self.text} ({elapsed:.0f}s)", style="cyan")
        more = self.detail() if self.detail is not None else ""
        if more:
            line.append(f"  {more}", style="dim")
        line.truncate(max(_rich(True).width - 1, 20), overflow="ellipsis")
        return line

    def __enter__(self) -> Activity:
        if fancy(sys.stderr) and not _debug:
            from rich.live import Live

            self._live = Live(
                self,
                console=_rich(True),
                transient=True,
                refresh_per_second=4,
                redirect_stdout=False,
            )
            self._live.start()
        else:
            print(f"{clock()}  {self.text}", file=sys.stderr, flush=True)
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def update(self, text: str) -> None:
        """A new description of the step (a new timestamped line without a terminal)."""
        if text == self.text:
            return
        self.text = text
        if self._live is None:
            print(f"{clock()}  {text}", file=sys.stderr, flush=True)
