"""Environment files, rule by rule: the exact one-line error a user reads for each refusal
(file, line, variable, message, hint), the value each rule accepts at its edge, and the files
read on the way (public keys, devices, /proc) and written (the parse cache, `init`)."""

from __future__ import annotations

import importlib.util
import os
import stat
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from kubeplat import artifacts, config
from kubeplat.errors import ConfigError, KubeplatError
from kubeplat.resources import user_cache
from tests.unit.test_config import located, variant, write_env
from tests.unit.test_config_boundaries_unit import (
    ACCESS_HINT,
    BUCKET_HINT,
    SHOWN,
    line_of,
    refused,
    whole_file_error,
)

NAME_HINT = "1-20 lowercase letters, digits, hyphens"
SINGLE = "a variable takes one value: a string, a whole number, true or false"
TOO_BIG = "is this the right file? Each variable is one NAME = VALUE line"
KEY_TOO_BIG = (
    "is this the right file? An OpenSSH public key is one line, e.g. ~/.ssh/id_ed25519.pub"
)
PRIVATE = "give the public key (the .pub file); a private key never leaves your machine"


@pytest.fixture(autouse=True)
def fresh_parses(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every text is parsed here, not taken from another test's parse kept in the process."""
    monkeypatch.setattr(config, "_PARSED", {})


def pinned(table: dict[str, Any]) -> str:
    return f"use one of: {', '.join(sorted(table))} (nodes never run an unchecked binary)"


def description(name: str) -> str:
    return config.variables()[name].description


# --- one refusal per rule, word for word -------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "message", "hint"),
    [
        (
            "aws_account",
            '"12345"',
            "'12345' is not an account id or alias",
            '12 digits, e.g. "123456789012"',
        ),
        ("aws_region", '"europe"', "'europe' is not an AWS region", 'e.g. "eu-west-1"'),
        ("compute_flavor", '"small"', "'small' is not an EC2 instance type", 'e.g. "t3.small"'),
        ("etcd_flavor", '"t3-small"', "'t3-small' is not an EC2 instance type", 'e.g. "t3.small"'),
        ("coreos_image", '"ubuntu"', "'ubuntu' is not an AMI id", 'e.g. "ami-0abcdef1234567890"'),
        (
            "kms_master_id",
            '"my key"',
            "'my key' is not a KMS key id, ARN or alias",
            'e.g. "alias/kubeplat-dev"',
        ),
        (
            "dns_zone_name",
            '"Example.com"',
            "'Example.com' is not a DNS zone name",
            'lowercase, e.g. "example.com"',
        ),
        ("platform", '"Kube"', "'Kube' is not a valid name", NAME_HINT),
        ("customer", '"Acme"', "'Acme' is not a valid name", "lowercase letters, digits, hyphens"),
        ("kubernetes_version", '"v1.30"', "'v1.30' is not a Kubernetes version", 'e.g. "1.33.5"'),
        ("etcd_version", '"3.5"', "'3.5' is not an etcd v3 version", 'e.g. "3.5.21"'),
        (
            "kubernetes_version",
            '"1.99.0"',
            "no pinned binary digests for '1.99.0'",
            pinned(artifacts.KUBERNETES),
        ),
        ("etcd_version", '"3.9.9"', "no pinned binary digests for '3.9.9'", pinned(artifacts.ETCD)),
        (
            "key_algorithm",
            '"ed25519"',
            "'ed25519' is not supported",
            'use "ecdsa-p256" or "rsa-2048"',
        ),
        ("topology", '"mesh"', "'mesh' is not a topology", 'use "stacked" or "separate"'),
        (
            "artifact_mirror",
            '"ftp://mirror.example.com"',
            "'ftp://mirror.example.com' is not an https://, http:// or s3:// URL",
            'e.g. "https://mirror.example.com/kubeplat" or "s3://my-artifacts/kubeplat"',
        ),
        (
            "terraform_bucket_name",
            '"abc--ol-s3"',
            "'abc--ol-s3' is not a valid S3 bucket name: reserved prefix or suffix",
            BUCKET_HINT,
        ),
        (
            "terraform_bucket_name",
            '"kubeplat-example-secrets"',
            "is the same bucket as secrets_bucket_name",
            "use two buckets: node roles may read the secrets bucket, never the state",
        ),
        (
            "oidc_bucket_name",
            '"kubeplat-example-terraform"',
            "is the same bucket as terraform_bucket_name",
            "the issuer's bucket is public: give it a bucket of its own",
        ),
        (
            "dns_zone_name",
            '"${var.zone}"',
            "expressions are not allowed in an environment file",
            "use a literal value",
        ),
        # One placeholder alone is still a placeholder.
        (
            "ssh_access_list",
            '"IP"',
            "placeholder 'IP' left in",
            f"fill it in: {description('ssh_access_list')}",
        ),
        # A value is quoted whole up to 80 characters, cut after.
        ("aws_region", f'"{"a" * 80}"', f"'{'a' * 80}' is not an AWS region", 'e.g. "eu-west-1"'),
        (
            "aws_region",
            f'"{"a" * 81}"',
            f"'{'a' * 80}…' (81 characters) is not an AWS region",
            'e.g. "eu-west-1"',
        ),
        # Not a string: quoted as written.
        ("sandbox", "1", "expected true or false, got 1", "sandbox = true"),
    ],
)
def test_each_rule_refuses_with_its_exact_line(
    environments: Path, name: str, value: str, message: str, hint: str
) -> None:
    refused(environments, name, value, message, hint)


