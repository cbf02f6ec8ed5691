"""The node user's authorized_keys, installed from the PKI by the bootstrap's `ssh` step and
kept in step by the agent (`kubeplat/node/sshkeys.py`), in a temporary root: owner, modes,
rewrite only on change, and refusals. The node-boot tier has sshd itself accept and refuse the
keys (tests/node/test_boot.py)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from kubeplat.node import bootstrap, sshkeys

OLD = b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOldOldOldOldOldOldOldOldOldOldOldOldOldOldO\n"
NEW = b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINewNewNewNewNewNewNewNewNewNewNewNewNewNewN\n"
UID, GID = 4242, 4343


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").write_text(
        "root:x:0:0:root:/root:/bin/bash\n"
        f"core:x:{UID}:{GID}:kubeplat node user:/home/core:/bin/bash\n"
    )
    (root / "home/core").mkdir(parents=True)
    (root / "etc/kubernetes/pki/ssh").mkdir(parents=True)
    (root / "etc/kubernetes/pki/ssh/authorized_keys").write_bytes(OLD)
    return root


def installed(root: Path) -> tuple[bytes, int, int, int, int]:
    target = root / "home/core/.ssh/authorized_keys"
    info, folder = target.stat(), target.parent.stat()
    return (
        target.read_bytes(),
        info.st_uid,
        info.st_gid,
        stat.S_IMODE(info.st_mode),
        stat.S_IMODE(folder.st_mode),
    )


def test_installed_as_the_user_owns_it_and_rewritten_only_when_the_keys_change(
    root: Path,
) -> None:
    pki = root / "etc/kubernetes/pki"
    assert sshkeys.install(pki, "core", root) == "home/core/.ssh/authorized_keys: 1 key(s)"
    assert installed(root) == (OLD, UID, GID, 0o600, 0o700)
    assert (root / "home/core/.ssh").stat().st_uid == UID
    inode = (root / "home/core/.ssh/authorized_keys").stat().st_ino
    assert sshkeys.install(pki, "core", root) == ""  # every agent pass: nothing to do
    assert (root / "home/core/.ssh/authorized_keys").stat().st_ino == inode
    # A rotation: the new key beside the old one, then the old one dropped.
    (pki / "ssh/authorized_keys").write_bytes(OLD + NEW)
    assert sshkeys.install(pki, "core", root).endswith("2 key(s)")
    assert installed(root)[0] == OLD + NEW
    (pki / "ssh/authorized_keys").write_bytes(NEW)
    sshkeys.install(pki, "core", root)
    assert installed(root)[0] == NEW
    # Keys added by hand, or a mode sshd would refuse (StrictModes), are put right.
    target = root / "home/core/.ssh/authorized_keys"
    target.write_bytes(NEW + OLD)
    os.chmod(target, 0o664)
    assert sshkeys.install(pki, "core", root)
    assert installed(root) == (NEW, UID, GID, 0o600, 0o700)


def test_refusals_name_what_is_wrong(root: Path, tmp_path: Path) -> None:
    pki = root / "etc/kubernetes/pki"
    with pytest.raises(RuntimeError, match="no user nobody"):
        sshkeys.install(pki, "nobody", root)
    with pytest.raises(RuntimeError, match="no keys to install"):
        sshkeys.install(tmp_path / "empty", "core", root)
    # Never write through a link the user made (this runs as root).
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (root / "home/core/.ssh").symlink_to(elsewhere)
    with pytest.raises(RuntimeError, match="symbolic link"):
        sshkeys.install(pki, "core", root)
    assert not (elsewhere / "authorized_keys").exists()


def test_the_bootstrap_installs_them_first_and_never_fails_the_node_for_them(root: Path) -> None:
    config = {
        "environment": "dev",
        "layer": "compute",
        "region": "eu-west-1",
        "node_os": "debian-12",
        "roles": ["worker"],
        "artifacts": [],
        "services": [],
        "ssh_user": "core",
        "pki_dir": "/etc/kubernetes/pki",
    }
    machine = bootstrap.Bootstrap(config, root=root)
    assert machine.steps()[0].name == "ssh"
    assert machine.ssh() == "home/core/.ssh/authorized_keys: 1 key(s)"
    assert installed(root)[0] == OLD
    assert machine.ssh() == "already in place"
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    note = machine.ssh()
    assert note.startswith("not installed (no user core") and "the agent tries again" in note
