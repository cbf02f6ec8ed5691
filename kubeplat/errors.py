"""kubeplat's exceptions: every failure a user can hit is one of these.

The core raises them; the CLI's single exit point (`kubeplat.cli.main`) prints `Error: …` and
the hint, and maps them to exit codes. Each carries a one-line message and a hint.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


class KubeplatError(Exception):
    """Base of every error kubeplat reports to the user: a message and a hint."""

    exit_code = 1

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class EnvironmentNotFound(KubeplatError):
    """The environment named with -e/--env has no file."""

    def __init__(self, name: str, searched: Path, available: Sequence[str]) -> None:
        hint = (
            f"available environments: {', '.join(available)}"
            if available
            else f"create one with: kubeplat init {name}"
        )
        super().__init__(f"environment {name!r} not found: no file {searched}", hint)
        self.name = name
        self.searched = searched


@dataclass(frozen=True)
class Problem:
    """One thing wrong in an environment file, located as precisely as possible."""

    file: Path
    variable: str | None
    message: str
    hint: str = ""
    line: int | None = None
    warning: bool = False

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else str(self.file)
        what = f"{self.variable}: " if self.variable else ""
        text = f"{where}: {what}{self.message}"
        return f"{text} (hint: {self.hint})" if self.hint else text


class ConfigError(KubeplatError):
    """An environment file has one or more problems; all of them are carried."""

    def __init__(self, file: Path, problems: Sequence[Problem]) -> None:
        errors = [p for p in problems if not p.warning]
        count = len(errors)
        noun = "problem" if count == 1 else "problems"
        super().__init__(
            f"{file} has {count} {noun}",
            "fix each line above, then run: kubeplat validate -e "
            + (file.stem if file.suffix == ".tfvars" else str(file)),
        )
        self.file = file
        self.problems = list(problems)


class ToolMissing(KubeplatError):
    """An external program kubeplat needs is not installed or too old."""


class TerraformFailed(KubeplatError):
    """A Terraform command exited non-zero."""


# What to do about an error of the file system, by errno.
OS_HINTS = {
    errno.ENOSPC: "the disk is full: free some space, then run the same command again",
    errno.EDQUOT: "the disk quota is exhausted: free some space, then run the same command again",
    errno.EROFS: "that file system is read-only: run from a writable checkout",
    errno.EACCES: "check the permissions of that path (and of the folders above it)",
    errno.EPERM: "check the permissions of that path (and of the folders above it)",
    errno.ENAMETOOLONG: "use a shorter path",
    errno.ELOOP: "a symbolic link there points back at itself: fix or remove it",
    errno.ENOENT: "check that the path exists",
    errno.ENOTDIR: "a part of that path is a file, not a folder",
    errno.EISDIR: "that path is a folder; a file belongs there",
}


def os_hint(exc: OSError, default: str = "check that path and try again") -> str:
    """The hint for a file-system error."""
    return OS_HINTS.get(exc.errno or 0, default)