def test_an_invalid_environment_name_in_a_file_of_that_name(environments: Path) -> None:
    text = variant(environment='"Dev"')
    assert [str(p) for p in located(environments, text, "Dev")] == [
        f"environments/Dev.tfvars:{line_of(text, 'environment')}: environment: 'Dev' is not a"
        f" valid name (hint: {NAME_HINT})"
    ]


# --- numbers -----------------------------------------------------------------------------------

RANGE = "0 or more and 5000 or less"
EXAMPLE = "e.g. compute_asg_max = 3"


@pytest.mark.parametrize(
    ("value", "message", "hint"),
    [
        ('"five"', "expected a whole number, got 'five'", f"digits 0-9, {RANGE}; {EXAMPLE}"),
        # python-hcl2 reads 0.00001 as the float 1e-05: not digits, whatever its text.
        ("0.00001", "expected a whole number, got 1e-05", f"digits 0-9, {RANGE}; {EXAMPLE}"),
        ("1e3", f"is 1e3; it must be {RANGE}, in digits 0-9", EXAMPLE),
        ("1" * 20, f"is {'1' * 20}; it must be {RANGE}", EXAMPLE),
        ("1" * 21, f"is {'1' * 20}… (21 digits); it must be {RANGE}", EXAMPLE),
    ],
)
def test_a_number_out_of_shape_or_range(
    environments: Path, value: str, message: str, hint: str
) -> None:
    refused(environments, "compute_asg_max", value, message, hint)


def test_a_roll_surge_more_than_100_above_the_minimum(environments: Path) -> None:
    text = variant(compute_roll_min_healthy="50", compute_roll_max_healthy="151")
    assert [str(p) for p in located(environments, text)] == [
        f"{SHOWN}:{line_of(text, 'compute_roll_max_healthy')}: compute_roll_max_healthy: 151 is"
        " more than 100 above compute_roll_min_healthy (50) (hint: make compute_roll_max_healthy"
        " at most 150, or raise compute_roll_min_healthy)"
    ]
    write_env(
        environments, "dev", variant(compute_roll_min_healthy="50", compute_roll_max_healthy="150")
    )
    assert config.load("dev").compute_roll_max_healthy == 150


# --- values accepted at each rule's edge -------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "name", "expected"),
    [
        ({"key_algorithm": '"rsa-2048"'}, "key_algorithm", "rsa-2048"),
        ({"topology": '"separate"'}, "topology", "separate"),
        ({"sandbox": '"true"'}, "sandbox", True),
        ({"sandbox": '"false"'}, "sandbox", False),
        # A string variable written as a number is that number's digits.
        ({"aws_account": "123456789012"}, "aws_account", "123456789012"),
        # Without pod identity there is no issuer, and its bucket name is not checked.
        (
            {"pod_identity": "false", "ebs_csi_driver": "false", "oidc_bucket_name": '"a.b"'},
            "oidc_bucket_name",
            "a.b",
        ),
    ],
)
def test_a_value_at_a_rule_s_edge_is_accepted(
    environments: Path, changes: dict[str, str], name: str, expected: object
) -> None:
    write_env(environments, "dev", variant(**changes))
    assert getattr(config.load("dev"), name) == expected


@pytest.mark.parametrize(
    ("name", "value", "warning"),
    [
        (
            "aws_profile",
            '"AWS_PROFILE"',
            "'AWS_PROFILE' looks like the seed's placeholder (hint: set your profile name, or"
            ' aws_profile = "" for the standard credential chain)',
        ),
        (
            "secure_asg_max",
            "4",
            "4 etcd members is even: it tolerates no more failures than 3"
            " (hint: use an odd number (3 or 5) for etcd quorum)",
        ),
    ],
)
def test_a_warning_loads_and_says_why(
    environments: Path, name: str, value: str, warning: str
) -> None:
    text = variant(**{name: value})
    write_env(environments, "dev", text)
    assert [str(w) for w in config.load("dev").warnings] == [
        f"{SHOWN}:{line_of(text, name)}: {name}: {warning}"
    ]


