"""Environment files at the edges: exact boundary values, and the exact one-line error a user
reads for each refusal (file, line, variable, message, hint)."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest

from kubeplat import config
from kubeplat.errors import KubeplatError
from tests.unit.test_config import located, variant, write_env

SHOWN = "environments/dev.tfvars"
ACCESS_HINT = 'comma-separated IPv4 addresses or CIDRs, e.g. "203.0.113.7,198.51.100.0/24"'
BUCKET_HINT = "3-63 lowercase letters, digits, dots, hyphens; a letter or digit at each end"


@pytest.fixture(autouse=True)
def fresh_parses(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every text is parsed here, not taken from another test's parse kept in the process."""
    monkeypatch.setattr(config, "_PARSED", {})


def line_of(text: str, name: str) -> int:
    """The line `name = …` is on in `text`."""
    for number, line in enumerate(text.splitlines(), start=1):
        if line.split("=")[0].strip() == name:
            return number
    raise AssertionError(f"{name} not in the text")


def errors(environments: Path, **changes: str | None) -> list[str]:
    return [str(p) for p in located(environments, variant(**changes))]


def refused(environments: Path, name: str, value: str, message: str, hint: str) -> None:
    """The file with `name = value` is refused with exactly this one error."""
    text = variant(**{name: value})
    line = line_of(text, name)
    assert errors(environments, **{name: value}) == [
        f"{SHOWN}:{line}: {name}: {message} (hint: {hint})"
    ]


def whole_file_error(environments: Path, text: str) -> list[str]:
    write_env(environments, "dev", text)
    with pytest.raises(config.ConfigError) as info:
        config.load("dev")
    return [str(p) for p in info.value.problems]


# --- S3 bucket names: 3 to 63 characters, and the name rules -------------------------------


@pytest.mark.parametrize("bucket", ["abc", "a" * 63, "a.b-c", "xn-a", "my-sthree-x"])
def test_bucket_names_at_the_limits_are_accepted(environments: Path, bucket: str) -> None:
    write_env(environments, "dev", variant(terraform_bucket_name=f'"{bucket}"'))
    assert config.load("dev").terraform_bucket_name == bucket


@pytest.mark.parametrize(
    ("bucket", "reason"),
    [
        ("ab", "2 characters"),
        ("a" * 64, "64 characters"),
        ("Bad-bucket", "only lowercase letters, digits, dots and hyphens"),
        ("a..b", "dots next to dots or hyphens"),
        ("a.-b", "dots next to dots or hyphens"),
        ("a-.b", "dots next to dots or hyphens"),
        ("192.168.1.1", "formatted as an IP address"),
        ("xn--abc", "reserved prefix or suffix"),
        ("sthree-abc", "reserved prefix or suffix"),
        ("abc-s3alias", "reserved prefix or suffix"),
    ],
)
def test_bad_bucket_names_are_refused_with_the_reason(
    environments: Path, bucket: str, reason: str
) -> None:
    refused(
        environments,
        "terraform_bucket_name",
        f'"{bucket}"',
        f"{bucket!r} is not a valid S3 bucket name: {reason}",
        BUCKET_HINT,
    )


# --- access lists ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "message", "hint"),
    [
        (
            "10.0.0.1/8",
            "'10.0.0.1/8' is not an IP or CIDR (10.0.0.1/8 has host bits set)",
            ACCESS_HINT,
        ),
        ("2001:db8::1/64", "'2001:db8::1/64' is IPv6; only IPv4 is supported", ACCESS_HINT),
        ("10.0.0.1,,10.0.0.2", "has an empty entry", "remove the extra comma"),
    ],
)
def test_bad_access_list_entries(environments: Path, value: str, message: str, hint: str) -> None:
    refused(environments, "ssh_access_list", f'"{value}"', message, hint)


def test_an_access_list_open_to_the_internet_loads_with_a_warning(environments: Path) -> None:
    text = variant(ssh_access_list='"10.0.0.1,0.0.0.0/0"')
    write_env(environments, "dev", text)
    env = config.load("dev")
    assert env.ssh_cidrs == ("10.0.0.1/32", "0.0.0.0/0")
    assert [str(w) for w in env.warnings] == [
        f"{SHOWN}:{line_of(text, 'ssh_access_list')}: ssh_access_list: '0.0.0.0/0' opens access"
        " to the whole internet (hint: list the addresses of your offices and CI runners)"
    ]


