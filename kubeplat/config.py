"""Environment files: `environments/NAME.tfvars` → a validated, immutable `Environment`.

The variable set (names, types, defaults) is read from the Terraform module's `variables.tf`,
so the module and kubeplat can never disagree about it. Every problem in a file is collected and
reported at once (`ConfigError`), each with file, line, variable, what is wrong and a hint.

Whatever the path or the bytes, reading fails fast with one such error: only a regular file of
at most `MAX_BYTES` is read (never a FIFO or a device), and the other `MAX_*` limits are checked
before the parser sees the text. A value is quoted to ~80 characters at most.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from functools import cache
from pathlib import Path
from typing import Any

from kubeplat.errors import ConfigError, EnvironmentNotFound, KubeplatError, Problem, os_hint
from kubeplat.resources import data_dir, module_dir, user_cache, write_cached

ENV_DIR_VARIABLE = "KUBEPLAT_ENV_DIR"

# Values the seed's sample and our own sample leave for the user to fill in.
_PLACEHOLDERS = {"REQUIRED", "TODO", "TBD", "FIXME", "CHANGEME", "CHANGE_ME", "AWS_ACCOUNT|ALIAS"}
_LIST_PLACEHOLDER_ITEMS = {"IP", "CIDR", "IP/CIDR"}

_REGION = re.compile(r"^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-\d$")
_FLAVOR = re.compile(r"^[a-z][a-z0-9-]*\d[a-z0-9-]*\.[a-z0-9]+$")
_AMI_OR_EMPTY = re.compile(r"^(ami-([0-9a-f]{8}|[0-9a-f]{17}))?$")
_MIRROR = re.compile(r"^(https?://[^/\s]+|s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(/\S*)?$")
# An alias has at least one letter, so it can never be mistaken for an account id.
_ACCOUNT = re.compile(r"^(\d{12}|(?=[a-z0-9-]*[a-z])[a-z0-9][a-z0-9-]{1,61}[a-z0-9])$")
_KMS = re.compile(
    r"^([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|mrk-[0-9a-f]{32}"
    r"|alias/[A-Za-z0-9/_-]+"
    r"|arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:(key/[a-z0-9-]+|alias/[A-Za-z0-9/_-]+))$"
)
_DNS = re.compile(r"^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")
_NAME = re.compile(r"^[a-z][a-z0-9-]{0,19}$")
_CUSTOMER = re.compile(r"^([a-z0-9][a-z0-9-]{0,62})?$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_KUBE_VERSION = re.compile(r"^1\.\d+\.\d+$")
_ETCD_VERSION = re.compile(r"^3\.\d+\.\d+$")
# Only ASCII digits make a number: `\d` and `int()` also take '１２３' and '١٢٣'.
_INTEGER = re.compile(r"-?[0-9]+")
_EXPONENT = re.compile(r"-?[0-9]+(\.[0-9]+)?[eE][+-]?[0-9]+")

# Every number variable's range, (lowest, highest, an example). AWS takes at most a 32-bit
# integer anywhere (`_INT32`, for a variable missing here); these are far tighter.
_RANGES: dict[str, tuple[int, int, int]] = {
    # Longer than two hours keeps a broken instance in service for hours.
    "compute_asg_grace_period": (0, 7200, 300),
    # Kubernetes' own documented limit is 5,000 nodes in a cluster.
    "compute_asg_min": (0, 5000, 2),
    "compute_asg_max": (0, 5000, 3),
    # etcd: 7 members at most (each write waits for a majority).
    "secure_asg_min": (1, 7, 3),
    "secure_asg_max": (1, 7, 3),
    "etcd_snapshot_minutes": (5, 1440, 30),
    "etcd_snapshot_keep": (1, 10_000, 48),
    "etcd_snapshot_max_age_days": (1, 3650, 7),
    "cert_renew_days": (7, 180, 90),
    "audit_log_max_age_days": (1, 3650, 30),
    # An instance refresh replaces at most this share of the compute layer at once (0: all).
    "compute_roll_min_healthy": (0, 100, 90),
    # Surge: the refresh may launch new instances first, up to this share (AWS: 100 to 200).
    "compute_roll_max_healthy": (100, 200, 100),
    # An hour: longer keeps a roll waiting on one pod whose budget never allows it to go.
    "node_drain_timeout": (0, 3600, 600),
    "audit_log_max_backups": (1, 1000, 10),
    "audit_log_max_size_mb": (1, 10_000, 100),
}
_INT32 = (-(2**31), 2**31 - 1, 1)

# Limits on an environment file, checked before it is parsed: python-hcl2 takes about a
# millisecond a token and a line, and recurses once per level of nesting, so a corrupt or
# hostile file must fail here at once, not after minutes or with a RecursionError. A real
# file sets ~35 variables on ~80 lines in ~4 KB.
MAX_BYTES = 1 << 20
MAX_LINES = 5_000
MAX_VARIABLES = 200
MAX_TOKENS = 2_000
MAX_DEPTH = 32
MAX_DIGITS = 100  # a number literal; far below int()'s 4,300-digit limit
_KEY_BYTES = 64 << 10  # an OpenSSH public key file
_SHOWN = 80  # characters of a value a message quotes

# Tokens as far as the limits care: strings and comments are skipped whole (an unterminated
# one ends at the end of its line, or of the file, so no input makes this scan quadratic).
_TOKEN = re.compile(
    r'(?P<string>"(?:[^"\\\n]|\\.)*(?:"|$))'
    r"|(?P<comment>(?:#|//)[^\n]*|/\*[\s\S]*?(?:\*/|\Z))"
    r"|(?P<open>[\[{(])|(?P<close>[\]})])"
    r"|(?P<word>[A-Za-z_][A-Za-z0-9_-]*)"
    r"|(?P<digits>[0-9]+)"
    r"|(?P<equals>=(?![=>]))"
    r"|(?P<other>[=!<>]=|=>|\S)",
    re.MULTILINE,
)


@dataclass(frozen=True)
class Variable:
    """One variable of the module, as `variables.tf` declares it."""

    name: str
    type: str
    description: str
    default: Any = None
    required: bool = True


@cache
def variables() -> Mapping[str, Variable]:
    """The module's variables, read from `terraform/variables.tf`, in file order."""
    path = module_dir() / "variables.tf"
    data, _ = _parse_hcl(path.read_text(encoding="utf-8"))
    found: dict[str, Variable] = {}
    for block in data.get("variable", []):
        for raw_name, body in block.items():
            name = raw_name.strip('"')
            found[name] = Variable(
                name=name,
                type=str(body.get("type", "string")),
                description=str(body.get("description", "")),
                default=body.get("default"),
                required="default" not in body,
            )
    return found


