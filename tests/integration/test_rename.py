"""Renaming an environment in the sandbox (issue 15, item 5): a renamed environment is a new
one (new state, new bucket prefix) while the old one still runs, so nothing of the old one is
removed by the new one's `up`; `up`/`plan` name the old prefix once no environment file names
it, and `destroy --purge` removes it (every version) only after its destroy succeeded."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from tests.conftest import emulator_clients
from tests.integration.sandbox_user import kubeplat

pytestmark = pytest.mark.integration


def test_rename_then_purge_the_old_name(user: dict[str, str], tmp_path: Path) -> None:
    checkout = Path(user["CHECKOUT"])
    environments = checkout / "environments"
    up = kubeplat(user, "up", "-e", "example", "--auto-approve")
    assert up.returncode == 0, up.stderr[-3000:]
    endpoint = kubeplat(user, "sandbox", "status").stdout.strip()
    s3 = emulator_clients(endpoint, "eu-west-1")["s3"]
    bucket = "kubeplat-example-secrets"

    def versions(prefix: str) -> int:
        pages = s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix)
        return sum(len(p.get("Versions", [])) + len(p.get("DeleteMarkers", [])) for p in pages)

    # The rename: a new file, a new name, the same buckets.
    text = (environments / "example.tfvars").read_text()
    renamed = text.replace(
        'environment              = "example"', 'environment              = "renamed"'
    )
    assert renamed != text
    (environments / "renamed.tfvars").write_text(renamed)
    second = kubeplat(user, "up", "-e", "renamed", "--auto-approve")
    assert second.returncode == 0, second.stderr[-3000:]
    old_objects = versions("example/")
    assert old_objects > 0 and versions("renamed/pki/") > 0
    assert "the secrets bucket also holds" not in second.stderr  # example.tfvars still names it

    # Once no file names it, plan says so, and removes nothing.
    shutil.move(environments / "example.tfvars", tmp_path / "example.tfvars")
    plan = kubeplat(user, "plan", "-e", "renamed", "-o", "json")
    assert plan.returncode in (0, 2), plan.stderr[-3000:]
    assert json.loads(plan.stdout)["unclaimed"] == ["example"]
    shown = kubeplat(user, "plan", "-e", "renamed")
    assert (
        "the secrets bucket also holds environment example, which no environment file here "
        "names (renamed or removed?): its objects stay until kubeplat destroy -e example "
        "--purge (with its file back) removes them"
    ) in shown.stderr
    assert versions("example/") == old_objects

    shutil.move(tmp_path / "example.tfvars", environments / "example.tfvars")

    # A state that lost track of the nodes (moved, deleted) plans an empty destroy: --purge
    # does not take that for a destroyed environment while its instances run.
    state_key = "eu-west-1/example/terraform.tfstate"
    saved = s3.get_object(Bucket="kubeplat-example-terraform", Key=state_key)["Body"].read()
    s3.delete_object(Bucket="kubeplat-example-terraform", Key=state_key)
    lost = kubeplat(user, "destroy", "-e", "example", "--auto-approve", "--purge")
    assert lost.returncode == 1, lost.stderr[-2000:]
    assert re.search(
        r"Error: --purge refused: \d+ instance\(s\) of environment example are not terminated",
        lost.stderr,
    ), lost.stderr[-2000:]
    assert "nothing was destroyed or removed" in lost.stderr
    assert versions("example/") == old_objects
    s3.put_object(Bucket="kubeplat-example-terraform", Key=state_key, Body=saved)

    # A destroy that fails (its state is locked by someone else) purges nothing.
    lock = "eu-west-1/example/terraform.tfstate.tflock"
    holder = {"ID": "0b5e", "Operation": "OperationTypeApply", "Who": "bob@ci", "Version": "1.9",
              "Created": "2026-12-03T10:00:00Z", "Path": "x", "Info": ""}  # fmt: skip
    s3.put_object(Bucket="kubeplat-example-terraform", Key=lock, Body=json.dumps(holder))
    locked = kubeplat(user, "destroy", "-e", "example", "--auto-approve", "--purge")
    assert locked.returncode == 1, locked.stderr[-2000:]
    # (Naming the holder from the lock file is issue 16's part: not asserted here.)
    assert "the environment's state is locked" in locked.stderr, locked.stderr[-2000:]
    assert versions("example/") == old_objects
    s3.delete_object(Bucket="kubeplat-example-terraform", Key=lock)

    purged = kubeplat(user, "destroy", "-e", "example", "--auto-approve", "--purge")
    assert purged.returncode == 0, purged.stderr[-3000:]
    assert "removed from the secrets bucket once the destroy succeeds" in purged.stderr
    assert (
        "example/pki/ (" in purged.stderr
        and "from the secrets bucket (every version)" in purged.stderr
    )
    assert versions("example/") == 0, "no version of any object, no key, stays"
    assert not any((checkout / ".kubeplat/example/pki").rglob("*.key"))
    assert not (checkout / ".kubeplat/example/pki/kubeconfig/admin.conf").exists()
    # The renamed environment is untouched, and nothing is left to name.
    after = kubeplat(user, "plan", "-e", "renamed", "--detailed-exitcode")
    assert after.returncode == 0, after.stderr[-3000:]
    assert "also holds" not in after.stderr
    # Purging again (a purge that stopped half-way, say) finishes quietly.
    again = kubeplat(user, "destroy", "-e", "example", "--auto-approve", "--purge")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "removed nothing (already gone)" in again.stderr
