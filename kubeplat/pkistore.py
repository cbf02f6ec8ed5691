"""The local PKI cache, `.kubeplat/ENV/pki/`: directories 0700, private files 0600.

Until the secrets bucket holds the PKI it is the store; afterwards it is a cache of the bucket.
Writes are atomic (write a temporary file, then rename) so an interrupted run never leaves half
a key behind.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from kubeplat.errors import KubeplatError
from kubeplat.pki import is_private


class LocalStore:
    """PKI files under one directory, keyed by their path relative to it."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def load(self) -> dict[str, bytes]:
        """Every file of the cache (empty when there is none yet)."""
        if not self.root.exists():
            return {}
        if not self.root.is_dir():
            raise KubeplatError(f"{self.root} is not a directory", "move it away; it holds the PKI")
        found: dict[str, bytes] = {}
        for path in sorted(self.root.rglob("*")):
            relative = path.relative_to(self.root).as_posix()
            # kubeconfig/ holds the admin kubeconfig next to the keys; it is not a PKI file.
            if (
                path.is_file()
                and not path.name.startswith(".")
                and not relative.startswith("kubeconfig/")
            ):
                try:
                    found[relative] = path.read_bytes()
                except OSError as exc:
                    raise KubeplatError(
                        f"cannot read {path}: {exc.strerror}", "check the file's permissions"
                    ) from None
        return found

    def save(self, files: Mapping[str, bytes], removed: Iterable[str] = ()) -> None:
        """Write `files` (only those whose bytes changed) and delete `removed`."""
        self._mkdir(self.root)
        ignore = self.root.parent.parent / ".gitignore"
        if self.root.parent.parent.name == ".kubeplat" and not ignore.exists():
            # Whatever the repository's own .gitignore says, .kubeplat/ is never committed.
            ignore.write_text(
                "# kubeplat's working state: keys and Terraform data. Never commit it.\n*\n"
            )
        for name, data in sorted(files.items()):
            target = self.root / name
            if target.exists() and target.read_bytes() == data:
                continue
            self._mkdir(target.parent)
            temporary = target.with_name(f".{target.name}.tmp")
            mode = 0o600 if is_private(name) else 0o644
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(temporary, mode)
            os.replace(temporary, target)
        for name in removed:
            (self.root / name).unlink(missing_ok=True)

    def _mkdir(self, path: Path) -> None:
        current = path
        to_create = []
        while not current.exists():
            to_create.append(current)
            current = current.parent
        for directory in reversed(to_create):
            directory.mkdir(mode=0o700)
        if path == self.root or self.root in path.parents:
            os.chmod(path, 0o700)
