"""Environment files: `environments/NAME.tfvars` → a validated, immutable `Environment`.

The variable set (names, types, defaults) is read from the Terraform module's `variables.tf`,
so the module and kubeplat can never disagree about it. Every problem in a file is collected and
reported at once (`ConfigError`), each with file, line, variable, what is wrong and a hint.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from functools import cache
from pathlib import Path
from typing import Any

from kubeplat.errors import ConfigError, EnvironmentNotFound, KubeplatError, Problem
from kubeplat.resources import data_dir, module_dir

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
    """Where `-e NAME` looks: `--env-dir`, then `$KUBEPLAT_ENV_DIR`, then `./environments`."""
    return Path(explicit or os.environ.get(ENV_DIR_VARIABLE) or "environments")


def find_env_file(env: str, directory: str | None = None) -> Path:
    """Resolve `-e` to a file: a path to a `.tfvars` file, or a name under the env dir."""
    if env.endswith(".tfvars") or os.sep in env or "/" in env:
        path = Path(env)
        if not path.exists():
            raise EnvironmentNotFound(path.stem, path, [])
        return path
    folder = env_dir(directory)
    path = folder / f"{env}.tfvars"
    if not path.exists():
        available = sorted(p.stem for p in folder.glob("*.tfvars")) if folder.is_dir() else []
        raise EnvironmentNotFound(env, path, available)
    return path


def load(env: str, directory: str | None = None) -> Environment:
    """Find, read and validate an environment; raise `ConfigError` listing every problem."""
    return load_file(find_env_file(env, directory))


def load_file(path: Path) -> Environment:
    """Read and validate one environment file."""
    text = _read(path)
    try:
        data, lines = _parse_hcl(text)
    except SyntaxError as exc:
        raise ConfigError(
            path,
            [
                Problem(
                    path,
                    None,
                    f"not a valid tfvars file: {exc.msg}",
                    "every line is NAME = VALUE, strings in double quotes",
                    line=exc.lineno,
                )
            ],
        ) from None
    checker = _Checker(path, data, lines)
    values = checker.run()
    errors = [p for p in checker.problems if not p.warning]
    if errors:
        raise ConfigError(path, checker.problems)
    return Environment(path=path, warnings=tuple(checker.problems), **values)


def _read(path: Path) -> str:
    def fail(message: str, hint: str) -> ConfigError:
        return ConfigError(path, [Problem(path, None, message, hint)])

    if path.is_dir():
        raise fail("is a directory, not an environment file", "pass a .tfvars file or a name")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise fail(f"cannot be read: {exc.strerror}", "check the file's permissions") from None
    if b"\x00" in raw:
        raise fail("is binary, not a tfvars text file", "pass an environment .tfvars file")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise fail("is not UTF-8 text", "save the file as UTF-8") from None


def _parse_hcl(text: str) -> tuple[dict[str, Any], dict[str, list[int]]]:
    """Parse HCL with python-hcl2; return values and the line(s) of each top-level name."""
    import hcl2
    from lark.exceptions import LarkError, UnexpectedInput

    try:
        tree = hcl2.parses_to_tree(text)
    except UnexpectedInput as exc:
        err = SyntaxError(f"unexpected input at line {exc.line}, column {exc.column}")
        err.msg, err.lineno = f"unexpected input at column {exc.column}", exc.line
        raise err from None
    except (LarkError, ValueError) as exc:
        raise SyntaxError(str(exc).splitlines()[0]) from None
    lines: dict[str, list[int]] = {}
    body = tree.children[0]
    for attribute in getattr(body, "children", []):
        # Only top-level attributes are variables; blocks are not allowed in a tfvars file.
        if getattr(attribute, "data", None) != "attribute":
            continue
        token = attribute.children[0].children[0]
        lines.setdefault(str(token), []).append(int(token.line))
    options = hcl2.SerializationOptions(strip_string_quotes=True, with_comments=False)
    data = hcl2.serialize(hcl2.transform(tree), serialization_options=options)
    return data, lines


def _split_list(value: str) -> list[str]:
    return [item.strip() for item in value.split(",")]


def _network(item: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(item if "/" in item else f"{item}/32", strict=True)


class _Checker:
    """Runs every check over one parsed file, collecting problems instead of stopping."""

    def __init__(self, path: Path, data: Mapping[str, Any], lines: Mapping[str, list[int]]):
        self.path = path
        self.data = data
        self.lines = lines
        self.problems: list[Problem] = []

    def problem(self, var: str | None, message: str, hint: str = "", warning: bool = False) -> None:
        line = self.lines.get(var, [None])[0] if var else None
        self.problems.append(Problem(self.path, var, message, hint, line, warning))

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
                close = difflib.get_close_matches(name, list(known), n=1)
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
                f"placeholder {raw!r} left in",
                f"fill it in: {var.description}",
            )
            return None
        if var.type == "number":
            if isinstance(raw, bool):
                pass
            elif isinstance(raw, int):
                return raw
            elif isinstance(raw, str) and re.fullmatch(r"\s*-?\d+\s*", raw):
                return int(raw)
            self.problem(var.name, f"expected a whole number, got {raw!r}", f"e.g. {var.name} = 3")
            return None
        if var.type == "bool":
            if isinstance(raw, bool):
                return raw
            if isinstance(raw, str) and raw in ("true", "false"):
                return raw == "true"
            self.problem(var.name, f"expected true or false, got {raw!r}", f"{var.name} = true")
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

    def _check_ssh_public_key(self, values: Mapping[str, Any]) -> None:
        given = values.get("ssh_public_key")
        if not isinstance(given, str) or not given:
            return
        path = (self.path.parent / Path(given).expanduser()).resolve()
        try:
            text = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or "not text"
            self.problem(
                "ssh_public_key", f"cannot read {path}: {reason}", "give the .pub file's path"
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
                f"is {name!r} but the file is {self.path.name}",
                f'set environment = "{self.path.stem}" or rename the file to {name}.tfvars',
            )


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
            yield name, f"{value!r} {message}", hint, False
    algorithm = values.get("key_algorithm")
    if isinstance(algorithm, str) and algorithm not in ("ecdsa-p256", "rsa-2048"):
        yield (
            "key_algorithm",
            f"{algorithm!r} is not supported",
            'use "ecdsa-p256" or "rsa-2048"',
            False,
        )
    yield from _check_pinned(values)
    topology = values.get("topology")
    if isinstance(topology, str) and topology not in ("stacked", "separate"):
        yield "topology", f"{topology!r} is not a topology", 'use "stacked" or "separate"', False
    yield from _check_nodes(values)


def _check_nodes(values: Mapping[str, Any]) -> Iterator[_Finding]:
    from kubeplat.node import osfamily

    names = [family.name for family in osfamily.FAMILIES.values()]
    node_os = values.get("node_os")
    if isinstance(node_os, str) and node_os not in names:
        close = difflib.get_close_matches(node_os, names, n=1)
        hint = f"did you mean {close[0]!r}?" if close else "use one of: " + ", ".join(names)
        yield "node_os", f"{node_os!r} is not a supported operating system", hint, False
    mirror = values.get("artifact_mirror")
    if isinstance(mirror, str) and mirror and not _MIRROR.fullmatch(mirror):
        yield (
            "artifact_mirror",
            f"{mirror!r} is not an https://, http:// or s3:// URL",
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
                f"no pinned binary digests for {value!r}",
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
                f"{value!r} is not a valid S3 bucket name: {reason}",
                ("3-63 lowercase letters, digits, dots, hyphens; a letter or digit at each end"),
                False,
            )
    secrets, state = values.get("secrets_bucket_name"), values.get("terraform_bucket_name")
    if isinstance(secrets, str) and secrets == state:
        yield (
            "terraform_bucket_name",
            "is the same bucket as secrets_bucket_name",
            ("use two buckets: node roles may read the secrets bucket, never the state"),
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
            if not item:
                yield name, "has an empty entry", "remove the extra comma", False
                continue
            try:
                network = _network(item)
            except ValueError as exc:
                yield (
                    name,
                    f"{item!r} is not an IP or CIDR ({exc})",
                    ('comma-separated IPs or CIDRs, e.g. "203.0.113.7,198.51.100.0/24"'),
                    False,
                )
                continue
            if network.prefixlen == 0:
                yield (
                    name,
                    f"{item!r} opens access to the whole internet",
                    ("list the addresses of your offices and CI runners"),
                    True,
                )


def _check_sizes(values: Mapping[str, Any]) -> Iterator[_Finding]:
    for layer in ("compute", "secure"):
        low, high = values.get(f"{layer}_asg_min"), values.get(f"{layer}_asg_max")
        for name, value in ((f"{layer}_asg_min", low), (f"{layer}_asg_max", high)):
            floor = 1 if layer == "secure" else 0
            if isinstance(value, int) and value < floor:
                yield name, f"is {value}; it must be {floor} or more", f"e.g. {name} = 3", False
        if isinstance(low, int) and isinstance(high, int) and low > high:
            yield (
                f"{layer}_asg_min",
                f"{low} is above {layer}_asg_max ({high})",
                (f"make {layer}_asg_min at most {layer}_asg_max"),
                False,
            )
    grace = values.get("compute_asg_grace_period")
    if isinstance(grace, int) and grace < 0:
        yield "compute_asg_grace_period", f"is {grace}; it must be 0 or more", "e.g. 300", False
    for name, low, high, example in (
        ("etcd_snapshot_minutes", 5, 1440, "30"),
        ("etcd_snapshot_keep", 1, None, "48"),
        ("etcd_snapshot_max_age_days", 1, None, "7"),
        ("cert_renew_days", 7, 180, "90"),
    ):
        value = values.get(name)
        if isinstance(value, int) and (value < low or (high is not None and value > high)):
            bounds = f"from {low} to {high}" if high is not None else f"{low} or more"
            yield name, f"is {value}; it must be {bounds}", f"e.g. {name} = {example}", False
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
    """`kubeplat init NAME`: copy the sample to `NAME.tfvars` with `environment` filled in."""
    if not _NAME.fullmatch(name):
        raise KubeplatError(
            f"{name!r} is not a valid environment name",
            "use 1-20 lowercase letters, digits or hyphens, starting with a letter",
        )
    target = directory / f"{name}.tfvars"
    if target.exists():
        raise KubeplatError(
            f"{target} already exists", f"edit it, or validate it: kubeplat validate -e {name}"
        )
    sample = sample_file()
    text = re.sub(
        r'^(environment\s*=\s*)"[^"]*"',
        lambda m: f'{m.group(1)}"{name}"',
        sample.read_text(encoding="utf-8"),
        count=1,
        flags=re.MULTILINE,
    )
    directory.mkdir(parents=True, exist_ok=True)
    target.write_text(text, encoding="utf-8")
    return target


def sample_file() -> Path:
    """The documented sample environment, shipped with the module."""
    return data_dir("environments") / "env.tfvars.sample"