@dataclass(frozen=True)
class Environment:
    """A validated environment file. Field names are exactly the module's variables."""

    path: Path
    aws_account: str
    aws_region: str
    aws_profile: str
    compute_asg_grace_period: int
    compute_asg_max: int
    compute_asg_min: int
    compute_flavor: str
    coreos_image: str
    dns_zone_name: str
    environment: str
    etcd_flavor: str
    kms_master_id: str
    kubeapi_access_list: str
    platform: str
    secrets_bucket_name: str
    secure_asg_max: int
    secure_asg_min: int
    ssh_access_list: str
    terraform_bucket_name: str
    sandbox: bool
    kubernetes_version: str
    etcd_version: str
    topology: str
    customer: str
    key_algorithm: str
    ssh_public_key: str
    node_os: str
    artifact_mirror: str
    etcd_snapshot_minutes: int
    etcd_snapshot_keep: int
    etcd_snapshot_max_age_days: int
    cert_renew_days: int
    secrets_encryption: bool = True
    audit_log: bool = True
    audit_log_max_age_days: int = 30
    compute_roll_min_healthy: int = 90
    compute_roll_max_healthy: int = 100
    node_drain_timeout: int = 600
    audit_log_max_backups: int = 10
    audit_log_max_size_mb: int = 100
    cloud_controller_manager: bool = True
    metrics_server: bool = True
    ebs_csi_driver: bool = True
    pod_identity: bool = True
    oidc_bucket_name: str = ""
    warnings: tuple[Problem, ...] = ()

    @property
    def name(self) -> str:
        """The environment's name (also its file's name)."""
        return self.environment

    @property
    def ssh_cidrs(self) -> tuple[str, ...]:
        """`ssh_access_list` as CIDRs (a bare IP becomes /32)."""
        return tuple(str(_network(s)) for s in _split_list(self.ssh_access_list))

    @property
    def kubeapi_cidrs(self) -> tuple[str, ...]:
        """`kubeapi_access_list` as CIDRs (a bare IP becomes /32)."""
        return tuple(str(_network(s)) for s in _split_list(self.kubeapi_access_list))

    @property
    def api_dns_name(self) -> str:
        """The API's stable name, `kube.<environment>.<dns_zone_name>`."""
        return f"kube.{self.environment}.{self.dns_zone_name}"

    @property
    def ssh_public_key_path(self) -> Path | None:
        """The existing SSH public key to use, or None to generate one."""
        if not self.ssh_public_key:
            return None
        return (self.path.parent / Path(self.ssh_public_key).expanduser()).resolve()

    @property
    def workdir(self) -> Path:
        """`.kubeplat/<environment>/`: this environment's local cache and Terraform data."""
        return workspace_root(self.path) / ".kubeplat" / self.environment

    @property
    def kubeconfig_path(self) -> Path:
        """Where `up` and `kubeconfig` write the admin kubeconfig: it holds the admin key, so it
        lives with the other keys under `.kubeplat/<environment>/pki/`."""
        return self.workdir / "pki" / "kubeconfig" / "admin.conf"

    def tfvars(self) -> dict[str, Any]:
        """The module's variables as Terraform gets them."""
        return {name: getattr(self, name) for name in variables()}


def workspace_root(env_file: Path) -> Path:
    """The repository an environment file belongs to: the parent of its `environments/`."""
    parent = env_file.resolve().parent
    return parent.parent if parent.name == "environments" else parent


def env_dir(explicit: str | None = None) -> Path:
    """Where `-e NAME` looks and `init` writes: `--env-dir`, then `$KUBEPLAT_ENV_DIR`, then the
    nearest `environments/` in the current directory or one of its parents (as git finds
    `.git`), else `./environments`."""
    given = explicit or os.environ.get(ENV_DIR_VARIABLE)
    if given:
        return Path(given)
    return _nearest_env_dir() or Path("environments")


def _nearest_env_dir() -> Path | None:
    """The first `environments/` folder found walking up from the current directory, as a path
    relative to it (`environments`, `../../environments`), so that messages name it as a user
    would type it; None when there is none. From inside `environments/` itself, the walk finds
    it one level up: `init` never writes `environments/environments/`."""
    try:
        here = Path.cwd()
    except OSError:  # the current directory was removed
        return None
    for up, folder in enumerate((here, *here.parents)):
        try:
            found = (folder / "environments").is_dir()
        except OSError:  # a folder above that cannot be looked into ends the walk
            return None
        if found:
            return Path(*([".."] * up), "environments")
    return None


