"""Where the Terraform module and the templates are, installed or in a checkout."""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def data_dir(name: str) -> Path:
    """The `terraform` or `templates` directory: inside the wheel, else the checkout's root."""
    installed = _PACKAGE / "_data" / name
    if installed.is_dir():
        return installed
    return _PACKAGE.parent / name


def module_dir() -> Path:
    """The Terraform root module."""
    return data_dir("terraform")


def templates_dir() -> Path:
    """The Jinja2 templates of everything rendered for nodes; `KUBEPLAT_TEMPLATES_DIR` points
    at a platform team's own copy."""
    override = os.environ.get("KUBEPLAT_TEMPLATES_DIR")
    return Path(override) if override else data_dir("templates")


def user_cache(kind: str) -> Path | None:
    """`$XDG_CACHE_HOME/kubeplat/KIND` (or `~/.cache/kubeplat/KIND`), made 0700; None when
    there is no home or it cannot be made (then nothing is cached). It holds only what can be
    made again from the inputs: parsed environment files, compiled templates, the Terraform
    binary's version."""
    base = os.environ.get("XDG_CACHE_HOME") or (
        os.path.join(os.environ["HOME"], ".cache") if os.environ.get("HOME") else ""
    )
    if not base:
        return None
    path = Path(base) / "kubeplat" / kind
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError:
        return None
    return path


def write_cached(path: Path, text: str) -> None:
    """Write one entry of a `user_cache` whole (a temporary file renamed over it), 0600; an
    entry that cannot be written is simply not kept."""
    try:
        staged = path.with_name(f".{path.name}.{os.getpid()}")
        descriptor = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
        staged.replace(path)
    except OSError:
        pass
