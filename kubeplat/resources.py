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
