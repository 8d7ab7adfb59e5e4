#!/usr/bin/env python3
"""Cross-exchange arbitrage monitor: the same program as ``sabot monitor``.

The monitor and its decision logic live in :mod:`sabot.apps.monitor`; import from there::

    from sabot.apps.monitor import best_edges, opportunities, parse_fees

    python examples/multi_exchange_arbitrage.py --bootstrap localhost:19092 --fees 6 --min-edge-bps 1
"""
import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from sabot.apps.monitor import *  # noqa: E402,F401,F403  (the names this script always had)
from sabot.apps.monitor import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(prog="multi_exchange_arbitrage.py"))
