#!/usr/bin/env python3
"""Crypto research platform: features, a mean-reversion backtest, the arbitrage study, export, live.

    crypto_research_platform.py research  --parquet data/coinbase.parquet --output features.parquet
    crypto_research_platform.py backtest  --parquet data/coinbase.parquet --output equity.png
    crypto_research_platform.py arbitrage --parquet data/ --output opportunities.parquet
    crypto_research_platform.py export    --parquet data/coinbase.parquet --topic features
    crypto_research_platform.py live      --bootstrap localhost:19092 --topic coinbase-ticker

The code lives in :mod:`sabot.apps.research` (``sabot research``, ``sabot backtest``); this
script keeps every mode under one command line.
"""
import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from sabot.apps.research import *  # noqa: E402,F401,F403  (the names this script always had)
from sabot.apps.research import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(prog="crypto_research_platform.py"))
