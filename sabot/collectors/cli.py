"""Command line shared by ``collectors/{coinbase,kraken,binance}2parquet.py`` (spec §2 flags)."""
from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import sys

from sabot.collectors import COLLECTORS
from sabot.collectors.connection import ConnectionSettings, Stats, run
from sabot.collectors.sinks import KafkaSink, ParquetSink, Sink
from sabot.kafka import LIVE_PRODUCER

__all__ = ["build_parser", "main"]

DEFAULT_BOOTSTRAP = "localhost:19092"


def build_parser(exchange: str) -> argparse.ArgumentParser:
    cls = COLLECTORS[exchange]
    p = argparse.ArgumentParser(
        prog=f"{exchange}2parquet.py",
        description=f"Stream {exchange} best bid/offer tickers as normalised records to Kafka and/or Parquet.",
    )
    p.add_argument("-k", "--kafka", action="store_true",
                   help="produce to Kafka (the default when no sink flag is given)")
    p.add_argument("-F", "--file", action="store_true", help="write a Parquet file")
    p.add_argument("-o", "--output", help=f"Parquet path (default ./data/{exchange}_<UTC date>.parquet)")
    p.add_argument("--bootstrap", default=os.environ.get("SABOT_KAFKA_BOOTSTRAP", DEFAULT_BOOTSTRAP),
                   help="Kafka bootstrap servers (env SABOT_KAFKA_BOOTSTRAP; default %(default)s)")
    p.add_argument("--topic", default=f"{exchange}-ticker", help="Kafka topic (default %(default)s)")
    p.add_argument("--linger-ms", type=float, default=LIVE_PRODUCER["linger.ms"],
                   help="Kafka producer linger.ms: 0 sends each record at once (lowest latency); "
                        "a few ms batches records (higher throughput) (default %(default)g)")
    p.add_argument("--symbols", default=",".join(cls.default_symbols),
                   help="comma-separated symbols in the exchange's spelling (default %(default)s)")
    p.add_argument("--url", default=None, help=f"WebSocket endpoint (default {cls.default_url})")
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--keep-usdt", action="store_true", help="keep USDT as the quote (default: USDT → USD)")
    p.add_argument("--row-group-size", type=int, default=10_000, help="Parquet rows per row group")
    p.add_argument("--row-group-seconds", type=float, default=10.0, help="Parquet row group at least every N s")
    p.add_argument("--backoff-base", type=float, default=float(os.environ.get("SABOT_BACKOFF_BASE", 1.0)),
                   help="first reconnect delay in seconds, doubling (env SABOT_BACKOFF_BASE; default %(default)s)")
    p.add_argument("--backoff-max", type=float, default=float(os.environ.get("SABOT_BACKOFF_MAX", 60.0)),
                   help="largest reconnect delay (env SABOT_BACKOFF_MAX; default %(default)s)")
    p.add_argument("--stale-after", type=float, default=None,
                   help=f"close a connection silent this many seconds (default {cls.stale_after:g})")
    p.add_argument("--status-interval", type=float, default=30.0, help="seconds between status lines")
    p.add_argument("--metrics-port", type=int, default=None,
                   help="serve Prometheus metrics on 127.0.0.1:PORT/metrics (needs prometheus-client)")
    p.add_argument("-v", "--verbose", action="count", default=0, help="-v debug logging")
    return p


def main(exchange: str, argv: list[str] | None = None) -> int:
    args = build_parser(exchange).parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.verbose < 2:
        logging.getLogger("websockets").setLevel(logging.INFO)
    use_kafka = args.kafka or not args.file
    symbols = [s.strip() for s in args.symbols.split(",") if s.strip()]
    cls = COLLECTORS[exchange]
    try:
        collector = cls(symbols, quote_aliases={} if args.keep_usdt else {"USDT": "USD"})
    except ValueError as exc:
        logging.getLogger("sabot.collectors").error("%s", exc)
        return 2
    sinks: list[Sink] = []
    dests, short = [], []
    if args.file:
        output = args.output or f"./data/{exchange}_{dt.datetime.now(dt.timezone.utc):%Y-%m-%d}.parquet"
        sinks.append(ParquetSink(output, exchange, args.row_group_size, args.row_group_seconds))
        dests.append(f"Parquet file '{output}'")
        short.append("Parquet")
    if use_kafka:
        sinks.insert(0, KafkaSink(args.bootstrap, args.topic, linger_ms=args.linger_ms))
        dests.insert(0, f"Kafka topic '{args.topic}'")
        short.insert(0, "Kafka")
    line = cls.subscribed_template.format(dest=" and ".join(dests), short=" and ".join(short))
    settings = ConnectionSettings(
        url=args.url, backoff_base=args.backoff_base, backoff_max=args.backoff_max,
        stale_after=args.stale_after, status_interval=args.status_interval, subscribe_line=line,
    )
    stats = Stats()
    if args.metrics_port is not None:
        from sabot.metrics import collector_source, serve

        serve(args.metrics_port).add(collector_source(stats, exchange))
    run(collector, sinks, settings, duration=args.duration, stats=stats)
    return 0
