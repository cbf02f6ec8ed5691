"""An unclosed quote is reported on the line where the string opens (the parser, which lets a
string run on over the next lines, fails lines later), as one line with a hint (issue 17)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import REPO

EXAMPLE = (REPO / "environments" / "example.tfvars").read_text().splitlines()
HINT = '(hint: close it with " on the same line; a string cannot span lines)'


def lines_with(index: int, line: str) -> list[str]:
    """The example's lines (as environment "dev"), with line `index` (0-based) replaced."""
    lines = ['environment = "dev"' if text.startswith("environment ") else text for text in EXAMPLE]
    lines[index] = line
    return lines


def bucket_line() -> int:
    return next(n for n, line in enumerate(EXAMPLE) if line.startswith("secrets_bucket_name"))


@pytest.fixture
def no_terraform(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")


def test_unclosed_quote_mid_file_names_its_own_line(kubeplat, environments: Path) -> None:  # type: ignore[no-untyped-def]
    index = bucket_line()
    assert index + 3 < len(EXAMPLE)  # more lines follow, with quotes of their own
    lines = lines_with(index, 'secrets_bucket_name      = "kubeplat-example-secrets')
    (environments / "dev.tfvars").write_text("\n".join(lines) + "\n")
    result = kubeplat("validate", "-e", "dev")
    assert result.code == 1
    problems = [line for line in result.err.splitlines() if line.startswith("environments/")]
    assert problems == [
        f"environments/dev.tfvars:{index + 1}: secrets_bucket_name: the string opened at "
        f'column 28 has no closing " {HINT}'
    ]
    assert "Error: environments/dev.tfvars has 1 problem" in result.err
    assert "Traceback" not in result.err


@pytest.mark.parametrize("newline", ["\n", ""], ids=["with-newline", "without-newline"])
def test_unclosed_quote_on_the_last_line(kubeplat, environments: Path, newline: str) -> None:  # type: ignore[no-untyped-def]
    lines = [*lines_with(0, EXAMPLE[0]), 'customer = "acme']
    (environments / "dev.tfvars").write_text("\n".join(lines) + newline)
    result = kubeplat("validate", "-e", "dev")
    assert result.code == 1
    assert (
        f"environments/dev.tfvars:{len(lines)}: customer: the string opened at column 12 "
        f'has no closing " {HINT}'
    ) in result.err
    assert "Traceback" not in result.err


def test_an_escaped_quote_does_not_close_the_string(kubeplat, environments: Path) -> None:  # type: ignore[no-untyped-def]
    index = bucket_line()
    for value in ('"kubeplat-secrets\\"', '"kubeplat-secrets\\'):
        lines = lines_with(index, f"secrets_bucket_name = {value}")
        (environments / "dev.tfvars").write_text("\n".join(lines) + "\n")
        result = kubeplat("validate", "-e", "dev")
        assert result.code == 1
        assert f"environments/dev.tfvars:{index + 1}: secrets_bucket_name: the string opened" in (
            result.err
        ), value


def test_quotes_in_comments_do_not_count(kubeplat, environments: Path, no_terraform) -> None:  # type: ignore[no-untyped-def]
    index = bucket_line()
    lines = lines_with(index, 'secrets_bucket_name = "kubeplat-example-secrets" # the "old one')
    lines[1:1] = ["# it's \"quoted", '// so is "this', '/* and "this', "too */"]
    (environments / "dev.tfvars").write_text("\n".join(lines) + "\n")
    result = kubeplat("validate", "-e", "dev")
    assert result.code == 0, result.err


def test_an_earlier_syntax_error_is_still_reported_first(kubeplat, environments: Path) -> None:  # type: ignore[no-untyped-def]
    text = 'aws_region = "eu-west-1"\nplatform = = "kube"\ncustomer = "acme\n'
    (environments / "dev.tfvars").write_text(text)
    result = kubeplat("validate", "-e", "dev")
    assert result.code == 1
    assert "environments/dev.tfvars:2: not a valid tfvars file: unexpected input" in result.err