def find_env_file(env: str, directory: str | None = None) -> Path:
    """Resolve `-e` to a file: a path to a `.tfvars` file, or a name under the env dir."""
    if env.endswith(".tfvars") or os.sep in env or "/" in env:
        path = Path(env)
        if not _exists(path):
            raise EnvironmentNotFound(path.stem, path, [])
        return path
    folder = env_dir(directory)
    path = folder / f"{env}.tfvars"
    if not _exists(path):
        raise EnvironmentNotFound(env, path, _available(folder))
    return path


def _exists(path: Path) -> bool:
    """Whether `path` names anything; a path that cannot even be looked up (a NUL byte, a name
    too long, a symbolic link loop) is a `ConfigError` naming it and why."""
    try:
        os.stat(path)
    except FileNotFoundError:
        return False
    except ValueError:
        raise _file_error(path, "the path contains a NUL byte", "check the path") from None
    except OSError as exc:
        raise _file_error(path, f"cannot be read: {exc.strerror}", _os_hint(exc)) from None
    return True


def _available(folder: Path) -> list[str]:
    try:
        return sorted(p.stem for p in folder.glob("*.tfvars")) if folder.is_dir() else []
    except OSError:
        return []


def load(env: str, directory: str | None = None) -> Environment:
    """Find, read and validate an environment; raise `ConfigError` listing every problem."""
    return load_file(find_env_file(env, directory))


def load_file(path: Path) -> Environment:
    """Read and validate one environment file."""
    text = _read(path)
    _check_limits(path, text)
    try:
        data, lines = _parse_hcl(text)
    except SyntaxError as exc:
        raise ConfigError(path, [_syntax_problem(path, text, exc)]) from None
    checker = _Checker(path, data, lines)
    values = checker.run()
    errors = [p for p in checker.problems if not p.warning]
    if errors:
        raise ConfigError(path, checker.problems)
    return Environment(path=path, warnings=tuple(checker.problems), **values)


def _syntax_problem(path: Path, text: str, exc: SyntaxError) -> Problem:
    """What the parser could not read, as one problem: an unclosed string on the line where it
    opens (the parser, which lets a string run on over the next lines, fails lines later)."""
    unclosed = _unclosed_string(text)
    if unclosed and (not exc.lineno or exc.lineno < 1 or unclosed[1] <= exc.lineno):
        variable, line, column = unclosed
        return Problem(
            path,
            variable and _clip(variable),
            f'the string opened at column {column} has no closing "',
            'close it with " on the same line; a string cannot span lines',
            line,
        )
    return Problem(
        path,
        None,
        f"not a valid tfvars file: {_clip(exc.msg)}",
        "every line is NAME = VALUE, strings in double quotes",
        line=exc.lineno,
    )


def _unclosed_string(text: str) -> tuple[str | None, int, int] | None:
    """The first string in `text` not closed on its own line, as (variable, line, column);
    quotes in comments do not count."""
    variable = word = None
    for match in _TOKEN.finditer(text):
        kind, token = match.lastgroup, match.group()
        # A string that ends at the end of its line, or a lone quote (one ending in a
        # backslash at the end of the line, which the string pattern does not take).
        if (kind == "string" and not _closed(token)) or (kind == "other" and token == '"'):
            line_start = text.rfind("\n", 0, match.start()) + 1
            line = text.count("\n", 0, match.start()) + 1
            return variable, line, match.start() - line_start + 1
        if kind == "equals":
            variable = word
        word = token if kind == "word" else None
    return None


def _closed(string: str) -> bool:
    """Whether a string token ends with its closing quote (not an escaped one)."""
    if len(string) < 2 or not string.endswith('"'):
        return False
    backslashes = len(string[:-1]) - len(string[:-1].rstrip("\\"))
    return backslashes % 2 == 0


def _read(path: Path) -> str:
    """The file's text: UTF-8 without a byte-order mark, any line ending made `\\n`."""
    try:
        raw = _read_regular(path, MAX_BYTES, "an environment file")
    except _Unreadable as exc:
        raise _file_error(path, exc.message, exc.hint) from None
    if b"\x00" in raw:
        raise _file_error(path, "is binary, not a tfvars text file", "pass an environment file")
    try:
        text = raw.decode("utf-8-sig")  # an editor's byte-order mark is not content
    except UnicodeDecodeError:
        raise _file_error(path, "is not UTF-8 text", "save the file as UTF-8") from None
    # Windows' CRLF and old Mac's CR-only endings: each CR is one line break, as editors show it.
    return text.replace("\r\n", "\n").replace("\r", "\n")


class _Unreadable(Exception):
    """A path that cannot be read as a regular file: why, and what to do."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


def read_public_key(path: Path) -> bytes:
    """The bytes of the environment's `ssh_public_key` file, read as validation reads it (a
    regular file of at most 64 KiB, never a FIFO or a device): a file swapped since
    validation is an error naming it, never a hang."""
    try:
        return _read_regular(path, _KEY_BYTES, "a public key file")
    except _Unreadable as exc:
        raise KubeplatError(f"{_shown_path(path)}: {exc.message}", exc.hint) from None


def _read_regular(path: Path, limit: int, what: str) -> bytes:
    """The bytes of a regular file of at most `limit` bytes, else `_Unreadable`.

    Opened without blocking and checked before any read, so that a FIFO, a device such as
    /dev/zero or a folder is refused at once instead of hanging or filling the memory; and
    never more than `limit` + 1 bytes are read, whatever the file claims its size is.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except ValueError:
        raise _Unreadable("the path contains a NUL byte", "check the path") from None
    except OSError as exc:
        raise _Unreadable(f"cannot be read: {exc.strerror}", _os_hint(exc)) from None
    try:
        info = os.fstat(fd)
        kind = _not_regular(info.st_mode)
        if kind:
            raise _Unreadable(f"is {kind}, not {what}", f"give the path of {what}")
        if info.st_size > limit:
            raise _too_big(f"{info.st_size:,} bytes", limit, what)
        data = _read_at_most(fd, limit + 1)
    except OSError as exc:
        raise _Unreadable(f"cannot be read: {exc.strerror}", _os_hint(exc)) from None
    finally:
        os.close(fd)
    if len(data) > limit:  # a file larger than its size said (in /proc, or growing)
        raise _too_big(f"more than {limit:,} bytes", limit, what)
    return data