@pytest.mark.parametrize(
    ("first", "second", "value", "expected"),
    [
        (
            "secrets_bucket_name",
            "terraform_bucket_name",
            '"ab"',
            f"'ab' is not a valid S3 bucket name: 2 characters (hint: {BUCKET_HINT})",
        ),
        (
            "kubeapi_access_list",
            "ssh_access_list",
            '"10.0.0.1/8"',
            f"'10.0.0.1/8' is not an IP or CIDR (10.0.0.1/8 has host bits set) (hint: {ACCESS_HINT})",
        ),
    ],
)
def test_a_value_of_the_wrong_type_does_not_hide_the_next_one_s_problem(
    environments: Path, first: str, second: str, value: str, expected: str
) -> None:
    """The first of a pair given as a list is reported, and the second is still checked."""
    text = variant(**{first: '["x"]', second: value})
    assert [str(p) for p in located(environments, text)] == [
        f"{SHOWN}:{line_of(text, first)}: {first}: expected a string, got a list (hint: {first}"
        ' = "…" (lists are written as one comma-separated string))',
        f"{SHOWN}:{line_of(text, second)}: {second}: {expected}",
    ]


# --- limits checked before parsing -------------------------------------------------------------


def test_a_file_of_more_than_5000_lines(environments: Path) -> None:
    text = variant() + "\n" * 5000
    lines = text.count("\n") + 1
    assert whole_file_error(environments, text) == [
        f"{SHOWN}: has {lines:,} lines; an environment file has at most 5,000 (hint: {TOO_BIG})"
    ]


def tokens(count: int) -> str:
    """`x = [` and a list over one line each, `count` names, values and symbols in all."""
    items = (count - 4) // 2
    return "x = [\n" + "1,\n" * items + ("1]\n" if count % 2 else "]\n")


def test_2000_names_values_and_symbols_reach_the_parser(environments: Path) -> None:
    assert whole_file_error(environments, tokens(2000))[0] == (
        f"{SHOWN}:1: x: unknown variable (hint: see environments/env.tfvars.sample)"
    )


def test_2001_names_values_and_symbols_are_refused_where_the_last_one_is(
    environments: Path,
) -> None:
    text = tokens(2001)
    assert whole_file_error(environments, text) == [
        f"{SHOWN}:{text.count(chr(10))}: has more than 2,000 names, values and symbols"
        f" (hint: {SINGLE})"
    ]


def test_comments_are_not_counted_as_symbols(environments: Path) -> None:
    write_env(environments, "dev", variant() + "# a comment\n" * 2000)
    assert config.load("dev").environment == "dev"


def test_nesting_33_deep_is_refused_on_its_line(environments: Path) -> None:
    # Depth counts what is open: the closed list before does not count, nor lets one more in.
    text = "\nx = [[], " + "[" * 32 + "\n"
    assert whole_file_error(environments, text) == [
        f"{SHOWN}:2: x: nests lists or maps more than 32 deep (hint: {SINGLE})"
    ]


def test_closed_lists_do_not_add_to_the_depth(environments: Path) -> None:
    text = variant() + "a = [" + "[], " * 40 + "]\nb = []\nc = " + "[" * 32 + "]" * 32 + "\n"
    assert [str(p) for p in located(environments, text)] == [
        f"{SHOWN}:{line_of(text, name)}: {name}: unknown variable"
        " (hint: see environments/env.tfvars.sample)"
        for name in ("a", "b", "c")
    ]


def test_a_long_number_after_a_quoted_name_names_no_variable(environments: Path) -> None:
    assert whole_file_error(environments, '\n"compute_asg_max" = ' + "1" * 101 + "\n") == [
        f"{SHOWN}:2: has a 101-digit number; no value here is that long (hint: check the value)"
    ]


# --- text the parser cannot read ---------------------------------------------------------------


def test_a_file_that_is_not_utf_8(environments: Path) -> None:
    (environments / "dev.tfvars").write_bytes(b'aws_region = "\xff"\n')
    with pytest.raises(ConfigError) as info:
        config.load("dev")
    assert [str(p) for p in info.value.problems] == [
        f"{SHOWN}: is not UTF-8 text (hint: save the file as UTF-8)"
    ]


