"""`kubeplat ssh`'s command line with hostile checkout paths, read by the real ssh.

`ssh -G` shows how ssh itself parses our options; the ProxyCommand is then run by the real ssh
(through its own `sh -c`) with a recording stand-in named `ssh` first on PATH, so no connection
is made and the test sees exactly the words the inner ssh would get.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from kubeplat.errors import KubeplatError
from kubeplat.ops import ssh_argv

SSH = shutil.which("ssh")
pytestmark = pytest.mark.skipif(SSH is None, reason="needs the ssh client (openssh-client)")

HOSTILE = [
    "plain",
    "with space",
    "$(touch PWNED)",
    "`touch PWNED`; touch PWNED",
    "it's %h %p %% ~",
    "a\tb & | > <",
]

RECORDER = """#!/usr/bin/env python3
import json, os, sys
with open(os.environ["RECORD"], "w") as out:
    json.dump(sys.argv[1:], out)
sys.exit(1)
"""


def as_configured(path: Path) -> str:
    """How `ssh -G` shows an IdentityFile: before its %-expansion, which ssh does when it
    loads the key (ssh_config(5), TOKENS: `%%` is a literal %)."""
    return str(path).replace("%", "%%")


def parsed(argv: list[str]) -> dict[str, list[str]]:
    """ssh's own view of a command line (`ssh -G`), key → values."""
    shown = subprocess.run(
        [str(SSH), "-G", *argv[1:]], capture_output=True, text=True, timeout=30, check=True
    )
    config: dict[str, list[str]] = {}
    for line in shown.stdout.splitlines():
        key, _, value = line.partition(" ")
        config.setdefault(key, []).append(value)
    return config


@pytest.mark.parametrize("name", HOSTILE)
def test_a_hostile_checkout_path_reaches_ssh_as_one_path_and_runs_nothing(
    tmp_path: Path, name: str
) -> None:
    folder = tmp_path / "checkout" / name / ".kubeplat" / "dev"
    folder.mkdir(parents=True)
    key, known = folder / "id_ed25519", folder / "known_hosts"
    key.write_text("not a real key\n")
    argv = ssh_argv(key, known, "core@10.0.0.5", jump="core@192.0.2.7")

    outer = parsed(argv)
    assert outer["identityfile"] == [as_configured(key)]
    assert outer["userknownhostsfile"] == [str(known)]
    assert outer["hostname"] == ["10.0.0.5"]

    # The real ssh runs the ProxyCommand; the stand-in records what the inner ssh would get.
    stubs = tmp_path / "bin"
    stubs.mkdir()
    (stubs / "ssh").write_text(RECORDER)
    (stubs / "ssh").chmod(0o755)
    record = tmp_path / "inner.json"
    env = {**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}", "RECORD": str(record)}
    subprocess.run(
        [str(SSH), *argv[1:], "true"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    inner = json.loads(record.read_text())
    assert inner[-3:] == ["-W", "10.0.0.5:22", "core@192.0.2.7"]
    through = parsed(["ssh", *inner[:-3], "core@192.0.2.7"])
    assert through["identityfile"] == [as_configured(key)]
    assert through["userknownhostsfile"] == [str(known)]
    assert not list(tmp_path.rglob("PWNED")), "a path ran as shell code"


def test_without_a_jump_host_there_is_no_proxy_command(tmp_path: Path) -> None:
    argv = ssh_argv(tmp_path / "absent-key", tmp_path / "known hosts", "core@192.0.2.9")
    config = parsed(argv)
    assert "proxycommand" not in config
    assert config["userknownhostsfile"] == [str(tmp_path / "known hosts")]
    assert "IdentitiesOnly=yes" not in argv  # no key: ssh's own defaults


@pytest.mark.parametrize("name", ['say "hi"', "line\nbreak"])
def test_a_path_ssh_cannot_be_given_is_a_clear_error(tmp_path: Path, name: str) -> None:
    folder = tmp_path / name
    folder.mkdir()
    with pytest.raises(KubeplatError, match="ssh cannot be given the path"):
        ssh_argv(folder / "key", folder / "known_hosts", "core@192.0.2.9")