def _read_at_most(fd: int, size: int) -> bytes:
    chunks: list[bytes] = []
    left = size
    while left > 0:
        chunk = os.read(fd, min(left, 1 << 16))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _not_regular(mode: int) -> str:
    """What a file that is not a regular file is, or "" for a regular file."""
    if stat.S_ISREG(mode):
        return ""
    kinds = (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    )
    return next((name for test, name in kinds if test(mode)), "not a regular file")


# What a file too big to be what it should be is more likely to be, by what it should be.
_TOO_BIG_HINTS = {
    "an environment file": "is this the right file? Each variable is one NAME = VALUE line",
    "a public key file": (
        "is this the right file? An OpenSSH public key is one line, e.g. ~/.ssh/id_ed25519.pub"
    ),
}


def _too_big(shown: str, limit: int, what: str) -> _Unreadable:
    return _Unreadable(f"is {shown}; {what} is at most {limit:,} bytes", _TOO_BIG_HINTS[what])


def _file_error(path: Path, message: str, hint: str) -> ConfigError:
    """A `ConfigError` about the file as a whole (it cannot be read, or is not text)."""
    shown = _shown_path(path)
    return ConfigError(shown, [Problem(shown, None, message, hint)])


def _shown_path(path: Path) -> Path:
    """`path` as a message shows it: a NUL byte visible, an over-long path shortened."""
    text = str(path).replace("\x00", "\\0")
    return Path(text if len(text) <= 120 else f"{text[:60]}…{text[-40:]}")


def _os_hint(exc: OSError) -> str:
    return os_hint(exc, "check the path")


def _clip(text: str, limit: int = _SHOWN) -> str:
    """`text` cut to about `limit` characters, with an ellipsis where it was cut."""
    return text if len(text) <= limit else f"{text[:limit]}…"


def _quote(value: Any) -> str:
    """A value as a message quotes it: `repr` of text, never more than ~80 characters of it
    (a huge value is cut and its length given, instead of being echoed back whole)."""
    if isinstance(value, str):
        if len(value) <= _SHOWN:
            return repr(value)
        shown = repr(value[:_SHOWN])
        return f"{shown[:-1]}…{shown[-1]} ({len(value):,} characters)"
    return _clip(str(value))


def _check_limits(path: Path, text: str) -> None:
    """Refuse, before parsing, what the parser cannot finish quickly or at all (see MAX_*)."""
    lines = text.count("\n") + 1
    if lines > MAX_LINES:
        raise ConfigError(
            path,
            [
                Problem(
                    path,
                    None,
                    f"has {lines:,} lines; an environment file has at most {MAX_LINES:,}",
                    "is this the right file? Each variable is one NAME = VALUE line",
                )
            ],
        )
    found = _over_limits(text)
    if found:
        variable, message, hint, offset = found
        line = text.count("\n", 0, offset) + 1
        raise ConfigError(path, [Problem(path, variable and _clip(variable), message, hint, line)])


def _over_limits(text: str) -> tuple[str | None, str, str, int] | None:
    """The first limit `text` goes over, as (variable, message, hint, offset), else None."""
    single = "a variable takes one value: a string, a whole number, true or false"
    depth = tokens = count = 0
    variable: str | None = None
    word: str | None = None
    for match in _TOKEN.finditer(text):
        kind = match.lastgroup
        if kind == "comment":
            continue
        tokens += 1
        if tokens > MAX_TOKENS:
            message = f"has more than {MAX_TOKENS:,} names, values and symbols"
            return None, message, single, match.start()
        if kind == "open":
            depth += 1
            if depth > MAX_DEPTH:
                return (
                    variable,
                    f"nests lists or maps more than {MAX_DEPTH} deep",
                    single,
                    match.start(),
                )
        elif kind == "close":
            depth = max(depth - 1, 0)
        elif kind == "equals" and depth == 0:
            count += 1
            variable = word
            if count > MAX_VARIABLES:
                message = (
                    f"sets more than {MAX_VARIABLES} variables (the module has {len(variables())})"
                )
                return (
                    None,
                    message,
                    "is this the right file? See environments/env.tfvars.sample",
                    match.start(),
                )
        elif kind == "digits" and len(match.group()) > MAX_DIGITS:
            message, hint = _long_number(variable, len(match.group()))
            return variable, message, hint, match.start()
        word = match.group() if kind == "word" else None
    return None


def _long_number(variable: str | None, digits: int) -> tuple[str, str]:
    """A number literal too long to convert: (message, hint)."""
    if variable in _RANGES:
        example = _RANGES[variable][2]
        message = f"is a {digits:,}-digit number; it must be {_bounds(variable)}"
        return message, f"e.g. {variable} = {example}"
    return f"has a {digits:,}-digit number; no value here is that long", "check the value"


def _bounds(variable: str) -> str:
    low, high, _ = _RANGES.get(variable, _INT32)
    return f"{low} or more and {high} or less"


# Parses kept by the text's digest (and python-hcl2's installed copy): the parser takes most of
# a small command's start (a third of a second), the same files are read by every command.
_PARSED: dict[str, str] = {}