@pytest.mark.parametrize("directive", ["if a", "for x in y"])
def test_a_template_directive_the_parser_cannot_finish(environments: Path, directive: str) -> None:
    """The parser's own reason and line, not lark's wrapper ("Error trying to process rule")."""
    text = f'aws_region = "eu-west-1"\n\nx = "%{{ {directive} }}b"\n'
    assert whole_file_error(environments, text) == [
        f"{SHOWN}:3: not a valid tfvars file: Unterminated template {directive.split()[0]}"
        " directive (hint: every line is NAME = VALUE, strings in double quotes)"
    ]


# --- public key files: what is read, and why one is refused -------------------------------------


def block_device() -> Path | None:
    """A block device this process may open (root in a container has the loop devices)."""
    for path in sorted(Path("/dev").glob("loop[0-9]*")):
        try:
            if stat.S_ISBLK(path.stat().st_mode):
                os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
                return path
        except OSError:
            continue
    return None


BLOCK = block_device()
KALLSYMS = Path("/proc/kallsyms")  # a regular file whose size says 0, of a few megabytes
MEM = Path("/proc/self/mem")  # a regular file whose first byte cannot be read


@pytest.mark.parametrize(
    ("path", "message", "hint"),
    [
        (Path("id\x00.pub"), "id\\0.pub: the path contains a NUL byte", "check the path"),
        (
            Path("missing.pub"),
            "missing.pub: cannot be read: No such file or directory",
            "check that the path exists",
        ),
        (Path("/dev/null"), "/dev/null: is a character device, not a public key file", None),
        pytest.param(
            BLOCK,
            f"{BLOCK}: is a block device, not a public key file",
            None,
        ),
        pytest.param(
            KALLSYMS,
            "/proc/kallsyms: is more than 65,536 bytes; a public key file is at most 65,536 bytes",
            KEY_TOO_BIG,
        ),
        pytest.param(
            MEM,
            "/proc/self/mem: cannot be read: Input/output error",
            "check the path",
        ),
    ],
)
def test_a_public_key_path_that_cannot_be_read(
    path: Path | None, message: str, hint: str | None
) -> None:
    assert path is not None, "no block device this process may open (/dev/loop* as root)"
    with pytest.raises(KubeplatError) as info:
        config.read_public_key(path)
    assert info.value.message == message
    assert info.value.hint == (hint or "give the path of a public key file")


def test_a_public_key_file_of_64_kib_is_read_whole_and_one_byte_more_is_refused(
    tmp_path: Path,
) -> None:
    key = tmp_path / "id.pub"
    key.write_bytes(b"k" * 65_536)
    assert config.read_public_key(key) == b"k" * 65_536
    key.write_bytes(b"k" * 65_537)
    with pytest.raises(KubeplatError) as info:
        config.read_public_key(key)
    assert info.value.message == (
        f"{key}: is 65,537 bytes; a public key file is at most 65,536 bytes"
    )
    assert info.value.hint == KEY_TOO_BIG


def test_an_environment_file_larger_than_its_size_says(environments: Path) -> None:
    with pytest.raises(ConfigError) as info:
        config.load(str(KALLSYMS))
    assert [str(p) for p in info.value.problems] == [
        "/proc/kallsyms: is more than 1,048,576 bytes; an environment file is at most"
        f" 1,048,576 bytes (hint: {TOO_BIG})"
    ]


@pytest.mark.parametrize(
    ("given", "content", "message", "hint"),
    [
        (
            "missing.pub",
            None,
            "environments/missing.pub cannot be read: No such file or directory",
            "check that the path exists",
        ),
        # `~user` of no such user: read as written, beside the environment file.
        (
            "~nosuchuser/id.pub",
            None,
            "environments/~nosuchuser/id.pub cannot be read: No such file or directory",
            "check that the path exists",
        ),
        ("id.pub", b"\xff\xfe\x00", "environments/id.pub is not text", "give the .pub file's path"),
        (
            "id.pub",
            b"-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbn\n-----END OPENSSH PRIVATE KEY-----\n",
            "environments/id.pub is a private key",
            PRIVATE,
        ),
        (
            "id.pub",
            b"hello\n",
            "environments/id.pub is not an OpenSSH public key",
            "e.g. ~/.ssh/id_ed25519.pub",
        ),
    ],
)
def test_an_ssh_public_key_that_is_not_one(
    environments: Path, given: str, content: bytes | None, message: str, hint: str
) -> None:
    if content is not None:
        (environments / given).write_bytes(content)
    refused(environments, "ssh_public_key", f'"{given}"', message, hint)


