"""Terraform: find and check the binary, stage the module, build every argument list.

All Terraform command lines are built by `Terraform.command` so the global flags
(`-chdir`, `-no-color`, `-input=false`) are added in one place.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import getpass
import hashlib
import json
import os
import re
import shutil
import signal
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubeplat import console, process
from kubeplat.errors import KubeplatError, TerraformFailed, ToolMissing
from kubeplat.resources import module_dir

if TYPE_CHECKING:
    from kubeplat.config import Environment

MIN_VERSION = (1, 5, 0)
# Terraform 2 may change what kubeplat relies on (the -json UI, saved plans, import blocks).
BELOW_VERSION = (2, 0, 0)
# Subcommands that take the state lock: while one runs, the working copy records who runs it
# (OPERATION), so that the next command can tell a live run from a dead one.
LOCKING = ("plan", "apply", "destroy", "import", "refresh", "force-unlock")
OPERATION = "operation.json"
INIT_MARKER = "kubeplat-init.json"
BACKEND_RECORD = "kubeplat-backend.json"
KEEP_LOGS = 20
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
    providers from that filesystem mirror (the user's own CLI configuration, TF_CLI_CONFIG_FILE
    or else ~/.terraformrc, kept in it when it says nothing about provider installation); None
    without it."""
    mirror = os.environ.get("KUBEPLAT_TF_MIRROR")
    if not mirror:
        return None
    if not (Path(mirror) / "registry.terraform.io").is_dir():
        raise ToolMissing(
            f"KUBEPLAT_TF_MIRROR={mirror} is not a provider mirror "
            "(no registry.terraform.io/ in it)",
            "point it at a directory made with `terraform providers mirror DIR`, or unset it",
        )
    theirs = os.environ.get("TF_CLI_CONFIG_FILE") or str(Path.home() / ".terraformrc")
    kept = ""
    if Path(theirs).is_file():
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
def found() -> tuple[str, str]:
    """The Terraform kubeplat runs: its path and version, checked to be >= 1.5 and < 2
    (`ToolMissing` with an install hint otherwise)."""
    path = os.environ.get("KUBEPLAT_TERRAFORM") or shutil.which("terraform")
    if not path:
        raise ToolMissing("terraform not found", INSTALL_HINT)
    have = version(path)
    text = ".".join(map(str, have))
    if have < MIN_VERSION:
        raise ToolMissing(
            f"{path} is terraform {text}, too old (kubeplat needs >= 1.5, < 2)", INSTALL_HINT
        )
    if have >= BELOW_VERSION:
        raise ToolMissing(
            f"{path} is terraform {text}, newer than kubeplat knows (it needs >= 1.5, < 2)",
            "install a Terraform 1.x (1.5 or later) and put it first on PATH, or set "
            "KUBEPLAT_TERRAFORM to its path",
        )
    return path, text


def binary() -> str:
    """Path of a Terraform binary kubeplat can run, or `ToolMissing` with an install hint."""
    return found()[0]