def _parse_hcl(text: str) -> tuple[dict[str, Any], dict[str, list[int]]]:
    """`_parse_text`, remembered in this process and in the user's cache directory (a text
    that does not parse is never cached: its error is reported each time)."""
    import hashlib
    import importlib.util
    import json

    spec = importlib.util.find_spec("hcl2")
    origin = spec.origin if spec and spec.origin else ""
    try:
        installed = f"{origin}:{os.stat(origin).st_mtime_ns}" if origin else ""
    except OSError:
        installed = origin
    key = hashlib.sha256(f"{_PARSE_FORMAT}\0{installed}\0{text}".encode()).hexdigest()
    stored = _PARSED.get(key)
    directory = user_cache("hcl")
    path = directory / f"{key}.json" if directory else None
    if stored is None and path is not None:
        try:
            stored = path.read_text(encoding="utf-8")
        except (OSError, UnicodeError):
            stored = None
    if stored is not None:
        try:
            record = json.loads(stored)
            data, lines = record["data"], {k: list(v) for k, v in record["lines"].items()}
            _PARSED[key] = stored
            return data, lines
        except (ValueError, KeyError, TypeError, AttributeError):
            pass  # a damaged entry: parsed again and replaced
    data, lines = _parse_text(text)
    stored = json.dumps({"data": data, "lines": lines})
    _PARSED[key] = stored
    if path is not None:
        write_cached(path, stored)
    return json.loads(stored)["data"], lines


_PARSE_FORMAT = "1"


def _parse_text(text: str) -> tuple[dict[str, Any], dict[str, list[int]]]:
    """Parse HCL with python-hcl2; return values and the line(s) of each top-level name."""
    import hcl2
    from lark.exceptions import LarkError, UnexpectedInput, VisitError

    try:
        tree = hcl2.parses_to_tree(text)
    except UnexpectedInput as exc:
        err = SyntaxError(f"unexpected input at line {exc.line}, column {exc.column}")
        err.msg, err.lineno = f"unexpected input at column {exc.column}", exc.line
        raise err from None
    except (LarkError, ValueError) as exc:
        raise SyntaxError(str(exc).splitlines()[0]) from None
    except RecursionError:  # MAX_DEPTH keeps environment files well clear of this
        raise SyntaxError("nested too deeply") from None
    lines: dict[str, list[int]] = {}
    body = tree.children[0]
    for attribute in getattr(body, "children", []):
        # Only top-level attributes are variables; blocks are not allowed in a tfvars file.
        if getattr(attribute, "data", None) != "attribute":
            continue
        token = attribute.children[0].children[0]
        lines.setdefault(str(token), []).append(int(token.line))
    options = hcl2.SerializationOptions(strip_string_quotes=True, with_comments=False)
    try:
        data = hcl2.serialize(hcl2.transform(tree), serialization_options=options)
    except VisitError as exc:
        # lark's wrapper ("Error trying to process rule ...") says nothing: the reason is the
        # exception it wraps, the line that of the part it was turning into a value.
        reason = str(exc.orig_exc).strip().splitlines() or [type(exc.orig_exc).__name__]
        err = SyntaxError(reason[0])
        meta = getattr(exc.obj, "meta", None)
        err.lineno = getattr(meta, "line", None) or getattr(exc.obj, "line", None)
        raise err from None
    except (LarkError, ValueError) as exc:
        raise SyntaxError(str(exc).splitlines()[0]) from None
    except RecursionError:
        raise SyntaxError("nested too deeply") from None
    return data, lines


def _split_list(value: str) -> list[str]:
    return [item.strip() for item in value.split(",")]


def _network(item: str) -> ipaddress.IPv4Network:
    """An IPv4 address or CIDR as a network (a bare address is a /32); ValueError otherwise."""
    return ipaddress.IPv4Network(item if "/" in item else f"{item}/32", strict=True)


