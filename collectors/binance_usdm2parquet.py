#!/usr/bin/env python3
"""Binance USDⓈ-M perpetual tickers and funding records to Kafka (-k, default) and/or Parquet (-F):
the same as `sabot collect binance-usdm`. See `--help`."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from sabot.apps.collect import build_parser, command  # noqa: E402

if __name__ == "__main__":
    sys.exit(command(build_parser("binance-usdm", prog=Path(__file__).name).parse_args(), "binance-usdm"))
