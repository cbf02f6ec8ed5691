"""A no-op `up` close to a bare `terraform plan` (issue 17): the plan starts before the bucket
is read and stops when what is read beside it fails; the environment file's parse and the
templates are cached between runs; the outputs of a plan that changes nothing come from its
own state."""

from __future__ import annotations

import json
import re
import signal
import stat
import threading
import time
import zipfile
from pathlib import Path

import pytest

from kubeplat import config, pipeline
from kubeplat.errors import KubeplatError
from kubeplat.terraform import OPERATION, Terraform

SAMPLE = Path(__file__).resolve().parents[2] / "environments" / "example.tfvars"


def _sleeping(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Terraform:
    """A Terraform working copy whose `plan` is a child that would run for a minute (a real
    process, in its own session, followed through its log as Terraform's is)."""
    tf = Terraform(tmp_path / "work")
    monkeypatch.setattr(tf, "command", lambda *_args: ["sleep", "60"])
    return tf


def test_a_failure_while_preparing_stops_the_plan_that_runs_beside_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tf = _sleeping(tmp_path, monkeypatch)
    running = threading.Event()

    def prepare() -> pipeline.Prepared:
        # As when the bucket's PKI turns out damaged: only once the plan's child runs.
        for _ in range(200):
            if tf.running is not None:
                running.set()
                break
            time.sleep(0.05)
        raise KubeplatError("the bucket's PKI is damaged", "restore it")

    worker = pipeline._Beside(prepare, tf)
    result = tf.run("plan", check=False)
    # The child was stopped as on Ctrl-C (so Terraform releases its lock), not left running.
    assert running.is_set()
    assert result.returncode == -signal.SIGINT
    assert not (tf.workdir / OPERATION).exists()  # its record went with it
    with pytest.raises(KubeplatError, match="PKI is damaged"):
        worker.result()


def test_a_stop_asked_before_the_child_starts_stops_it_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tf = _sleeping(tmp_path, monkeypatch)
    tf.stop()
    assert tf.run("plan", check=False).returncode == -signal.SIGINT


def test_the_parse_of_an_environment_file_is_cached_and_equal_to_a_fresh_one(
    isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = SAMPLE.read_text()
    fresh = config._parse_text(text)
    monkeypatch.setattr(config, "_PARSED", {})
    assert config._parse_hcl(text) == fresh
    entries = list((isolated / "home" / ".cache" / "kubeplat" / "hcl").glob("*.json"))
    assert len(entries) == 1
    assert stat.S_IMODE(entries[0].stat().st_mode) == 0o600
    # A new process: read from the cache, without the parser.
    parse = config._parse_text
    monkeypatch.setattr(config, "_PARSED", {})
    monkeypatch.setattr(config, "_parse_text", lambda _text: pytest.fail("parsed again"))
    assert config._parse_hcl(text) == fresh
    # Another text is another entry; a damaged entry is parsed again and replaced.
    monkeypatch.setattr(config, "_parse_text", parse)
    changed = re.sub(r'(?m)^environment\s*=\s*"example"', 'environment = "other"', text)
    assert changed != text
    assert config._parse_hcl(changed)[0]["environment"] == "other"
    entries[0].write_text("{not json")
    monkeypatch.setattr(config, "_PARSED", {})
    assert config._parse_hcl(text) == fresh
    assert json.loads(entries[0].read_text())["data"] == fresh[0]


def test_a_file_that_does_not_parse_is_reported_every_time_and_never_cached(
    isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(config, "_PARSED", {})
    for _ in range(2):
        with pytest.raises(SyntaxError):
            config._parse_hcl('environment = "dev"\nnot valid (\n')
    assert not list((isolated / "home" / ".cache" / "kubeplat" / "hcl").glob("*.json"))


def test_without_a_home_nothing_is_cached_and_the_file_still_reads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("HOME", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setattr(config, "_PARSED", {})
    assert config._parse_hcl(SAMPLE.read_text())[0]["environment"] == "example"


def test_the_outputs_of_a_plan_that_changes_nothing_come_from_its_state(tmp_path: Path) -> None:
    plan = tmp_path / "up.tfplan"
    state = {"version": 4, "outputs": {"api_endpoint": {"value": "https://x", "type": "string"}}}
    with zipfile.ZipFile(plan, "w") as archive:
        archive.writestr("tfplan", b"")
        archive.writestr("tfstate", json.dumps(state))
    assert pipeline.planned_outputs(plan) == {"api_endpoint": "https://x"}
    # Anything else: None, and `up` asks `terraform output` instead.
    (tmp_path / "empty.tfplan").write_bytes(b"")
    assert pipeline.planned_outputs(tmp_path / "empty.tfplan") is None
    assert pipeline.planned_outputs(tmp_path / "missing.tfplan") is None


def test_terraforms_version_is_asked_once_per_binary_and_again_when_it_changes(
    tmp_path: Path,
) -> None:
    from kubeplat import terraform

    calls = tmp_path / "calls"
    fake = tmp_path / "terraform"

    def install(text: str) -> None:
        fake.write_text(
            f'#!/bin/sh\necho run >> {calls}\necho \'{{"terraform_version": "{text}"}}\'\n'
        )
        fake.chmod(0o755)

    install("1.9.8")
    assert terraform.version(str(fake)) == (1, 9, 8)
    assert terraform.version(str(fake)) == (1, 9, 8)
    assert calls.read_text().count("run") == 1  # the second answer came from the cache
    install("1.11.4")  # an upgrade in place: another file as far as the cache knows
    assert terraform.version(str(fake)) == (1, 11, 4)
    assert calls.read_text().count("run") == 2
