"""Input limits of an environment file (issue 16): every number has a range, and the limits
that make a hostile file fail at once leave every sensible file alone."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kubeplat import config
from tests.conftest import REPO

EXAMPLE = (REPO / "environments" / "example.tfvars").read_text()
NUMBERS = sorted(name for name, var in config.variables().items() if var.type == "number")


def write(environments: Path, text: str) -> Path:
    path = environments / "example.tfvars"
    path.write_text(text)
    return path


def with_value(name: str, value: str, **others: str) -> str:
    """The example file with `name` (and `others`) set to `value` (replaced, or added)."""
    text = EXAMPLE
    for key, text_value in {name: value, **others}.items():
        line = f"{key} = {text_value}"
        text, found = re.subn(rf"^{key}\s*=.*$", lambda _, line=line: line, text, flags=re.M)
        text = text if found else f"{text}{line}\n"
    return text


def problems(environments: Path, text: str) -> list[str]:
    write(environments, text)
    with pytest.raises(config.ConfigError) as info:
        config.load("example")
    return [str(p) for p in info.value.problems if not p.warning]


def bounds(environments: Path, name: str) -> tuple[int, int]:
    """The range the error message gives for a number far too big."""
    (message,) = problems(environments, with_value(name, str(2**31 - 1)))
    found = re.search(
        rf"{name}: is 2147483647; it must be (-?\d+) or more and (\d+) or less", message
    )
    assert found, message  # a range tighter than the 32-bit integers AWS takes
    return int(found.group(1)), int(found.group(2))


@pytest.mark.parametrize("name", NUMBERS)
def test_every_number_has_a_range_with_both_ends_included(environments: Path, name: str) -> None:
    low, high = bounds(environments, name)
    for inside in (low, high):
        # An autoscaling group's min and max move together: min may not exceed max.
        layer = re.fullmatch(r"(\w+)_asg_m(in|ax)", name)
        both = (
            {f"{layer.group(1)}_asg_{end}": str(inside) for end in ("min", "max")} if layer else {}
        )
        if name == "compute_roll_max_healthy":  # at most 100 above compute_roll_min_healthy
            both = {"compute_roll_min_healthy": "100"}
        write(environments, with_value(name, str(inside), **both))
        assert getattr(config.load("example"), name) == inside
    for outside in (low - 1, high + 1):
        (message,) = problems(environments, with_value(name, str(outside)))
        assert f"{name}: is {outside}; it must be {low} or more and {high} or less" in message


def test_every_default_is_in_its_range(environments: Path) -> None:
    defaults = {n: v.default for n, v in config.variables().items() if not v.required}
    for name in NUMBERS:
        if name in defaults:
            low, high = bounds(environments, name)
            assert low <= defaults[name] <= high, name


@pytest.mark.parametrize("value", ['"3"', '" 3 "', "3", "003"])
def test_ascii_numbers_in_any_spelling_are_read(environments: Path, value: str) -> None:
    write(environments, with_value("compute_asg_max", value))
    assert config.load("example").compute_asg_max == 3


def test_nesting_up_to_the_limit_reaches_the_type_check(environments: Path) -> None:
    depth = config.MAX_DEPTH
    deep = "[" * depth + "]" * depth
    (message,) = problems(environments, with_value("aws_region", deep))
    assert "aws_region: expected a string, got a list" in message
    (message,) = problems(environments, with_value("aws_region", "[" + deep + "]"))
    assert f"aws_region: nests lists or maps more than {depth} deep" in message


def test_brackets_and_digits_in_strings_and_comments_count_for_nothing(
    environments: Path,
) -> None:
    many = "[" * 100 + "9" * 500 + "{" * 100
    text = with_value("aws_profile", f'"{many}"') + f"# {many}\n/* {many}\n{many} */\n"
    write(environments, text)
    assert config.load("example").aws_profile == many


def test_a_file_at_the_line_limit_is_read(environments: Path) -> None:
    padding = config.MAX_LINES - EXAMPLE.count("\n") - 1
    write(environments, EXAMPLE + "\n" * padding)
    assert config.load("example").environment == "example"
    write(environments, EXAMPLE + "\n" * (padding + 1))
    with pytest.raises(config.ConfigError, match="has 1 problem"):
        config.load("example")


def test_the_variable_limit_leaves_room_for_unknown_ones(environments: Path) -> None:
    set_here = EXAMPLE.count(" = ")
    extra = "".join(f"x{i} = 1\n" for i in range(config.MAX_VARIABLES - set_here))
    found = problems(environments, EXAMPLE + extra)
    assert len(found) == config.MAX_VARIABLES - set_here
    assert all(": unknown variable" in p for p in found)
    found = problems(environments, EXAMPLE + extra + "y = 1\n")
    assert found == [
        f"environments/example.tfvars:{EXAMPLE.count(chr(10)) + len(extra.splitlines()) + 1}: "
        f"sets more than {config.MAX_VARIABLES} variables (the module has {len(config.variables())})"
        " (hint: is this the right file? See environments/env.tfvars.sample)"
    ]


def test_an_oversized_ssh_public_key_file(environments: Path) -> None:
    (environments / "key.pub").write_text("ssh-ed25519 " + "A" * 70_000 + "\n")
    (message,) = problems(environments, with_value("ssh_public_key", '"key.pub"'))
    assert "ssh_public_key: environments/key.pub is 70,013 bytes; a public key file is at most" in (
        message
    )


def test_a_public_key_swapped_for_a_fifo_after_validation_is_an_error_not_a_hang(
    tmp_path: Path,
) -> None:
    """`up` reads the `ssh_public_key` file again after validation: the same safe reader."""
    import os

    from kubeplat.errors import KubeplatError

    key = tmp_path / "id.pub"
    key.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDEMOKEY demo\n")
    assert config.read_public_key(key).startswith(b"ssh-ed25519 ")
    key.unlink()
    os.mkfifo(key)
    with pytest.raises(KubeplatError, match=r"id\.pub: is a FIFO \(named pipe\)"):
        config.read_public_key(key)
