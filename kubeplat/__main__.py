"""`python -m kubeplat`."""

from kubeplat.cli import entry

entry()
