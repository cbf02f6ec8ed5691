"""A saved plan that Terraform could not write is never taken for a plan (issue 16, item 4).

Terraform 1.11 exits 0 after writing an empty plan file to a full disk; kubeplat checks that the
file is a complete plan (a zip archive) and names the full disk.
"""

from __future__ import annotations

import subprocess
import zipfile
from pathlib import Path

import pytest

from kubeplat.errors import KubeplatError
from kubeplat.pipeline import check_plan_file
from tests.conftest import fill_disk


def test_a_complete_plan_passes(tmp_path: Path) -> None:
    plan = tmp_path / "plan.tfplan"
    with zipfile.ZipFile(plan, "w") as archive:
        archive.writestr("tfplan", b"plan")
    check_plan_file(plan)


def test_an_empty_plan_is_refused(tmp_path: Path) -> None:
    plan = tmp_path / "plan.tfplan"
    plan.write_bytes(b"")
    with pytest.raises(KubeplatError, match=r"did not write a complete plan \(0 bytes\)$") as got:
        check_plan_file(plan)
    assert "disk is full" not in got.value.message


def test_an_empty_plan_on_a_full_disk_names_the_full_disk(tmp_path: Path) -> None:
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(tiny)], capture_output=True
    )
    if made.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        plan = tiny / "plan.tfplan"
        plan.write_bytes(b"")  # as Terraform leaves it
        fill_disk(tiny)
        with pytest.raises(KubeplatError, match="the disk is full") as got:
            check_plan_file(plan)
        assert str(plan) in got.value.message
    finally:
        subprocess.run(["umount", "-l", str(tiny)], check=False)


def test_a_failed_apply_after_the_upload_says_what_was_uploaded_and_how_to_converge() -> None:
    """Issue 16, item 1: a failed (or stale) apply after the upload never reads as if nothing
    had happened."""
    from kubeplat import ops
    from kubeplat.errors import TerraformFailed

    with (
        pytest.raises(TerraformFailed) as got,
        ops._after_upload(["a", "b"], ["manifests/master/x.yaml"], "kubeplat up -e dev"),
    ):
        raise TerraformFailed("the state changed since this plan was made; nothing was applied", "")
    assert got.value.message.endswith(
        "nothing was applied; the new node configuration had been uploaded (2 objects); the 1 "
        "changed manifests of running layers stay staged, so running nodes keep what they run; "
        "nothing was removed"
    )
    assert got.value.hint == "run: kubeplat up -e dev"
    with pytest.raises(TerraformFailed) as bare, ops._after_upload([], [], "kubeplat up -e dev"):
        raise TerraformFailed("terraform apply failed: x", "see the log")
    assert bare.value.message == "terraform apply failed: x" and bare.value.hint == "see the log"