class _Checker:
    """Runs every check over one parsed file, collecting problems instead of stopping."""

    def __init__(self, path: Path, data: Mapping[str, Any], lines: Mapping[str, list[int]]):
        self.path = path
        self.data = data
        self.lines = lines
        self.problems: list[Problem] = []

    def problem(self, var: str | None, message: str, hint: str = "", warning: bool = False) -> None:
        line = self.lines.get(var, [None])[0] if var else None
        shown = _clip(var) if var else None
        self.problems.append(Problem(self.path, shown, message, hint, line, warning))

    def run(self) -> dict[str, Any]:
        known = variables()
        values: dict[str, Any] = {}
        for name, lines in self.lines.items():
            if len(lines) > 1:
                self.problems.append(
                    Problem(
                        self.path,
                        name,
                        f"set more than once (lines {', '.join(map(str, lines))})",
                        "keep one",
                        lines[1],
                    )
                )
        for name, raw in self.data.items():
            if name not in known:
                close = _close_matches(name, list(known))
                hint = (
                    f"did you mean {close[0]!r}?" if close else "see environments/env.tfvars.sample"
                )
                self.problem(name, "unknown variable", hint)
                continue
            converted = self._convert(known[name], raw)
            if converted is not None:
                values[name] = converted
        for var in known.values():
            if var.name in values:
                continue
            if var.required:
                if var.name not in self.data:
                    self.problem(var.name, "missing", f"add: {var.name} = … ({var.description})")
            else:
                values[var.name] = var.default
        for check in _CHECKS:
            for name, message, hint, warning in check(values):
                self.problem(name, message, hint, warning)
        self._check_environment_name(values)
        self._check_ssh_public_key(values)
        return values

    def _convert(self, var: Variable, raw: Any) -> Any:
        """Coerce one value to its declared type; None (with a problem) when it cannot be."""
        raw = _unwrap_number(raw)
        if isinstance(raw, str) and "${" in raw:
            self.problem(
                var.name,
                "expressions are not allowed in an environment file",
                "use a literal value",
            )
            return None
        if isinstance(raw, str) and (raw.strip() in _PLACEHOLDERS or _is_list_placeholder(raw)):
            self.problem(
                var.name,
                f"placeholder {_quote(raw)} left in",
                f"fill it in: {var.description}",
            )
            return None
        if var.type == "number":
            return self._number(var, raw)
        if var.type == "bool":
            if isinstance(raw, bool):
                return raw
            if isinstance(raw, str) and raw in ("true", "false"):
                return raw == "true"
            self.problem(
                var.name, f"expected true or false, got {_quote(raw)}", f"{var.name} = true"
            )
            return None
        if isinstance(raw, str):
            return raw
        if isinstance(raw, int) and not isinstance(raw, bool):
            return str(raw)
        self.problem(
            var.name,
            f"expected a string, got {_type_name(raw)}",
            f'{var.name} = "…" (lists are written as one comma-separated string)',
        )
        return None

    def _number(self, var: Variable, raw: Any) -> int | None:
        """A whole number in ASCII digits within the variable's range; None (with a problem)."""
        low, high, example = _RANGES.get(var.name, _INT32)
        hint = f"e.g. {var.name} = {example}"
        text = raw.strip() if isinstance(raw, str) else raw
        if isinstance(text, int) and not isinstance(text, bool):
            text = str(text)
        if isinstance(text, str) and _EXPONENT.fullmatch(text):
            message = f"is {_clip(text)}; it must be {_bounds(var.name)}, in digits 0-9"
            self.problem(var.name, message, hint)
            return None
        if not isinstance(text, str) or not _INTEGER.fullmatch(text):
            self.problem(
                var.name,
                f"expected a whole number, got {_quote(raw)}",
                f"digits 0-9, {_bounds(var.name)}; {hint}",
            )
            return None
        # Too many digits is out of range whatever they are: no int() of 5,000 digits.
        if len(text.lstrip("-").lstrip("0")) <= 18 and low <= int(text) <= high:
            return int(text)
        shown = text if len(text) <= 20 else f"{text[:20]}… ({len(text):,} digits)"
        self.problem(var.name, f"is {shown}; it must be {_bounds(var.name)}", hint)
        return None

    def _check_ssh_public_key(self, values: Mapping[str, Any]) -> None:
        given = values.get("ssh_public_key")
        if not isinstance(given, str) or not given:
            return
        try:
            path = self.path.parent / Path(given).expanduser()
        except RuntimeError:  # "~" and no home directory: read it as written
            path = self.path.parent / given
        try:
            text = _read_regular(path, _KEY_BYTES, "a public key file").decode("utf-8").strip()
        except _Unreadable as exc:
            self.problem("ssh_public_key", f"{_shown_path(path)} {exc.message}", exc.hint)
            return
        except UnicodeDecodeError:
            self.problem(
                "ssh_public_key", f"{_shown_path(path)} is not text", "give the .pub file's path"
            )
            return
        if "PRIVATE KEY" in text:
            self.problem(
                "ssh_public_key",
                f"{path} is a private key",
                "give the public key (the .pub file); a private key never leaves your machine",
            )
        elif not re.match(r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp\d+) [A-Za-z0-9+/=]+", text):
            self.problem(
                "ssh_public_key",
                f"{path} is not an OpenSSH public key",
                "e.g. ~/.ssh/id_ed25519.pub",
            )

    def _check_environment_name(self, values: Mapping[str, Any]) -> None:
        name = values.get("environment")
        if self.path.suffix == ".tfvars" and isinstance(name, str) and name != self.path.stem:
            self.problem(
                "environment",
                f"is {_quote(name)} but the file is {self.path.name}",
                f'set environment = "{self.path.stem}" or rename the file to {_clip(name)}.tfvars',
            )


def _unwrap_number(raw: Any) -> Any:
    """python-hcl2 keeps a number written with an exponent (`1e20`) as the expression
    `"${1e20}"`: it is a number literal all the same, not an expression."""
    if isinstance(raw, str) and raw.startswith("${") and raw.endswith("}"):
        inner = raw[2:-1].strip()
        if _EXPONENT.fullmatch(inner):
            return inner
    return raw


def _close_matches(word: str, choices: list[str]) -> list[str]:
    """difflib's did-you-mean; none for a word far longer than any choice."""
    if len(word) > 100:
        return []
    return difflib.get_close_matches(word, choices, n=1)


def _is_list_placeholder(value: str) -> bool:
    items = _split_list(value)
    return len(items) >= 1 and all(item.upper() in _LIST_PLACEHOLDER_ITEMS for item in items)


def _type_name(value: Any) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a map"
    if isinstance(value, bool):
        return "a bool"
    return type(value).__name__


# Each check takes the converted values (only those that converted) and yields
# (variable, message, hint, warning). A check skips variables that failed conversion.
_Finding = tuple[str, str, str, bool]


