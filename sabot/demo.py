"""``python -m sabot.demo``: the whole live pipeline on one machine (the same as ``sabot demo``).

The application lives in :mod:`sabot.apps.demo`; this module keeps its import path and
``python -m`` name."""
from __future__ import annotations

import sys

from sabot.apps.demo import *  # noqa: F401,F403  (the names this module always had)
from sabot.apps.demo import Demo, build_parser, command, main  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
