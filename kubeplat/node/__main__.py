"""`python -m kubeplat.node COMMAND`: the node programs, run from a checkout."""

from __future__ import annotations

from .cli import entry

entry()
