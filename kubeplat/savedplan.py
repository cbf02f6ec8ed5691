"""A saved plan (`kubeplat plan --out FILE`) and what `kubeplat apply -e ENV FILE` checks.

Terraform's plan file holds the infrastructure change; the node configuration that change
points at (every user-data stub names its cloud-config by digest) is recorded beside it, in
`FILE.kubeplat.json`: the digest of every object the bucket must hold for it, and the plan's
summary. No object's bytes and no key are in it. `apply` renders again, and uploads and applies
only when every object is the same as when the plan was made, and only when the environment's
state is still the one the plan was made against (Terraform would refuse the plan anyway, but
only after kubeplat had uploaded).
"""

from __future__ import annotations

import datetime as dt
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubeplat.errors import KubeplatError
from kubeplat.store import sha256

if TYPE_CHECKING:
    from kubeplat.pipeline import PlanSummary, Prepared
    from kubeplat.terraform import Terraform

FORMAT = 1


def record_path(plan_file: Path) -> Path:
    return plan_file.with_name(plan_file.name + ".kubeplat.json")


@dataclass(frozen=True)
class Saved:
    """A saved plan and what it was made with."""

    plan_file: Path
    environment: str
    objects: dict[str, str]
    summary: dict[str, Any]
    plan_sha256: str


def save(prepared: Prepared, summary: PlanSummary, plan_file: Path) -> Path:
    """Write the record of what `plan_file` was made with, beside it."""
    record = {
        "format": FORMAT,
        "environment": prepared.env.environment,
        "made": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "plan_sha256": sha256(plan_file.read_bytes()),
        "objects": {name: sha256(data) for name, data in sorted(prepared.objects.items())},
        "summary": {
            "add": summary.add,
            "change": summary.change,
            "destroy": summary.destroy,
            "rolls": summary.rolls,
            "removals": summary.removals,
            "imports": [list(i) for i in summary.imports],
            "resources": [list(r) for r in summary.resources],
        },
    }
    path = record_path(plan_file)
    path.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    return path


def load(plan_file: Path, env_name: str) -> Saved:
    """The saved plan `plan_file` of environment `env_name`, or a one-line error."""
    hint = f"make one with: kubeplat plan -e {env_name} --out {plan_file}"
    if not plan_file.is_file() or not zipfile.is_zipfile(plan_file):
        what = "no such file" if not plan_file.exists() else "not a Terraform plan"
        raise KubeplatError(f"{plan_file}: {what}", hint)
    companion = record_path(plan_file)
    try:
        record = json.loads(companion.read_text(encoding="utf-8"))
        objects = {str(k): str(v) for k, v in record["objects"].items()}
        environment, summary = str(record["environment"]), dict(record["summary"])
        plan_sha256 = str(record["plan_sha256"])
    except FileNotFoundError:
        raise KubeplatError(
            f"{plan_file} has no {companion.name} beside it (what the plan's nodes need)",
            "keep both files together (e.g. one CI artefact: plan.tfplan*), or " + hint,
        ) from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise KubeplatError(f"{companion}: not a record kubeplat wrote", hint) from None
    if sha256(plan_file.read_bytes()) != plan_sha256:
        raise KubeplatError(
            f"{companion.name} was written for another plan than {plan_file.name}",
            "keep the two files of one `plan --out` together, or " + hint,
        )
    return Saved(plan_file, environment, objects, summary, plan_sha256)


def check(saved: Saved, prepared: Prepared, tf: Terraform, env_name: str) -> None:
    """Refuse (nothing uploaded, nothing applied) a plan of another environment, a plan whose
    node configuration no longer renders the same, or a plan of an older state."""
    again = f"make a new plan: kubeplat plan -e {env_name} --out {saved.plan_file}"
    if saved.environment != prepared.env.environment:
        raise KubeplatError(
            f"{saved.plan_file} is a plan of environment {saved.environment}, not of "
            f"{prepared.env.environment}; nothing was uploaded or applied",
            again,
        )
    now = {name: sha256(data) for name, data in prepared.objects.items()}
    differ = sorted(n for n in set(now) | set(saved.objects) if now.get(n) != saved.objects.get(n))
    if differ:
        shown = ", ".join(differ[:5]) + (f" and {len(differ) - 5} more" if len(differ) > 5 else "")
        raise KubeplatError(
            f"the node configuration changed since this plan was made ({shown}); nothing was "
            "uploaded or applied",
            again,
        )
    check_state(saved, tf, env_name)


def check_state(saved: Saved, tf: Terraform, env_name: str) -> None:
    """Refuse a plan made against another state than the environment's now, or while a run
    started from this checkout still goes."""
    again = f"make a new plan: kubeplat plan -e {env_name} --out {saved.plan_file}"
    tf.cut_off = tf.check_running() or tf.cut_off
    if _prior_state(saved.plan_file) != _current_state(tf):
        raise KubeplatError(
            "the state changed since this plan was made (another run applied first); nothing "
            "was uploaded or applied",
            again,
        )


def _prior_state(plan_file: Path) -> tuple[str, int]:
    """(lineage, serial) of the state a plan was made against."""
    with zipfile.ZipFile(plan_file) as archive:
        try:
            return _lineage(archive.read("tfstate").decode())
        except KeyError:
            return ("", 0)


def _current_state(tf: Terraform) -> tuple[str, int]:
    """(lineage, serial) of the environment's state now (`terraform state pull`)."""
    from kubeplat import terraform

    pulled = tf.run("state", "pull", on_line=lambda _line: None).output
    try:
        state = terraform.json_document(pulled) if "{" in pulled else {}
    except ValueError:
        return ("?", -1)
    return (str(state.get("lineage", "")), int(state.get("serial", 0)))


def _lineage(text: str) -> tuple[str, int]:
    try:
        state = json.loads(text) if text.strip() else {}
    except ValueError:
        return ("?", -1)
    return (str(state.get("lineage", "")), int(state.get("serial", 0)))
