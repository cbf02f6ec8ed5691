"""The node user's SSH keys: its `authorized_keys` is the PKI's `ssh/authorized_keys`.

The key is not in the cloud-config (a new key would replace every node) nor an EC2 key pair
(that one stays on an instance for its life). The PKI's common prefix holds the keys every
node accepts, which the bootstrap installs first thing on every boot and the agent keeps in
step, so a rotated key (the new one authorized beside the old, then the old one dropped)
reaches every running node within one agent interval.

kubeplat owns that file: keys added to it by hand are replaced. sshd reads it as the user, so
it is a copy in the user's home (0600, the user's own), not the file in /etc/kubernetes/pki.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path
from typing import NamedTuple

SOURCE = "ssh/authorized_keys"  # relative to the PKI folder


class User(NamedTuple):
    uid: int
    gid: int
    home: Path


def lookup(name: str, root: Path = Path("/")) -> User | None:
    """`name`'s uid, gid and home from `root`/etc/passwd (None when there is no such user)."""
    try:
        lines = (root / "etc/passwd").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split(":")
        if len(fields) >= 6 and fields[0] == name:
            try:
                return User(int(fields[2]), int(fields[3]), Path(fields[5]))
            except ValueError:
                return None
    return None


def install(pki: Path, name: str, root: Path = Path("/")) -> str:
    """Make `name`'s authorized_keys hold what `pki`/ssh/authorized_keys holds.

    Returns what it did, for a log line ("" when it was already so). Raises RuntimeError when
    it cannot (no such user, no keys yet, a home that is not a plain directory).
    """
    try:
        keys = (pki / SOURCE).read_bytes()
    except OSError as exc:
        raise RuntimeError(f"no keys to install: {pki / SOURCE}: {exc.strerror}") from None
    user = lookup(name, root)
    if user is None:
        raise RuntimeError(f"no user {name} (cloud-init creates it from the cloud-config)")
    home = root / str(user.home).lstrip("/")
    folder = home / ".ssh"
    target = folder / "authorized_keys"
    for path in (home, folder):
        # Never through a symbolic link: this runs as root in a folder the user owns.
        if path.is_symlink():
            raise RuntimeError(f"{path} is a symbolic link; not writing through it")
    if not home.is_dir():
        raise RuntimeError(f"{name}'s home {home} does not exist")
    if not folder.is_dir():
        folder.mkdir(mode=0o700)
    os.chown(folder, user.uid, user.gid)
    os.chmod(folder, 0o700)
    if _same(target, keys, user):
        return ""
    descriptor, temporary = tempfile.mkstemp(prefix=".authorized_keys.", dir=str(folder))
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(keys)
            handle.flush()
            os.fsync(handle.fileno())
        os.chown(temporary, user.uid, user.gid)
        os.chmod(temporary, 0o600)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    count = sum(1 for line in keys.splitlines() if line.strip() and not line.startswith(b"#"))
    return f"{target.relative_to(root)}: {count} key(s)"


def _same(target: Path, keys: bytes, user: User) -> bool:
    try:
        info = os.lstat(target)
    except OSError:
        return False
    if not stat.S_ISREG(info.st_mode):
        return False
    if (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) != (user.uid, user.gid, 0o600):
        return False
    return target.read_bytes() == keys