def version(path: str) -> tuple[int, int, int]:
    """The version of the Terraform binary at `path`; remembered in the user's cache for that
    very file (its inode, size and times), as running it takes a child process every command
    would wait for."""
    from kubeplat.resources import user_cache, write_cached

    try:
        info = os.stat(path)
        stamp = (info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
        key = f"{os.path.realpath(path)}:{stamp}"
    except OSError:
        key = ""
    folder = user_cache("terraform") if key else None
    record = folder / f"{hashlib.sha256(key.encode()).hexdigest()}.json" if folder else None
    if record is not None:
        with contextlib.suppress(OSError, ValueError, TypeError):
            major, minor, patch = json.loads(record.read_text())
            return int(major), int(minor), int(patch)
    found = _ask_version(path)
    if record is not None:
        write_cached(record, json.dumps(found))
    return found


def _ask_version(path: str) -> tuple[int, int, int]:
    result = process.run([path, "version", "-json"])
    try:
        # Warnings about the CLI configuration may come before the JSON document.
        text = json_document(result.output)["terraform_version"]
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
    # The environment's name, and how kubeplat is invoked for it, for the commands hints print.
    name: str = "ENV"
    program: str = "kubeplat"
    # The last run's log, and a run of this working copy found cut off (see `check_running`).
    last_log: Path | None = field(default=None, repr=False)
    cut_off: dict[str, Any] | None = field(default=None, repr=False)
    # The child running now (its pid), and whether another thread asked it to stop (`stop`).
    running: int | None = field(default=None, repr=False)
    stopping: bool = field(default=False, repr=False)

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
        words = [subcommand]
        if subcommand in ("state", "workspace") and args:  # `state pull`: flags after both
            words, args = [subcommand, args[0]], args[1:]
        return [binary(), f"-chdir={self.module}", *words, *flags, *args]

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
        """Run one subcommand, its output going to a log file under the working copy (so it
        survives kubeplat's death); raise `TerraformFailed` with its last error when it fails.
        A subcommand that takes the state lock is refused while another one started from this
        working copy still runs, and is recorded while it runs."""
        if on_line is None and console.debug_enabled():
            on_line = console.debug
        locking = subcommand in LOCKING
        if locking:
            self.cut_off = self.check_running() or self.cut_off
        log = self.last_log = self.log_path(subcommand)

        ours: list[int] = []

        def started(pid: int) -> None:
            self.running = pid
            if self.stopping:  # asked before the child was there: it stops at once
                os.kill(pid, signal.SIGINT)
            if locking:
                ours.append(pid)
                _write_operation(self.workdir / OPERATION, subcommand, pid, log)

        try:
            result = process.run(
                self.command(subcommand, *args),
                env=self.environ(),
                on_line=on_line,
                interrupt_hint="run the same command again to resume; the state lock was released",
                log=log,
                on_start=started,
            )
        finally:
            self.running = None
            if ours:
                _remove_operation(self.workdir / OPERATION, ours[0])
        if check and result.returncode != 0:
            raise self.failure(subcommand, result)
        return result

    def stop(self) -> None:
        """From another thread: ask the running child (or the next one, as soon as it starts)
        to stop as on Ctrl-C; it saves what it must and releases the state lock."""
        self.stopping = True
        pid = self.running
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGINT)

    def failure(self, subcommand: str, result: process.Result) -> TerraformFailed:
        """The error for a failed run of this working copy (see `failure`)."""
        return failure(
            subcommand,
            result.output,
            env=self.name,
            log=self.last_log,
            cut_off=self.cut_off,
            program=self.program,
            returncode=result.returncode,
        )

    def log_path(self, subcommand: str) -> Path:
        """A new log file for one run (the last KEEP_LOGS are kept)."""
        folder = self.workdir / "logs"
        folder.mkdir(parents=True, exist_ok=True)
        in_use = str(_read_operation(self.workdir / OPERATION).get("log", ""))
        for old in sorted(folder.glob("*.log"))[:-KEEP_LOGS]:
            if str(old) != in_use:  # a Terraform that outlived its kubeplat still writes it
                old.unlink(missing_ok=True)
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        return folder / f"{stamp}-{subcommand}.log"

    def check_running(self) -> dict[str, Any] | None:
        """Refuse while a locking run started from this working copy is still going (its
        kubeplat may have been killed: its Terraform goes on to the end and releases the lock
        itself); a record left by a run whose Terraform is gone is removed and returned."""
        path = self.workdir / OPERATION
        record = _read_operation(path)
        if not record:
            return None
        if record.get("host") == socket.gethostname() and _alive(record):
            raise OperationRunning(
                f"a terraform {record.get('command')} by {record.get('user')}@"
                f"{record.get('host')} started {record.get('started')} is still running "
                f"(pid {record.get('pid')})",
                f"it finishes and releases the state lock by itself; follow it with: tail -f "
                f"{record.get('log')}; then run the command again",
            )
        if record.get("host") == socket.gethostname():
            _remove_operation(path, int(record.get("pid", 0)))
            return record
        return None

    def init(self, backend: Mapping[str, str] | None = None) -> None:
        """`terraform init`, without a backend or with a partial S3 backend configuration.

        Skipped when the module, the backend and the binary are what the last init saw.
        """
        if self.initialised(backend):
            return
        args = self._init_args(backend)
        self.run("init", *args)
        (self.data_dir / INIT_MARKER).write_text(self._fingerprint(args))
        if backend is not None:
            (self.data_dir / BACKEND_RECORD).write_text(json.dumps(dict(backend), sort_keys=True))

    def last_backend(self) -> dict[str, str] | None:
        """The backend configuration of the last init, if it recorded one."""
        try:
            record = json.loads((self.data_dir / BACKEND_RECORD).read_text())
        except (OSError, ValueError):
            return None
        return {str(k): str(v) for k, v in record.items()} if isinstance(record, dict) else None

    def initialised(self, backend: Mapping[str, str] | None = None) -> bool:
        """Whether the working copy (its module staged again) is what the last init made for
        this backend, with this binary: ready to plan without `init`."""
        stage_module(self.module)
        marker = self.data_dir / INIT_MARKER
        lock = self.module / ".terraform.lock.hcl"
        return (
            marker.exists()
            and lock.exists()
            and marker.read_text() == self._fingerprint(self._init_args(backend))
        )

    @staticmethod
    def _init_args(backend: Mapping[str, str] | None) -> list[str]:
        args: list[str] = ["-reconfigure"]
        if backend is None:
            args.append("-backend=false")
        else:
            args += [f"-backend-config={k}={v}" for k, v in sorted(backend.items())]
        return args

    def _fingerprint(self, args: list[str]) -> str:
        return hashlib.sha256(
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

    def validate(self) -> list[dict[str, Any]]:
        """`terraform validate -json`; the error diagnostics (empty when valid)."""
        result = self.run("validate", "-json", check=False)
        try:
            report = json_document(result.output)
        except ValueError:
            raise TerraformFailed(
                f"terraform validate failed: {last_error(result.output)}"
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


def _write_operation(path: Path, subcommand: str, pid: int, log: Path) -> None:
    """Record the running Terraform (replacing the file at once: never half a record)."""
    record = {
        "command": subcommand,
        "pid": pid,
        "ticks": _start_ticks(pid),
        "kubeplat_pid": os.getpid(),
        "user": getpass.getuser(),
        "host": socket.gethostname(),
        "started": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "log": str(log),
    }
    staged = path.with_name(f".{path.name}.{os.getpid()}")
    staged.write_text(json.dumps(record, indent=2) + "\n")
    staged.replace(path)


def _read_operation(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _remove_operation(path: Path, pid: int) -> None:
    """Remove the record, if it is still the one of `pid` (another run may have written its
    own since)."""
    if _read_operation(path).get("pid") == pid:
        path.unlink(missing_ok=True)


def _start_ticks(pid: int) -> int | None:
    """When `pid` started (clock ticks since boot, /proc's field 22): with the pid, it names
    one process for good (a pid is reused, the pair is not)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


def _alive(record: Mapping[str, Any]) -> bool:
    """Whether the recorded Terraform still runs on this host (not a zombie, not another
    process that got its pid)."""
    try:
        pid = int(record.get("pid", 0))
    except (TypeError, ValueError):
        return False
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: /proc says whether it is ours
    proc = Path(f"/proc/{pid}")
    if not proc.is_dir():
        return True  # no /proc: the signal check is all there is
    try:
        state = (proc / "stat").read_text().rpartition(")")[2].split()[:1]
    except OSError:
        return False
    if state == ["Z"]:
        return False
    ticks = record.get("ticks")
    return ticks is None or _start_ticks(pid) == ticks


class OperationRunning(KubeplatError):
    """A Terraform run started from this working copy is still going."""


def plain(output: str) -> str:
    """Terraform's output as text: the `-json` stream's diagnostics unescaped (summary and
    detail on their own lines), every other line as it is."""
    lines = []
    for line in output.splitlines():
        if line.startswith("{") and '"diagnostic"' in line:
            try:
                diagnostic = json.loads(line).get("diagnostic", {})
            except ValueError:
                lines.append(line)
                continue
            lines += [f"Error: {diagnostic.get('summary', '')}", str(diagnostic.get("detail", ""))]
        else:
            lines.append(line)
    return "\n".join(lines)


def lock_holder(text: str) -> dict[str, str]:
    """The `Lock Info:` fields of a lock error (ID, Who, Operation, Created, Path)."""
    found = re.findall(
        r"^[\s│]*(ID|Who|Operation|Created|Path):[ \t]+(\S.*?)\s*$", text, re.MULTILINE
    )
    return {key: value for key, value in found}


def failure(
    subcommand: str,
    output: str,
    *,
    env: str = "ENV",
    log: Path | None = None,
    cut_off: dict[str, Any] | None = None,
    program: str = "kubeplat",
    returncode: int = 1,
) -> TerraformFailed:
    """The one-line error for a failed Terraform command: a full disk says so; a held state
    lock names its holder and the command that releases it; a Terraform killed by a signal
    says so, with the state lock it may have left."""
    text = plain(output)
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        where = f"; its output: {log}" if log is not None else ""
        return TerraformFailed(
            f"terraform {subcommand} was killed ({name}) before it finished; its last words: "
            f"{last_error(output)}",
            "run the same command again: it resumes, and if the killed run left the state "
            f"locked it names the lock and the {program} unlock command that releases it{where}",
        )
    full = re.search(r"[^\n]*no space left on device[^\n]*", text, re.IGNORECASE)
    if full:
        return TerraformFailed(
            f"terraform {subcommand} failed: the disk is full ({full.group(0).strip()[:200]})",
            "free some space (Terraform writes under .kubeplat/ and TMPDIR), then run the same "
            "command again",
        )
    if "Error acquiring the state lock" in text:
        info = lock_holder(text)
        created = re.sub(r"(\d\d:\d\d:\d\d)\.\d+", r"\1", info.get("Created", "?"))
        created = created.replace(" +0000 UTC", " UTC")
        operation = info.get("Operation", "an operation").replace("OperationType", "").lower()
        lock_id = info.get("ID", "LOCK_ID")
        unlock = f"{program} unlock -e {env} {lock_id}"
        if cut_off is not None and _same_run(cut_off, info):
            return StateLocked(
                f"the environment's state is locked by a terraform {cut_off.get('command')} "
                f"started here at {cut_off.get('started')} whose kubeplat was stopped; that "
                f"Terraform is gone (lock ID {lock_id}, held by {info.get('Who', '?')})",
                f"its output: {cut_off.get('log')}; release the lock with: {unlock}; then run "
                "the same command again (it resumes)",
            )
        return StateLocked(
            f"the environment's state is locked by {info.get('Who', 'someone')} "
            f"({operation} since {created}, lock ID {lock_id})",
            "wait for that run to finish and try again; if it died, release the lock with: "
            + unlock,
        )
    if "Saved plan is stale" in text:
        return TerraformFailed(
            "the state changed since this plan was made (another run applied first); "
            "nothing was applied",
            "run the command again: it plans against the new state",
        )
    if subcommand == "init" and re.search(
        r"Failed to query available provider packages|Failed to install provider|"
        r"could not connect to registry|Failed to resolve provider packages",
        text,
    ):
        mirror = os.environ.get("KUBEPLAT_TF_MIRROR")
        cause = "its filesystem mirror " + mirror if mirror else "the Terraform registry"
        return TerraformFailed(
            f"terraform init could not install the AWS provider from {cause}: {last_error(output)}",
            (
                "the mirror must hold hashicorp/aws >= 5.60 (terraform providers mirror DIR)"
                if mirror
                else "without access to registry.terraform.io, set KUBEPLAT_TF_MIRROR to a "
                "filesystem mirror of the provider (made with: terraform providers mirror DIR), "
                "or configure provider_installation in ~/.terraformrc (TF_CLI_CONFIG_FILE)"
            ),
        )
    where = f"; Terraform's whole output: {log}" if log is not None else ""
    return TerraformFailed(
        f"terraform {subcommand} failed: {last_error(output)}",
        f"run again with --debug to see Terraform's whole output{where}",
    )


def _same_run(record: Mapping[str, Any], info: Mapping[str, str]) -> bool:
    """Whether the lock is the one a recorded run of this checkout took: the same user@host,
    created within two minutes of the run's start."""
    if info.get("Who") != f"{record.get('user')}@{record.get('host')}":
        return False
    try:
        started = dt.datetime.strptime(str(record.get("started")), "%Y-%m-%d %H:%M:%S UTC")
        created = dt.datetime.strptime(info.get("Created", "")[:19], "%Y-%m-%d %H:%M:%S")
    except ValueError:
        return False
    return abs((created - started).total_seconds()) < 120


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
                return _summary_and_detail(diagnostic)[:400]
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
    if tail and tail[-1].startswith("{"):  # a -json stream with no error in it: its last words
        with contextlib.suppress(ValueError):  # a line cut off mid-document
            return str(json.loads(tail[-1]).get("@message", tail[-1]))[:400]
    return tail[-1] if tail else "no output"


def json_document(output: str) -> Any:
    """The JSON document in a Terraform command's output. Its stderr comes merged in, and a
    warning (about the CLI configuration, say) may stand before or after the document and hold
    braces of its own: the document is the first one that begins a line and reads whole.
    ValueError when there is none."""
    decoder = json.JSONDecoder()
    for start in re.finditer(r"(?m)^\{", output):
        try:
            return decoder.raw_decode(output, start.start())[0]
        except ValueError:
            continue
    raise ValueError("no JSON document in Terraform's output")


def describe(diagnostics: Sequence[Mapping[str, Any]]) -> str:
    """One line per diagnostic of `terraform validate -json`."""
    out = []
    for diag in diagnostics:
        rng = diag.get("range") or {}
        filename, line = rng.get("filename"), (rng.get("start") or {}).get("line")
        where = f"{filename}:{line}: " if line else f"{filename}: "
        out.append((where if filename else "") + _summary_and_detail(diag))
    return "\n".join(out)


def _summary_and_detail(diagnostic: Mapping[str, Any]) -> str:
    """A diagnostic as one line: its summary, then its detail where it has one."""
    parts = [str(diagnostic.get(k) or "").strip() for k in ("summary", "detail")]
    return ": ".join(part for part in parts if part) or "an error without a summary"
