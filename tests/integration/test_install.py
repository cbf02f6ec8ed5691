"""A plain, non-editable `pip install .` works from any directory."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.integration


def test_wheel_install_validates_from_root(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    # The wheel is built from a copy so the checkout is not touched.
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(REPO)],
        check=True,
        capture_output=True,
    )
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    # Dependencies come from the test interpreter's site-packages (a plain path entry, so its
    # editable kubeplat is not picked up); kubeplat itself only from the wheel.
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    wheel = next(wheels.glob("kubeplat-*.whl"))
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", "--no-deps", "--force-reinstall", str(wheel)],
        check=True,
        capture_output=True,
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PATH"] = "/nonexistent"  # file checks only; the module check has its own test
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import kubeplat, sys; print(kubeplat.__file__)"],
        cwd="/",
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert where.stdout.startswith(str(venv)), where.stdout
    env_file = REPO / "environments" / "example.tfvars"
    proc = subprocess.run(
        [str(venv / "bin" / "kubeplat"), "validate", "-e", str(env_file)],
        cwd="/",
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "valid" in proc.stderr
    # The sample and the module ship inside the wheel: init works from anywhere.
    proc = subprocess.run(
        [str(venv / "bin" / "kubeplat"), "--env-dir", str(tmp_path / "envs"), "init", "qa"],
        cwd="/",
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "envs" / "qa.tfvars").read_text().count('"qa"') == 1
