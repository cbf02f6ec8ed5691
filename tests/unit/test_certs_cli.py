"""`kubeplat certs`: the table, the cache's files and modes, reuse, rotation, --check."""

from __future__ import annotations

import datetime as dt
import stat
from pathlib import Path

from kubeplat import config, pki
from kubeplat.pkistore import LocalStore

PKI = Path(".kubeplat/example/pki")


def fingerprint(name: str) -> bytes:
    return (PKI / f"{name}.crt").read_bytes()


def test_certs_prints_table_and_writes_files(kubeplat, environments: Path) -> None:  # type: ignore[no-untyped-def]
    result = kubeplat("certs", "-e", "example")
    assert result.code == 0, result.err
    header = result.out.splitlines()[0].split()
    assert header == ["NAME", "SUBJECT", "ISSUER", "EXPIRES", "DAYS", "LEFT"]
    assert "apiserver  " in result.out and "CN=kube-apiserver" in result.out
    assert "issued ca (missing)" in result.err
    for key in PKI.rglob("*.key"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    assert stat.S_IMODE((PKI / "etcd").stat().st_mode) == 0o700


def test_second_run_reuses_and_rotate_changes_only_one(kubeplat, environments: Path) -> None:  # type: ignore[no-untyped-def]
    kubeplat("certs", "-e", "example")
    before = {p: p.read_bytes() for p in PKI.rglob("*") if p.is_file()}
    again = kubeplat("certs", "-e", "example")
    assert again.code == 0
    assert "nothing to issue" in again.err
    assert {p: p.read_bytes() for p in PKI.rglob("*") if p.is_file()} == before
    rotated = kubeplat("certs", "-e", "example", "--rotate", "apiserver")
    assert rotated.code == 0, rotated.err
    after = {p: p.read_bytes() for p in PKI.rglob("*") if p.is_file()}
    assert {p.name for p in after if after[p] != before[p]} == {"apiserver.crt", "apiserver.key"}


def test_rotate_ca_says_so_first(kubeplat, environments: Path) -> None:  # type: ignore[no-untyped-def]
    kubeplat("certs", "-e", "example")
    ca = fingerprint("ca")
    result = kubeplat("certs", "-e", "example", "--rotate", "ca")
    assert result.code == 0
    assert result.err.index("Warning: rotating ca") < result.err.index("issued ca (rotated)")
    assert fingerprint("ca") != ca


def test_check_fails_when_a_certificate_expires_soon(kubeplat, environments: Path) -> None:  # type: ignore[no-untyped-def]
    env = config.load("example")
    old = pki.ensure(env, {}, now=dt.datetime.now(dt.UTC) - dt.timedelta(days=350)).files
    LocalStore(env.workdir / "pki").save(old)
    result = kubeplat("certs", "-e", "example", "--check")
    assert result.code == 1
    assert "Error: certificates expire within 90 days: apiserver (14 days)" in result.err
    assert "apiserver" in result.out  # the table is still shown
    assert fingerprint("apiserver") == old["apiserver.crt"]  # --check changes nothing
    assert kubeplat("certs", "-e", "example").code == 0
    assert kubeplat("certs", "-e", "example", "--check").code == 0


def test_check_without_pki(kubeplat, environments: Path) -> None:  # type: ignore[no-untyped-def]
    result = kubeplat("certs", "-e", "example", "--check")
    assert result.code == 1
    assert "Error: no certificates in" in result.err


def test_damaged_cache_is_a_clear_error(kubeplat, environments: Path) -> None:  # type: ignore[no-untyped-def]
    kubeplat("certs", "-e", "example")
    (PKI / "ca.key").unlink()
    result = kubeplat("certs", "-e", "example")
    assert result.code == 1
    assert "Error: ca.key is missing but its other half exists" in result.err
    assert "Traceback" not in result.err
    assert not (PKI / "ca.key").exists()  # no silent new CA


def test_bad_rotate_name_and_combination(kubeplat, environments: Path) -> None:  # type: ignore[no-untyped-def]
    result = kubeplat("certs", "-e", "example", "--rotate", "nope")
    assert result.code == 1
    assert "Error: no certificate named 'nope'" in result.err
    assert kubeplat("certs", "-e", "example", "--rotate", "ca", "--check").code == 2


def test_existing_public_key(kubeplat, environments: Path) -> None:  # type: ignore[no-untyped-def]
    (environments / "id_rsa.pub").write_text(
        "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7 op@example\n"
    )
    path = environments / "example.tfvars"
    path.write_text(path.read_text() + 'ssh_public_key = "id_rsa.pub"\n')
    assert kubeplat("certs", "-e", "example").code == 0
    assert (PKI / "ssh" / "id_ed25519.pub").read_text().startswith("ssh-rsa AAAAB3")
    assert not (PKI / "ssh" / "id_ed25519").exists()


def test_private_key_given_as_public_key_is_refused(kubeplat, environments: Path) -> None:  # type: ignore[no-untyped-def]
    (environments / "key").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nxx\n")
    path = environments / "example.tfvars"
    path.write_text(path.read_text() + 'ssh_public_key = "key"\n')
    result = kubeplat("certs", "-e", "example")
    assert result.code == 1
    assert "ssh_public_key:" in result.err and "is a private key" in result.err


def test_certs_json(kubeplat, environments: Path) -> None:  # type: ignore[no-untyped-def]
    import json

    result = kubeplat("certs", "-e", "example", "-o", "json")
    assert result.code == 0
    rows = json.loads(result.out)
    assert [r["name"] for r in rows][:4] == ["ca", "front-proxy-ca", "etcd/ca", "kubelet-ca"]
    assert all(r["days_left"] > 300 for r in rows)


def test_rotation_and_buckets_need_a_running_environment(kubeplat, environments: Path) -> None:  # type: ignore[no-untyped-def]
    for args in (("certs", "rotation", "-e", "example"), ("buckets", "-e", "example")):
        result = kubeplat(*args)
        assert result.code == 1, result.err
        assert (
            "Error: the sandbox is not running, so the sandbox environment has nothing to show"
            in result.err
        )
        assert "Traceback" not in result.err
    assert kubeplat("certs", "rotation", "-e", "example", "--force", "extra").code == 2
    misplaced = kubeplat("certs", "-e", "example", "rotation")
    assert misplaced.code == 2 and "give the options after the subcommand" in misplaced.err