# --- wrong types -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "kind"), [("{b = 1}", "a map"), ("true", "a bool"), ("1.5", "float")]
)
def test_a_string_variable_given_another_type(environments: Path, value: str, kind: str) -> None:
    refused(
        environments,
        "aws_region",
        value,
        f"expected a string, got {kind}",
        'aws_region = "…" (lists are written as one comma-separated string)',
    )


# --- variable names are quoted to 80 characters ------------------------------------------------


@pytest.mark.parametrize(("length", "shown"), [(80, "a" * 80), (81, "a" * 80 + "…")])
def test_an_unknown_variable_name_is_cut_after_80_characters(
    environments: Path, length: int, shown: str
) -> None:
    text = variant(**{"a" * length: "1"})
    line = line_of(text, "a" * length)
    assert [str(p) for p in located(environments, text)] == [
        f"{SHOWN}:{line}: {shown}: unknown variable (hint: see environments/env.tfvars.sample)"
    ]


# --- number literals: at most 100 digits before parsing ---------------------------------------


def test_a_101_digit_number_is_refused_before_parsing_with_its_range(environments: Path) -> None:
    refused(
        environments,
        "compute_asg_max",
        "1" * 101,
        "is a 101-digit number; it must be 0 or more and 5000 or less",
        "e.g. compute_asg_max = 3",
    )


def test_a_101_digit_number_where_no_number_belongs(environments: Path) -> None:
    refused(
        environments,
        "aws_account",
        "1" * 101,
        "has a 101-digit number; no value here is that long",
        "check the value",
    )


def test_a_100_digit_number_reaches_the_range_check(environments: Path) -> None:
    refused(
        environments,
        "compute_asg_max",
        "1" * 100,
        f"is {'1' * 20}… (100 digits); it must be 0 or more and 5000 or less",
        "e.g. compute_asg_max = 3",
    )


# --- lines of problems, comments --------------------------------------------------------------


def test_comments_are_not_variables(environments: Path) -> None:
    text = "# a comment\n" + variant() + "\n// another\n/* and a block */\n"
    write_env(environments, "dev", text)
    env = config.load("dev")
    assert env.environment == "dev" and env.warnings == ()


def test_problems_after_a_block_keep_their_lines(environments: Path) -> None:
    text = "blk {\n}\n" + variant(compute_asg_max='"five"')
    line = line_of(text, "compute_asg_max")
    assert (
        f"{SHOWN}:{line}: compute_asg_max: expected a whole number, got 'five' (hint: digits"
        in ("\n".join(str(p) for p in located(environments, text)))
    )


def test_a_variable_set_twice_names_both_lines(environments: Path) -> None:
    text = variant() + '\nplatform = "kube"\n'
    first = line_of(text, "platform")
    second = len(text.splitlines())
    assert [str(p) for p in located(environments, text)] == [
        f"{SHOWN}:{second}: platform: set more than once (lines {first}, {second}) (hint: keep one)"
    ]


# --- syntax errors and unclosed strings -------------------------------------------------------

GENERIC = "(hint: every line is NAME = VALUE, strings in double quotes)"
UNCLOSED = '(hint: close it with " on the same line; a string cannot span lines)'


def test_a_syntax_error_before_an_unclosed_string_is_reported_first(environments: Path) -> None:
    assert whole_file_error(environments, 'a = = 1\nb = "open\n') == [
        f"{SHOWN}:1: not a valid tfvars file: unexpected input at column 5 {GENERIC}"
    ]


def test_an_unclosed_string_on_line_2_after_an_empty_line(environments: Path) -> None:
    assert whole_file_error(environments, '\nx = "open\n') == [
        f'{SHOWN}:2: x: the string opened at column 5 has no closing " {UNCLOSED}'
    ]


def test_a_string_ending_in_an_escaped_backslash_is_closed(environments: Path) -> None:
    assert whole_file_error(environments, 'x = "a\\\\"\ny = = 1\n') == [
        f"{SHOWN}:2: not a valid tfvars file: unexpected input at column 5 {GENERIC}"
    ]


@pytest.mark.parametrize("text", ['"open\n', '"name" = "open\n'])
def test_an_unclosed_string_outside_a_variable_names_no_variable(
    environments: Path, text: str
) -> None:
    write_env(environments, "dev", text)
    with pytest.raises(config.ConfigError) as info:
        config.load("dev")
    (problem,) = info.value.problems
    assert problem.variable is None
    column = text.rindex('"') + 1
    assert (
        str(problem)
        == f'{SHOWN}:1: the string opened at column {column} has no closing " {UNCLOSED}'
    )