def _check_patterns(values: Mapping[str, Any]) -> Iterator[_Finding]:
    rules: list[tuple[str, re.Pattern[str], str, str]] = [
        (
            "aws_account",
            _ACCOUNT,
            "is not an account id or alias",
            '12 digits, e.g. "123456789012"',
        ),
        ("aws_region", _REGION, "is not an AWS region", 'e.g. "eu-west-1"'),
        ("compute_flavor", _FLAVOR, "is not an EC2 instance type", 'e.g. "t3.small"'),
        ("etcd_flavor", _FLAVOR, "is not an EC2 instance type", 'e.g. "t3.small"'),
        ("coreos_image", _AMI_OR_EMPTY, "is not an AMI id", 'e.g. "ami-0abcdef1234567890"'),
        ("kms_master_id", _KMS, "is not a KMS key id, ARN or alias", 'e.g. "alias/kubeplat-dev"'),
        ("dns_zone_name", _DNS, "is not a DNS zone name", 'lowercase, e.g. "example.com"'),
        ("environment", _NAME, "is not a valid name", "1-20 lowercase letters, digits, hyphens"),
        ("platform", _NAME, "is not a valid name", "1-20 lowercase letters, digits, hyphens"),
        ("customer", _CUSTOMER, "is not a valid name", "lowercase letters, digits, hyphens"),
        ("kubernetes_version", _KUBE_VERSION, "is not a Kubernetes version", 'e.g. "1.33.5"'),
        ("etcd_version", _ETCD_VERSION, "is not an etcd v3 version", 'e.g. "3.5.21"'),
    ]
    for name, pattern, message, hint in rules:
        value = values.get(name)
        if isinstance(value, str) and not pattern.fullmatch(value):
            yield name, f"{_quote(value)} {message}", hint, False
    algorithm = values.get("key_algorithm")
    if isinstance(algorithm, str) and algorithm not in ("ecdsa-p256", "rsa-2048"):
        yield (
            "key_algorithm",
            f"{_quote(algorithm)} is not supported",
            'use "ecdsa-p256" or "rsa-2048"',
            False,
        )
    yield from _check_pinned(values)
    topology = values.get("topology")
    if isinstance(topology, str) and topology not in ("stacked", "separate"):
        yield (
            "topology",
            f"{_quote(topology)} is not a topology",
            'use "stacked" or "separate"',
            False,
        )
    yield from _check_nodes(values)


def _check_nodes(values: Mapping[str, Any]) -> Iterator[_Finding]:
    from kubeplat.node import osfamily

    names = [family.name for family in osfamily.FAMILIES.values()]
    node_os = values.get("node_os")
    if isinstance(node_os, str) and node_os not in names:
        close = _close_matches(node_os, names)
        hint = f"did you mean {close[0]!r}?" if close else "use one of: " + ", ".join(names)
        yield "node_os", f"{_quote(node_os)} is not a supported operating system", hint, False
    mirror = values.get("artifact_mirror")
    if isinstance(mirror, str) and mirror and not _MIRROR.fullmatch(mirror):
        yield (
            "artifact_mirror",
            f"{_quote(mirror)} is not an https://, http:// or s3:// URL",
            'e.g. "https://mirror.example.com/kubeplat" or "s3://my-artifacts/kubeplat"',
            False,
        )


def _check_pinned(values: Mapping[str, Any]) -> Iterator[_Finding]:
    from kubeplat import artifacts

    pinned_tables = (
        ("kubernetes_version", _KUBE_VERSION, artifacts.KUBERNETES),
        ("etcd_version", _ETCD_VERSION, artifacts.ETCD),
    )
    for name, shape, table in pinned_tables:
        value = values.get(name)
        # A malformed version is reported by the shape check; only well-formed ones here.
        if isinstance(value, str) and shape.fullmatch(value) and value not in table:
            pinned = ", ".join(sorted(table))
            yield (
                name,
                f"no pinned binary digests for {_quote(value)}",
                (f"use one of: {pinned} (nodes never run an unchecked binary)"),
                False,
            )


def _check_buckets(values: Mapping[str, Any]) -> Iterator[_Finding]:
    for name in ("secrets_bucket_name", "terraform_bucket_name"):
        value = values.get(name)
        if not isinstance(value, str):
            continue
        reason = _bucket_problem(value)
        if reason:
            yield (
                name,
                f"{_quote(value)} is not a valid S3 bucket name: {reason}",
                ("3-63 lowercase letters, digits, dots, hyphens; a letter or digit at each end"),
                False,
            )
    secrets, state = values.get("secrets_bucket_name"), values.get("terraform_bucket_name")
    yield from _check_oidc_bucket(values, secrets)
    if values.get("ebs_csi_driver") is True and values.get("pod_identity") is False:
        yield (
            "ebs_csi_driver",
            "needs pod_identity: the driver's controller assumes a role of its own",
            "set pod_identity = true, or ebs_csi_driver = false",
            False,
        )
    if isinstance(secrets, str) and secrets == state:
        yield (
            "terraform_bucket_name",
            "is the same bucket as secrets_bucket_name",
            ("use two buckets: node roles may read the secrets bucket, never the state"),
            False,
        )


def _check_oidc_bucket(values: Mapping[str, Any], secrets: Any) -> Iterator[_Finding]:
    """The issuer's bucket: a valid name without dots (its documents are read over TLS at
    https://BUCKET.s3.REGION.amazonaws.com, whose certificate has one level of wildcard)."""
    given = values.get("oidc_bucket_name")
    if values.get("pod_identity") is False or not isinstance(given, str):
        return
    if not given and not (isinstance(secrets, str) and not _bucket_problem(secrets)):
        return  # the secrets bucket's own problem is reported
    name = given or f"{secrets}-oidc"
    variable = "oidc_bucket_name"
    shown = _quote(name) if given else f"{_quote(name)} (<secrets_bucket_name>-oidc)"
    reason = _bucket_problem(name) or ("dots (TLS)" if "." in name else "")
    if reason:
        yield (
            variable,
            f"{shown} is not a valid name for the service-account issuer's bucket: {reason}",
            "set oidc_bucket_name: 3-63 lowercase letters, digits, hyphens (no dots)",
            False,
        )
    for other in ("secrets_bucket_name", "terraform_bucket_name"):
        if name == values.get(other):
            yield (
                variable,
                f"is the same bucket as {other}",
                "the issuer's bucket is public: give it a bucket of its own",
                False,
            )


def _bucket_problem(name: str) -> str:
    if not 3 <= len(name) <= 63:
        return f"{len(name)} characters"
    if not _BUCKET.fullmatch(name):
        return "only lowercase letters, digits, dots and hyphens"
    if ".." in name or ".-" in name or "-." in name:
        return "dots next to dots or hyphens"
    if re.fullmatch(r"\d+\.\d+\.\d+\.\d+", name):
        return "formatted as an IP address"
    if name.startswith(("xn--", "sthree-")) or name.endswith(("-s3alias", "--ol-s3")):
        return "reserved prefix or suffix"
    return ""