def test_an_ssh_public_key_beside_the_environment_file_is_taken(environments: Path) -> None:
    (environments / "id.pub").write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA me@host\n")
    write_env(environments, "dev", variant(ssh_public_key='"id.pub"'))
    assert config.load("dev").ssh_public_key_path == (environments / "id.pub").resolve()


PAGEMAP = Path("/proc/self/pagemap")  # says 0 bytes, holds 8 per page of the address space
BOUNDED = r"""
import resource, sys
from pathlib import Path
from kubeplat import config
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
try:
    config.read_public_key(Path(sys.argv[1]))
except config.KubeplatError as exc:
    print(exc.message)
"""


def test_a_key_file_with_no_end_in_sight_is_not_read_to_its_end(tmp_path: Path) -> None:
    """/proc/self/pagemap runs to hundreds of gigabytes, in reads of 8 bytes at a time: the
    65,537th byte alone cannot be read (EINVAL), and the file is refused there, in a process
    allowed 1 GiB of memory, not read to its end."""
    ran = subprocess.run(
        [sys.executable, "-c", BOUNDED, str(PAGEMAP)],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert ran.stdout.splitlines() == [f"{PAGEMAP}: cannot be read: Invalid argument"], ran.stderr


NO_TERMINAL = r"""
import os, sys
from pathlib import Path
from kubeplat import config
try:
    config.read_public_key(Path(sys.argv[1]))
except config.KubeplatError as exc:
    print(exc.message)
try:
    os.close(os.open("/dev/tty", os.O_RDWR))
    print("has a controlling terminal")
except OSError:
    print("no controlling terminal")
"""


def test_a_terminal_given_as_a_key_is_refused_and_not_taken_as_the_controlling_one(
    tmp_path: Path,
) -> None:
    """Run in a session of its own with no terminal (as under a service manager), checking a
    terminal device given as the key file must not make it the session's terminal (whose
    hang-up and Ctrl-C would then reach kubeplat)."""
    master, replica = os.openpty()
    try:
        name = os.ttyname(replica)
        os.close(replica)
        ran = subprocess.run(
            [sys.executable, "-c", NO_TERMINAL, name],
            cwd=tmp_path, start_new_session=True, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    finally:
        os.close(master)
    assert ran.stdout.splitlines() == [
        f"{name}: is a character device, not a public key file",
        "no controlling terminal",
    ], ran.stderr


# --- what is written: the parse cache, a new environment file ------------------------------------


@pytest.mark.parametrize("change", ["upgraded in place", "moved where it cannot be looked at"])
def test_a_parse_kept_by_one_python_hcl2_is_not_used_by_another(
    environments: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    """A STAND-IN location of python-hcl2 (its real module file is not touched): after an
    upgrade the same environment file is parsed again, into an entry of its own."""
    module = tmp_path / "site" / "hcl2" / "__init__.py"
    module.parent.mkdir(parents=True)
    module.write_text("")
    if change != "upgraded in place":
        module = tmp_path / "gone" / "__init__.py"
    real = importlib.util.find_spec
    at = {"origin": str(module)}

    def find_spec(name: str, *args: Any) -> Any:
        return SimpleNamespace(origin=at["origin"]) if name == "hcl2" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    cache = user_cache("hcl")
    assert cache is not None
    config.load("example")
    kept = set(cache.iterdir())
    config.load("example")
    assert set(cache.iterdir()) == kept  # the same python-hcl2: nothing new
    if change == "upgraded in place":
        os.utime(module, ns=(1, 1))
    else:
        at["origin"] = str(tmp_path / "elsewhere" / "__init__.py")
    assert config.load("example").environment == "example"
    assert len(set(cache.iterdir()) - kept) == 1


def test_init_under_an_ascii_locale_writes_the_sample_whole(tmp_path: Path) -> None:
    """`kubeplat init` on a machine whose locale is plain ASCII (LANG=C, no UTF-8 mode): the
    sample's non-ASCII characters are read and written as UTF-8 all the same."""
    ascii_locale = {
        **os.environ,
        "LC_ALL": "C",
        "LANG": "C",
        "PYTHONUTF8": "0",
        "PYTHONCOERCECLOCALE": "0",
    }
    made = subprocess.run(
        [sys.executable, "-m", "kubeplat", "--env-dir", "envs", "init", "dev"],
        cwd=tmp_path, env=ascii_locale, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    # The sample's own environment is "dev": the new file is the sample byte for byte.
    sample = config.sample_file().read_text(encoding="utf-8")
    assert (tmp_path / "envs" / "dev.tfvars").read_text(encoding="utf-8") == sample
