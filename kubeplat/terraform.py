"""Terraform: find and check the binary, stage the module, build every argument list.

All Terraform command lines are built by `Terraform.command` so the global flags
(`-chdir`, `-no-color`, `-input=false`) are added in one place.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubeplat import console, process
from kubeplat.errors import TerraformFailed, ToolMissing
from kubeplat.resources import module_dir

if TYPE_CHECKING:
    from kubeplat.config import Environment

MIN_VERSION = (1, 5, 0)
INSTALL_HINT = (
    "install Terraform >= 1.5 (https://developer.hashicorp.com/terraform/install) "
    "and put it on PATH, or set KUBEPLAT_TERRAFORM to its path"
)


def mirror_config(mirror: str) -> str:
    """A Terraform CLI configuration installing hashicorp/* providers from a filesystem mirror
    (for machines without registry access; users normally need none)."""
    return (
        "provider_installation {\n"
        f'  filesystem_mirror {{\n    path    = "{mirror}"\n'
        '    include = ["registry.terraform.io/hashicorp/*"]\n  }\n'
        '  direct {\n    exclude = ["registry.terraform.io/hashicorp/*"]\n  }\n}\n'
    )


def mirror_cli_config(directory: Path) -> Path | None:
    """With KUBEPLAT_TF_MIRROR set, a CLI configuration in `directory` that installs the
    providers from that filesystem mirror (the user's own TF_CLI_CONFIG_FILE kept in it when
    it says nothing about provider installation); None without it."""
    mirror = os.environ.get("KUBEPLAT_TF_MIRROR")
    if not mirror:
        return None
    if not (Path(mirror) / "registry.terraform.io").is_dir():
        raise ToolMissing(
            f"KUBEPLAT_TF_MIRROR={mirror} is not a provider mirror "
            "(no registry.terraform.io/ in it)",
            "point it at a directory made with `terraform providers mirror DIR`, or unset it",
        )
    theirs = os.environ.get("TF_CLI_CONFIG_FILE", "")
    kept = ""
    if theirs and Path(theirs).is_file():
        text = Path(theirs).read_text(errors="replace")
        kept = "" if "provider_installation" in text else text.rstrip() + "\n\n"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "kubeplat-mirror.tfrc"
    wanted = kept + mirror_config(str(Path(mirror).resolve()))
    if not path.exists() or path.read_text() != wanted:
        path.write_text(wanted)
    return path


def available() -> bool:
    """Whether a Terraform binary is configured or on PATH (its version is checked on use)."""
    return bool(os.environ.get("KUBEPLAT_TERRAFORM") or shutil.which("terraform"))


@cache
def binary() -> str:
    """Path of a Terraform binary recent enough, or `ToolMissing` with an install hint."""
    path = os.environ.get("KUBEPLAT_TERRAFORM") or shutil.which("terraform")
    if not path:
        raise ToolMissing("terraform not found", INSTALL_HINT)
    found = version(path)
    if found < MIN_VERSION:
        have = ".".join(map(str, found))
        raise ToolMissing(f"terraform {have} is too old (kubeplat needs >= 1.5)", INSTALL_HINT)
    return path


def version(path: str) -> tuple[int, int, int]:
    """The version of the Terraform binary at `path`."""
    result = process.run([path, "version", "-json"])
    try:
        # Warnings about the CLI configuration may come before the JSON document.
        text = json.loads(result.output[result.output.find("{") :])["terraform_version"]
    except (ValueError, KeyError):
        match = re.search(r"v(\d+\.\d+\.\d+)", result.output)
        if not match:
            raise ToolMissing(f"{path} does not look like Terraform", INSTALL_HINT) from None
        text = match.group(1)
    major, minor, patch = (int(p) for p in re.findall(r"\d+", text)[:3])
    return major, minor, patch


def stage_module(dest: Path) -> Path:
    """Copy the root module to `dest`, rewriting only files whose bytes changed.

    Terraform writes its lock file next to the module; staging keeps the installed package
    read-only and lets each environment keep its own lock file.
    """
    source = module_dir()
    dest.mkdir(parents=True, exist_ok=True)
    wanted = {p.name for p in source.glob("*.tf")}
    for path in source.glob("*.tf"):
        target = dest / path.name
        content = path.read_bytes()
        if not target.exists() or target.read_bytes() != content:
            target.write_bytes(content)
    for stale in dest.glob("*.tf"):
        if stale.name not in wanted:
            stale.unlink()
    return dest


@dataclass
class Terraform:
    """One environment's Terraform working copy: staged module plus `TF_DATA_DIR`."""

    workdir: Path
    # Added to the child's environment; None removes a variable (e.g. AWS_PROFILE in the sandbox).
    env: Mapping[str, str | None] = field(default_factory=dict)
    # `validate` initialises without a backend: it keeps its own data directory so the real
    # one (with the S3 backend) is never reconfigured by it.
    data_name: str = "terraform"

    @property
    def module(self) -> Path:
        return self.workdir / "module"

    @property
    def data_dir(self) -> Path:
        return self.workdir / self.data_name

    def command(self, subcommand: str, *args: str) -> list[str]:
        """The full argument list for one Terraform subcommand."""
        flags = ["-no-color"]
        if subcommand in ("init", "plan", "apply", "destroy", "import", "refresh"):
            flags.append("-input=false")
        return [binary(), f"-chdir={self.module}", subcommand, *flags, *args]

    def environ(self) -> dict[str, str]:
        """The child's environment: ours, the caller's additions, and `TF_DATA_DIR`."""
        merged = {**os.environ, "TF_DATA_DIR": str(self.data_dir), "TF_IN_AUTOMATION": "1"}
        config = mirror_cli_config(self.workdir)
        if config is not None:
            merged["TF_CLI_CONFIG_FILE"] = str(config)
        for name, value in self.env.items():
            if value is None:
                merged.pop(name, None)
            else:
                merged[name] = value
        return merged

    def run(
        self,
        subcommand: str,
        *args: str,
        on_line: Callable[[str], None] | None = None,
        check: bool = True,
    ) -> process.Result:
        """Run one subcommand; raise `TerraformFailed` with its last error when it fails."""
        if on_line is None and console.debug_enabled():
            on_line = console.debug
        result = process.run(
            self.command(subcommand, *args),
            env=self.environ(),
            on_line=on_line,
            interrupt_hint="run the same command again to resume; the state lock was released",
        )
        if check and result.returncode != 0:
            raise failure(subcommand, result.output)
        return result

    def start(self, subcommand: str, *args: str) -> subprocess.Popen[str]:
        """Start a read-only subcommand in the background (e.g. `output` while `plan` runs)."""
        return process.start(self.command(subcommand, *args), env=self.environ())

    def init(self, backend: Mapping[str, str] | None = None) -> None:
        """`terraform init`, without a backend or with a partial S3 backend configuration.

        Skipped when the module, the backend and the binary are what the last init saw.
        """
        stage_module(self.module)
        args: list[str] = ["-reconfigure"]
        if backend is None:
            args.append("-backend=false")
        else:
            args += [f"-backend-config={k}={v}" for k, v in sorted(backend.items())]
        marker = self.data_dir / "kubeplat-init.json"
        fingerprint = hashlib.sha256(
            json.dumps(
                {
                    "args": args,
                    "binary": binary(),
                    "module": {p.name: p.read_text() for p in sorted(self.module.glob("*.tf"))},
                    "config": self.environ().get("TF_CLI_CONFIG_FILE", ""),
                },
                sort_keys=True,
            ).encode()
        ).hexdigest()
        lock = self.module / ".terraform.lock.hcl"
        if marker.exists() and marker.read_text() == fingerprint and lock.exists():
            return
        self.run("init", *args)
        marker.write_text(fingerprint)

    def validate(self) -> list[dict[str, Any]]:
        """`terraform validate -json`; the error diagnostics (empty when valid)."""
        result = self.run("validate", "-json", check=False)
        try:
            report = json.loads(result.output[result.output.find("{") :])
        except ValueError:
            raise TerraformFailed(
                f"terraform validate failed: {last_error(result.output)}", ""
            ) from None
        return [d for d in report.get("diagnostics", []) if d.get("severity") == "error"]


def variables(env: Environment, bundle: Mapping[str, bytes]) -> dict[str, Any]:
    """Every input of the root module: the environment file's values and the rendered
    user-data stubs. Never a private key."""
    from kubeplat import render

    return {
        **env.tfvars(),
        "userdata": {
            layer.name: bundle[f"userdata/{layer.name}"].decode() for layer in render.layers(env)
        },
    }


def failure(subcommand: str, output: str) -> TerraformFailed:
    """The one-line error for a failed Terraform command; a held state lock names its holder."""
    if "Error acquiring the state lock" in output:
        info = dict(re.findall(r"^[\s│]*(ID|Who|Operation|Created):\s+(.*)$", output, re.MULTILINE))
        return StateLocked(
            f"the environment's state is locked by {info.get('Who', 'someone')} "
            f"({info.get('Operation', 'an operation').replace('OperationType', '').lower()} "
            f"since {info.get('Created', '?')})",
            "wait for that run to finish and try again; if it died, release the lock with: "
            f"terraform force-unlock {info.get('ID', 'LOCK_ID')}",
        )
    if "Saved plan is stale" in output:
        return TerraformFailed(
            "the state changed since this plan was made (another run applied first); "
            "nothing was applied",
            "run the command again: it plans against the new state",
        )
    return TerraformFailed(
        f"terraform {subcommand} failed: {last_error(output)}",
        "run again with --debug to see Terraform's whole output",
    )


class StateLocked(TerraformFailed):
    """Another run holds the environment's state lock."""


def last_error(output: str) -> str:
    """The first error of a failed Terraform run's output, as one line."""
    for line in output.splitlines():
        if line.startswith("{") and '"diagnostic"' in line:
            try:
                diagnostic = json.loads(line).get("diagnostic", {})
            except ValueError:
                continue
            if diagnostic.get("severity") == "error":
                return f"{diagnostic.get('summary')}: {diagnostic.get('detail', '')}".strip()[:400]
    lines = [line.strip(" │╷╵") for line in output.splitlines()]
    for index, line in enumerate(lines):
        if line.startswith("Error:"):
            parts = [line[len("Error:") :].strip()]
            for follow in lines[index + 1 :]:
                if not follow.strip():
                    if len(parts) > 1:
                        break
                    continue
                parts.append(follow.strip())
            return " ".join(parts)[:400]
    tail = [line for line in lines if line.strip()]
    return tail[-1] if tail else "no output"


def describe(diagnostics: Sequence[Mapping[str, Any]]) -> str:
    """One line per diagnostic of `terraform validate -json`."""
    out = []
    for diag in diagnostics:
        rng = diag.get("range") or {}
        where = f"{rng.get('filename')}:{rng.get('start', {}).get('line')}: " if rng else ""
        out.append(f"{where}{diag.get('summary')}: {diag.get('detail', '')}".strip())
    return "\n".join(out)
