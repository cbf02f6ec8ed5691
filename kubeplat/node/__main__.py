"""`python -m kubeplat.node COMMAND`: the node programs, run from a checkout."""

from __future__ import annotations

import sys

from .cli import main

sys.exit(main())
