"""Environment files by name (kubeplat/config.py `find_env_file`, `workspace_root`) and as
`kubeplat init` writes them (`write_from_sample`):
cases the mutation run (bench/mutation.py) found no test for."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kubeplat import config
from kubeplat.errors import EnvironmentNotFound, KubeplatError


def test_a_tfvars_file_named_without_a_folder_is_that_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`-e staging.tfvars` is the file here, not `environments/staging.tfvars.tfvars`."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "staging.tfvars").write_text('environment = "staging"\n')
    assert config.find_env_file("staging.tfvars") == Path("staging.tfvars")


def test_a_path_without_the_suffix_is_that_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "envs").mkdir()
    (tmp_path / "envs" / "prod").write_text('environment = "prod"\n')
    assert config.find_env_file("envs/prod") == Path("envs/prod")


def test_a_missing_file_named_by_path_is_named_in_the_error(tmp_path: Path) -> None:
    with pytest.raises(EnvironmentNotFound) as raised:
        config.find_env_file(str(tmp_path / "gone.tfvars"))
    assert raised.value.name == "gone"
    assert str(raised.value) == f"environment 'gone' not found: no file {tmp_path / 'gone.tfvars'}"
    assert raised.value.hint == "create one with: kubeplat init gone"


def test_a_missing_name_lists_the_environments_there_are(tmp_path: Path) -> None:
    (tmp_path / "environments").mkdir()
    for name in ("prod", "dev"):
        (tmp_path / "environments" / f"{name}.tfvars").write_text("")
    with pytest.raises(EnvironmentNotFound) as raised:
        config.find_env_file("staging", str(tmp_path / "environments"))
    assert raised.value.searched == tmp_path / "environments" / "staging.tfvars"
    assert raised.value.hint == "available environments: dev, prod"


def test_the_repository_of_a_file_is_the_parent_of_its_environments_folder(
    tmp_path: Path,
) -> None:
    inside = tmp_path / "platform" / "environments" / "dev.tfvars"
    inside.parent.mkdir(parents=True)
    inside.write_text("")
    assert config.workspace_root(inside) == (tmp_path / "platform").resolve()
    # A file elsewhere: its own folder is the work space (never that folder's parent).
    loose = tmp_path / "somewhere" / "dev.tfvars"
    loose.parent.mkdir()
    loose.write_text("")
    assert config.workspace_root(loose) == (tmp_path / "somewhere").resolve()


def test_init_writes_the_sample_with_the_name_into_a_folder_it_makes(tmp_path: Path) -> None:
    folder = tmp_path / "platform" / "environments"  # neither exists yet
    written = config.write_from_sample("dev-2", folder)
    assert written == folder / "dev-2.tfvars"
    text = written.read_text(encoding="utf-8")
    assert re.search(r'^environment\s*=\s*"dev-2"$', text, re.MULTILINE)
    # The rest is the sample as shipped, its non-ASCII characters included.
    sample = config.sample_file().read_text(encoding="utf-8")
    assert text == re.sub(r'^(environment\s*=\s*)"dev"', r'\1"dev-2"', sample, flags=re.MULTILINE)
    assert "…" in text


def test_init_never_overwrites_and_says_what_to_do(tmp_path: Path) -> None:
    config.write_from_sample("dev", tmp_path)
    (tmp_path / "dev.tfvars").write_text("mine\n")
    with pytest.raises(KubeplatError) as raised:
        config.write_from_sample("dev", tmp_path)
    assert str(raised.value) == f"{tmp_path / 'dev.tfvars'} already exists"
    assert raised.value.hint == "edit it, or validate it: kubeplat validate -e dev"
    assert (tmp_path / "dev.tfvars").read_text() == "mine\n"


def test_init_refuses_a_name_terraform_and_aws_could_not_use(tmp_path: Path) -> None:
    with pytest.raises(KubeplatError) as raised:
        config.write_from_sample("Dev_1", tmp_path)
    assert "is not a valid environment name" in str(raised.value)
    assert raised.value.hint == (
        "use 1-20 lowercase letters, digits or hyphens, starting with a letter"
    )
    assert not list(tmp_path.glob("*.tfvars"))


def test_init_into_a_path_it_cannot_write_names_it_and_why(tmp_path: Path) -> None:
    with pytest.raises(KubeplatError) as raised:
        config.write_from_sample("dev", tmp_path / "bad\0folder")
    assert str(raised.value).endswith(": a NUL byte in the path")
    assert raised.value.hint == "check the path"
    # A file where the folder should be: the system's reason, and where to look.
    (tmp_path / "environments").write_text("")
    with pytest.raises(KubeplatError) as raised:
        config.write_from_sample("dev", tmp_path / "environments")
    assert str(raised.value).startswith("cannot write ") and "environments: " in str(raised.value)
    assert raised.value.hint == "check that path and the folders above it"


def test_a_long_path_in_a_message_is_shortened_keeping_both_ends() -> None:
    whole = "/" + "a" * 119  # 120 characters: shown as it is
    assert config._shown_path(Path(whole)) == Path(whole)
    longer = "/" + "b" * 59 + "c" * 21 + "d" * 40  # 121 characters
    assert str(config._shown_path(Path(longer))) == "/" + "b" * 59 + "…" + "d" * 40
    assert str(config._shown_path(Path("/x\0y"))) == "/x\\0y"  # a NUL byte made visible