def _check_access_lists(values: Mapping[str, Any]) -> Iterator[_Finding]:
    for name in ("kubeapi_access_list", "ssh_access_list"):
        value = values.get(name)
        if not isinstance(value, str):
            continue
        for item in _split_list(value):
            yield from _check_access_item(name, item)


def _check_access_item(name: str, item: str) -> Iterator[_Finding]:
    example = 'comma-separated IPv4 addresses or CIDRs, e.g. "203.0.113.7,198.51.100.0/24"'
    if not item:
        yield name, "has an empty entry", "remove the extra comma", False
        return
    try:
        network = _network(item)
    except ValueError as exc:
        if _is_ipv6(item):
            # The module's VPC, subnets and security-group rules (cidr_ipv4) are IPv4 only.
            yield name, f"{_quote(item)} is IPv6; only IPv4 is supported", example, False
        else:
            yield name, f"{_quote(item)} is not an IP or CIDR ({_clip(str(exc))})", example, False
        return
    if network.prefixlen == 0:
        yield (
            name,
            f"{_quote(item)} opens access to the whole internet",
            "list the addresses of your offices and CI runners",
            True,
        )


def _is_ipv6(item: str) -> bool:
    try:
        ipaddress.IPv6Network(item, strict=False)
    except ValueError:
        return False
    return True


def _check_sizes(values: Mapping[str, Any]) -> Iterator[_Finding]:
    # Each number is in its range already (`_Checker._number`); these relate two of them.
    for layer in ("compute", "secure"):
        low, high = values.get(f"{layer}_asg_min"), values.get(f"{layer}_asg_max")
        if isinstance(low, int) and isinstance(high, int) and low > high:
            yield (
                f"{layer}_asg_min",
                f"{low} is above {layer}_asg_max ({high})",
                (f"make {layer}_asg_min at most {layer}_asg_max"),
                False,
            )
    low, high = values.get("compute_roll_min_healthy"), values.get("compute_roll_max_healthy")
    if isinstance(low, int) and isinstance(high, int) and high - low > 100:
        # AWS refuses an instance refresh whose two percentages are more than 100 apart.
        yield (
            "compute_roll_max_healthy",
            f"{high} is more than 100 above compute_roll_min_healthy ({low})",
            f"make compute_roll_max_healthy at most {low + 100}, or raise compute_roll_min_healthy",
            False,
        )
    for name in ("secure_asg_min", "secure_asg_max"):
        count = values.get(name)
        if isinstance(count, int) and count > 0 and count % 2 == 0:
            yield (
                name,
                f"{count} etcd members is even: it tolerates no more failures than {count - 1}",
                ("use an odd number (3 or 5) for etcd quorum"),
                True,
            )


def _check_seed_profile(values: Mapping[str, Any]) -> Iterator[_Finding]:
    if values.get("aws_profile") == "AWS_PROFILE":
        yield (
            "aws_profile",
            "'AWS_PROFILE' looks like the seed's placeholder",
            ('set your profile name, or aws_profile = "" for the standard credential chain'),
            True,
        )


_CHECKS = (_check_patterns, _check_buckets, _check_access_lists, _check_sizes, _check_seed_profile)


def environment_fields() -> set[str]:
    """The `Environment` fields that are module variables (a test keeps them in step)."""
    return {f.name for f in fields(Environment)} - {"path", "warnings"}


def write_from_sample(name: str, directory: Path) -> Path:
    """`kubeplat init NAME`: copy the sample to `NAME.tfvars` with `environment` filled in.

    Every value only the user can choose (account, region, KMS key, DNS zone, bucket names,
    access lists) stays a placeholder that `validate` rejects, naming its line, until filled."""
    if not _NAME.fullmatch(name):
        raise KubeplatError(
            f"{_quote(name)} is not a valid environment name",
            "use 1-20 lowercase letters, digits or hyphens, starting with a letter",
        )
    target = directory / f"{name}.tfvars"
    text = re.sub(
        r'^(environment\s*=\s*)"[^"]*"',
        lambda m: f'{m.group(1)}"{name}"',
        sample_file().read_text(encoding="utf-8"),
        count=1,
        flags=re.MULTILINE,
    )
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except (OSError, ValueError) as exc:
        raise _cannot_write(directory, exc) from None
    try:
        with open(target, "x", encoding="utf-8") as handle:
            _write_or_remove(handle, target, text)
    except FileExistsError:
        raise KubeplatError(
            f"{target} already exists", f"edit it, or validate it: kubeplat validate -e {name}"
        ) from None
    except (OSError, ValueError) as exc:
        raise _cannot_write(target, exc) from None
    return target


def _write_or_remove(handle: Any, target: Path, text: str) -> None:
    """Write the new file whole, or leave none (a half-written file would block a retry)."""
    try:
        handle.write(text)
        handle.flush()
    except BaseException:
        target.unlink(missing_ok=True)
        raise


def _cannot_write(path: Path, exc: OSError | ValueError) -> KubeplatError:
    """A failed write as one line naming the path and the cause."""
    if isinstance(exc, ValueError):
        return KubeplatError(
            f"cannot write {_shown_path(path)}: a NUL byte in the path", "check the path"
        )
    hint = os_hint(exc, "check that path and the folders above it")
    return KubeplatError(f"cannot write {_shown_path(path)}: {exc.strerror}", hint)


def sample_file() -> Path:
    """The documented sample environment, shipped with the module."""
    return data_dir("environments") / "env.tfvars.sample"
