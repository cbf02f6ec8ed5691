"""The node bootstrap's step runner, operating-system map and status command, run for real
(in-process, in a temporary directory; the clock and the pauses are the test's)."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

from kubeplat.node import cli, osfamily, steps


class Clock:
    """Time that moves only when the runner sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.pauses: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.pauses.append(seconds)
        self.now += seconds


def run(step_list: list[steps.Step], tmp_path: Path) -> tuple[bool, dict, Clock, list[dict]]:  # type: ignore[type-arg]
    status = steps.Status(tmp_path / "status.json", {"instance": "i-1", "layer": "compute"})
    published: list[dict] = []  # type: ignore[type-arg]
    status.on_save = lambda data: published.append(json.loads(json.dumps(data)))
    clock = Clock()
    ok = steps.run_steps(step_list, status, clock=clock, sleep=clock.sleep)
    return ok, json.loads((tmp_path / "status.json").read_text()), clock, published


def test_a_failing_step_is_retried_with_growing_pauses_then_succeeds(tmp_path: Path) -> None:
    attempts = []

    def flaky() -> str:
        attempts.append(1)
        if len(attempts) < 4:
            raise OSError("mirror unreachable")
        return "4 files"

    ok, status, clock, published = run(
        [steps.Step("binaries", flaky, deadline_s=600, backoff_s=5)], tmp_path
    )
    assert ok and status["state"] == "done"
    assert clock.pauses == [5, 10, 20]
    record = status["steps"][0]
    assert record["name"] == "binaries"
    assert (record["state"], record["attempts"], record["note"]) == ("done", 4, "4 files")
    assert record["error"] is None
    # Every attempt was reported (the node publishes each save to the bucket).
    assert [p["steps"][0]["attempts"] for p in published] == [0, 1, 2, 3, 4, 4]
    assert [p["state"] for p in published][-2:] == ["booting", "done"]


def test_a_step_that_keeps_failing_stops_at_its_deadline_and_later_steps_never_run(
    tmp_path: Path,
) -> None:
    later = []

    def broken() -> None:
        raise OSError("connection refused")

    ok, status, clock, _ = run(
        [
            steps.Step("packages", broken, deadline_s=100, backoff_s=5, max_backoff_s=30),
            steps.Step("services", lambda: later.append(1) or None),
        ],
        tmp_path,
    )
    assert not ok and later == []
    assert status["state"] == "failed"
    assert status["error"] == "packages: connection refused"
    assert clock.pauses == [5, 10, 20, 30, 30]  # capped; stops before passing 100 s
    assert [s["name"] for s in status["steps"]] == ["packages"]


def test_permanent_trouble_is_not_retried(tmp_path: Path) -> None:
    def wrong_digest() -> None:
        raise steps.Permanent("kubelet: sha256 abc does not match the pinned def")

    ok, status, clock, _ = run([steps.Step("binaries", wrong_digest)], tmp_path)
    assert not ok and clock.pauses == []
    assert status["steps"][0]["attempts"] == 1
    assert "does not match the pinned" in status["error"]


def test_status_command_prints_each_step_and_exits_by_state(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken() -> None:
        raise steps.Permanent("this image runs Fedora Linux 40, which kubeplat does not support")

    run([steps.Step("os", broken)], tmp_path)
    capsys.readouterr()
    assert cli.main(["status", str(tmp_path / "status.json")]) == 1
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "i-1 compute: failed"
    assert "os         failed   x1  this image runs Fedora Linux 40" in out
    assert cli.main(["status", str(tmp_path / "missing.json")]) == 1
    assert cli.main(["nonsense"]) == 2


@pytest.mark.parametrize(
    ("release", "family"),
    [
        ('PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n', "debian-12"),
        ('ID=ubuntu\nVERSION_ID="24.04"\nID_LIKE=debian\n', "ubuntu-24.04"),
        ('NAME="Amazon Linux"\nID="amzn"\nVERSION_ID="2023"\n', "al2023"),
        ('ID=ubuntu\nVERSION_ID="22.04"\n', None),
        ('ID=fedora\nVERSION_ID=40\nPRETTY_NAME="Fedora Linux 40"\n', None),
    ],
)
def test_operating_system_detection(tmp_path: Path, release: str, family: str | None) -> None:
    path = tmp_path / "os-release"
    path.write_text(release)
    found = osfamily.detect(path)
    assert (found.name if found else None) == family


def test_amazon_linux_gets_its_own_package_names() -> None:
    al2023 = osfamily.by_name("al2023")
    assert "conntrack-tools" in al2023.packages and "iptables-nft" in al2023.packages
    assert not any(p.startswith("curl") for p in al2023.packages)  # curl-minimal conflicts
    assert al2023.install_command(["socat"])[0][:2] == ["dnf", "install"]
    assert osfamily.by_name("debian-12").ca_bundle == "/etc/ssl/certs/ca-certificates.crt"
    assert al2023.ca_bundle == "/etc/pki/tls/certs/ca-bundle.crt"


def test_node_programs_stay_valid_python_3_9() -> None:
    """Amazon Linux 2023 runs them with Python 3.9: no newer syntax may creep in."""
    package = Path(steps.__file__).parent
    for source in sorted(package.glob("*.py")):
        ast.parse(source.read_text(), filename=str(source), feature_version=(3, 9))
        text = source.read_text()
        assert "datetime.UTC" not in text and "from datetime import UTC" not in text, source
        assert "import kubeplat" not in text and "from kubeplat" not in text, source
        # Parenthesized context managers are 3.10 syntax that ast's feature_version accepts
        # anyway (and ruff's formatter writes them for a long `with`): refused here by shape.
        assert not re.search(r"^\s*(async\s+)?with \($", text, re.MULTILINE), source
