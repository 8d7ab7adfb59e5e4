"""The ``sabot`` command line: ``sabot broker [--port 19092] [--partitions 3]``."""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="sabot", description="Sabot command line.")
    sub = parser.add_subparsers(dest="command", required=True)

    from . import broker

    p_broker = sub.add_parser("broker", help="run the embedded Kafka-protocol broker (Tansu)")
    broker.add_arguments(p_broker)
    p_broker.set_defaults(func=broker.run)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
