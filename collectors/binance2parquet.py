#!/usr/bin/env python3
"""Binance tickers (trades and books too: --channels ticker,trades,book) to Kafka (-k, default) and/or Parquet (-F): the same as `sabot collect binance`. See `--help`."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from sabot.apps.collect import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main("binance"))
