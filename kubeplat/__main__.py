"""`python -m kubeplat`."""

from kubeplat.cli import main

main()
