"""Day-two helpers that need no AWS: completion scripts and kubeconfig merging."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kubeplat import ops


@pytest.mark.parametrize(
    ("shell", "marker"),
    [("bash", "complete -o"), ("zsh", "#compdef kubeplat"), ("fish", "complete --no-files")],
)
def test_completion_scripts(kubeplat, shell: str, marker: str) -> None:  # type: ignore[no-untyped-def]
    result = kubeplat("completion", shell)
    assert result.code == 0
    assert marker in result.out
    assert "_KUBEPLAT_COMPLETE" in result.out


def test_completion_unknown_shell(kubeplat) -> None:  # type: ignore[no-untyped-def]
    assert kubeplat("completion", "tcsh").code == 2


def test_merge_kubeconfig_replaces_by_name_and_keeps_others(tmp_path: Path) -> None:
    target = tmp_path / "config"
    target.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {"name": "other", "cluster": {"server": "https://other"}},
                    {"name": "example", "cluster": {"server": "https://old"}},
                ],
                "users": [{"name": "someone", "user": {}}],
                "contexts": [{"name": "mine", "context": {"cluster": "other", "user": "someone"}}],
                "current-context": "mine",
            }
        )
    )
    source = tmp_path / "new"
    source.write_text(
        yaml.safe_dump(
            {
                "clusters": [{"name": "example", "cluster": {"server": "https://new"}}],
                "users": [{"name": "admin@example", "user": {"client-key-data": "x"}}],
                "contexts": [
                    {
                        "name": "admin@example",
                        "context": {"cluster": "example", "user": "admin@example"},
                    }
                ],
                "current-context": "admin@example",
            }
        )
    )
    ops.merge_kubeconfig(source, target)
    merged = yaml.safe_load(target.read_text())
    assert {c["name"]: c["cluster"]["server"] for c in merged["clusters"]} == {
        "other": "https://other",
        "example": "https://new",
    }
    assert [u["name"] for u in merged["users"]] == ["someone", "admin@example"]
    assert merged["current-context"] == "mine"  # merging never switches the user's context
    assert target.stat().st_mode & 0o777 == 0o600
