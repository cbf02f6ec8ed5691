"""The node agent's details a node operator would notice: its options as `--help` and a missing
option say them, its journal lines' format, how long a probe may wait, which certificate of a
bundle it reads, a kubelet CA without an authority key identifier, each kubelet certificate
renewed on its own, and the earlier nodes a roll waits for.

The stand-ins (S3, the health reporter, the clock, certificates made with the cryptography
package) are tests/unit/test_node_agent_unit.py's."""

from __future__ import annotations

import logging
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from kubeplat.node import agent as node_agent
from tests.unit import test_node_agent_unit as base
from tests.unit.test_node_agent_unit import (
    BUCKET,
    MANIFESTS,
    Clock,
    RecordingS3,
    RecordingStatus,
    issue,
    kubelet_node,
    link,
    once,
    pem,
    put,
)

# test_node_agent_unit.py's fixtures, by name.
certs = base.certs
clients = base.clients
clock = base.clock
ec2 = base.ec2
s3 = base.s3
tls_files = base.tls_files

# -- the program's options ------------------------------------------------------------------------


def test_the_program_names_itself_and_every_option_in_its_help(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        node_agent.main(["--help"])
    out = capsys.readouterr().out
    assert "\n\nKeep a node's manifests (and PKI) in step with the secrets bucket.\n" in out
    text = " ".join(out.split())
    assert text.startswith("usage: kubeplat-node agent [-h] --bucket BUCKET --prefix PREFIX")
    for line in (
        "--prefix PREFIX the manifests' prefix",
        "--target TARGET the manifests' folder",
        "--pki-prefix PKI_PREFIX a PKI prefix (common, then the layer's)",
        "--reload UNIT=FILE,… restart UNIT when one of these PKI files changes",
        "--once one pass, then exit",
        "--roll ENVIRONMENT/LAYER take turns with the layer's other nodes (etcd, control plane) "
        "and report",
        "--report ENVIRONMENT/LAYER report what this node runs (no turns)",
        "--readyz READYZ an API server's /readyz, when it runs one",
        "--etcd-health ETCD_HEALTH etcd's /health, when it runs etcd",
        "--kubelet-client KUBELET_CLIENT the kubelet's client certificate: renewed when a "
        "rotated kubelet CA signed it",
        "--kubelet-serving KUBELET_SERVING the kubelet's serving certificate: renewed when a "
        "rotated kubelet CA signed it",
        "--ssh-user SSH_USER keep this user's authorized_keys equal to the PKI's "
        "ssh/authorized_keys",
        "--root ROOT where /etc/passwd and homes are (tests)",
    ):
        assert line in text, line


def test_the_bucket_prefix_and_target_are_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        node_agent.main([])
    assert raised.value.code == 2
    assert capsys.readouterr().err.endswith(
        "error: the following arguments are required: --bucket, --prefix, --target\n"
    )


def test_the_journal_lines_are_the_agents_name_and_message(
    s3: RecordingS3,
    tmp_path: Path,
    clients: list[tuple[str, str]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """As under systemd, where nothing set logging up before: info lines on stderr, each
    `kubeplat-agent: message`."""
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    monkeypatch.setattr(root, "level", logging.WARNING)
    once(monkeypatch)
    put(s3, MANIFESTS + "pod.yaml", b"kind: Pod\n")
    target = tmp_path / "manifests"
    argv = ["--bucket", BUCKET, "--prefix", MANIFESTS, "--target", str(target), "--once"]
    assert node_agent.main([*argv, "--region", "eu-west-1"]) == 0
    assert capsys.readouterr().err == "kubeplat-agent: synced +pod.yaml\n"


# -- probes ---------------------------------------------------------------------------------------


@pytest.fixture
def urlopen_timeouts(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The timeout each probe's request is made with (the request then fails: no server)."""
    asked: list[Any] = []

    def urlopen(url: Any, data: Any = None, timeout: Any = "none given", **kwargs: Any) -> Any:
        asked.append(timeout)
        raise OSError("connection refused")

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    return asked


def test_a_readyz_probe_waits_five_seconds_at_most(
    tls_files: Path, urlopen_timeouts: list[Any]
) -> None:
    assert (
        node_agent.readyz("https://127.0.0.1:1/readyz", str(tls_files / "etcd/ca.crt"))() is False
    )
    assert urlopen_timeouts == [5]


def test_an_etcd_health_probe_waits_five_seconds_at_most(
    tls_files: Path, urlopen_timeouts: list[Any]
) -> None:
    assert node_agent.etcd_health("https://127.0.0.1:1/health", tls_files)() is False
    assert urlopen_timeouts == [5]


# -- kubelet certificates -------------------------------------------------------------------------


def test_a_bundles_first_certificate_is_the_one_read(certs: dict[str, Any]) -> None:
    """A kubelet-ca.crt holding the new CA then the old one (during a rotation): the first."""
    new, old = certs["new-ca"][0], certs["old-ca"][0]
    assert node_agent.key_ids(pem(new) + pem(old)) == node_agent.key_ids(pem(new))


def test_a_kubelet_ca_without_an_authority_key_id_still_tells_current(tmp_path: Path) -> None:
    """The signer is the CA's subject key identifier; a self-signed CA may name no authority."""
    ca = issue("kubelet-ca plain", ca=True, aki="")
    leaf, _ = issue("system:node:a", ca)
    node = kubelet_node(tmp_path, ca[0], lambda unit: None)
    node.kubelet_client = link(tmp_path, "client", pem(leaf))
    assert node.kubelet_client_state() == "current"


def test_an_old_serving_certificate_is_renewed_beside_a_current_client_one(
    tmp_path: Path, certs: dict[str, Any], clock: Clock
) -> None:
    restarted: list[str] = []
    node = kubelet_node(tmp_path, certs["new-ca"][0], restarted.append)
    node.kubelet_client = link(tmp_path, "client", pem(certs["new-leaf"][0]))
    node.kubelet_serving = link(tmp_path, "serving", pem(certs["old-leaf"][0]))
    node.renew_kubelet_client()
    assert node.kubelet_client.is_symlink()
    assert not node.kubelet_serving.is_symlink()
    assert restarted == ["kubelet.service"]


# -- taking turns ---------------------------------------------------------------------------------


def test_a_silent_earlier_node_does_not_hide_a_busy_one_after_it(clock: Clock) -> None:
    status = RecordingStatus("i-c")
    status.peer("i-b", "older", ready=False)  # i-a never reported: gone, not waited for
    roll = node_agent.Roll(lambda: ["i-a", "i-b", "i-c"], status, "i-c", lambda: True)
    assert roll._blockers("w" * 64) == ["i-b"]