def test_an_unclosed_string_is_named_when_the_parser_gives_no_line() -> None:
    problem = config._syntax_problem(Path("dev.tfvars"), '"open\n', SyntaxError("bad"))
    assert (
        str(problem) == f'dev.tfvars:1: the string opened at column 1 has no closing " {UNCLOSED}'
    )


def test_nesting_too_deep_for_the_parser_is_a_syntax_error() -> None:
    with pytest.raises(SyntaxError) as info:
        config._parse_text("a = " + "[" * 3000 + "]" * 3000 + "\n")
    assert info.value.msg == "nested too deeply"


# --- files that cannot be read ----------------------------------------------------------------


def test_a_nul_byte_in_the_name(environments: Path) -> None:
    with pytest.raises(config.ConfigError) as info:
        config.find_env_file("dev\x00")
    assert [str(p) for p in info.value.problems] == [
        "environments/dev\\0.tfvars: the path contains a NUL byte (hint: check the path)"
    ]


def test_a_path_through_a_file(environments: Path) -> None:
    with pytest.raises(config.ConfigError) as info:
        config.find_env_file("environments/example.tfvars/x.tfvars")
    (problem,) = info.value.problems
    assert problem.file == Path("environments/example.tfvars/x.tfvars")
    assert problem.variable is None
    assert problem.message == "cannot be read: Not a directory"
    assert problem.hint and problem.hint == config._os_hint(NotADirectoryError(20, "x"))


def test_a_directory_named_like_an_environment_file(environments: Path) -> None:
    (environments / "dev.tfvars").mkdir()
    with pytest.raises(config.ConfigError) as info:
        config.load("dev")
    assert [str(p) for p in info.value.problems] == [
        f"{SHOWN}: is a directory, not an environment file"
        " (hint: give the path of an environment file)"
    ]


def test_a_binary_file(environments: Path) -> None:
    (environments / "dev.tfvars").write_bytes(b"a = 1\x00\n")
    with pytest.raises(config.ConfigError) as info:
        config.load("dev")
    (problem,) = info.value.problems
    assert (problem.variable, problem.line) == (None, None)
    assert (
        str(problem)
        == f"{SHOWN}: is binary, not a tfvars text file (hint: pass an environment file)"
    )


def test_a_file_one_byte_over_the_limit(environments: Path) -> None:
    (environments / "dev.tfvars").write_bytes(b"#" * (config.MAX_BYTES + 1))
    with pytest.raises(config.ConfigError) as info:
        config.load("dev")
    assert [str(p) for p in info.value.problems] == [
        f"{SHOWN}: is 1,048,577 bytes; an environment file is at most 1,048,576 bytes"
        " (hint: is this the right file? Each variable is one NAME = VALUE line)"
    ]


def test_a_public_key_path_that_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(KubeplatError) as info:
        config.read_public_key(tmp_path)
    assert info.value.message == f"{tmp_path}: is a directory, not a public key file"
    assert info.value.hint == "give the path of a public key file"


# --- init: a write that fails leaves no file ----------------------------------------------------


def test_init_that_cannot_write_leaves_no_half_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk that fills up mid-write (a STAND-IN file handle: part of the text reaches the
    disk, then the write fails as a full file system's does) leaves no half-written file."""
    folder = tmp_path / "envs"
    folder.mkdir()

    class FillsUp:
        def __init__(self, handle: Any) -> None:
            self.handle = handle

        def write(self, text: str) -> int:
            self.handle.write(text[:10])
            self.handle.flush()
            raise OSError(errno.EFBIG, os.strerror(errno.EFBIG))

        def flush(self) -> None:
            self.handle.flush()

        def __enter__(self) -> FillsUp:
            return self

        def __exit__(self, *exc: object) -> None:
            self.handle.close()

    real_open = open
    monkeypatch.setattr(config, "open", lambda *a, **k: FillsUp(real_open(*a, **k)), raising=False)
    with pytest.raises(KubeplatError) as info:
        config.write_from_sample("dev", folder)
    assert info.value.message == f"cannot write {folder / 'dev.tfvars'}: File too large"
    assert list(folder.iterdir()) == []
