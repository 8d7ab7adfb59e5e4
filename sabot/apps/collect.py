"""The collector application: one venue's tickers and trades to Kafka and/or Parquet (``sabot collect VENUE``).

``--channels ticker,trades`` (default ``ticker``) picks what is recorded, over one connection.
Each channel has its own Kafka topic (``--topic``, default ``<venue>-ticker``;
``--trades-topic``, default ``<venue>-trades``) and its own Parquet file: ``-o FILE`` is the
ticker file, trades go beside it as ``<stem>-trades<suffix>`` (``data/x.parquet`` ->
``data/x-trades.parquet``), whichever channels are recorded.

Also behind ``collectors/<venue>2parquet.py`` in a checkout (and importable as
``sabot.collectors.cli``); the venues come from the registry (:mod:`sabot.venues`).

Exit codes tell the truth: 0 when every accepted record reached every sink; 1 when records were
not delivered to Kafka or not written to Parquet (or dead-letter entries not written), the broker
could not be reached at start, or the exchange accepted none of the symbols; 2 for a usage mistake (bad flag, unreadable
``--kafka-config``, unwritable ``-o``, metrics port in use, ...), reported in one line.
At exit one summary line gives records written per sink, rejected by reason, and undelivered.
"""
from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable

from sabot.collectors.base import UnknownChannelError
from sabot.collectors.connection import ConnectionSettings, Stats, rejection_metrics, run
from sabot.collectors.sinks import KafkaSink, KafkaUnavailable, ParquetSink, Sink
from sabot.collectors.validate import DeadLetter
from sabot.kafka import LIVE_PRODUCER, KafkaConfigError, read_client_properties
from sabot.symbols import USDT_AS_USD
from sabot.venues import get_venue

__all__ = ["add_arguments", "build_parser", "command", "main"]

DEFAULT_BOOTSTRAP = "localhost:19092"

log = logging.getLogger("sabot.collectors")


class UsageError(Exception):
    """A mistake in how the collector was started: reported in one line, exit code 2."""


def build_parser(exchange: str, prog: str | None = None) -> argparse.ArgumentParser:
    """The collector's parser for one venue (``prog`` defaults to ``<venue>2parquet.py``)."""
    from sabot.clitools import ArgumentParser  # one-line errors, no abbreviations

    p = ArgumentParser(
        prog=prog or f"{exchange}2parquet.py",
        description=f"Stream {exchange} best bid/offer tickers and/or trades as normalised records to Kafka "
                    "and/or Parquet.",
        allow_abbrev=False,
    )
    add_arguments(p, exchange)
    return p


def add_arguments(p: argparse.ArgumentParser, exchange: str) -> None:
    """The collector's options for ``exchange`` (defaults from its registry entry)."""
    venue = get_venue(exchange)
    cls = venue.collector_class
    p.add_argument("-k", "--kafka", action="store_true",
                   help="produce to Kafka (the default when no sink flag is given)")
    p.add_argument("-F", "--file", action="store_true", help="write a Parquet file")
    p.add_argument("--channels", type=_channels_type(cls), default=("ticker",), metavar="LIST",
                   help=f"comma-separated channels to record over one connection: "
                        f"{', '.join(cls.supported_channels)} (default ticker)")
    p.add_argument("-o", "--output",
                   help=f"Parquet path of the ticker file (default ./data/{exchange}_<UTC date>.parquet); "
                        "trades go beside it as <stem>-trades.parquet, book rows as <stem>-book.parquet")
    p.add_argument("--bootstrap", default=None,
                   help="Kafka bootstrap servers (else bootstrap.servers from --kafka-config, else env "
                        f"SABOT_KAFKA_BOOTSTRAP, else {DEFAULT_BOOTSTRAP})")
    p.add_argument("--topic", default=venue.ticker_topic, help="Kafka topic of the tickers (default %(default)s)")
    p.add_argument("--trades-topic", default=trades_topic(exchange),
                   help="Kafka topic of the trades (default %(default)s)")
    if "book" in cls.supported_channels:
        p.add_argument("--book-topic", default=book_topic(exchange),
                       help="Kafka topic of the book rows (default %(default)s)")
    p.add_argument("--kafka-config", metavar="FILE", default=None,
                   help="librdkafka client properties (key=value lines: security.protocol, sasl.*, ssl.*, "
                        "...) for every Kafka client the collector creates")
    p.add_argument("--broker-timeout", type=float, default=5.0,
                   help="seconds to wait for the Kafka cluster's metadata at start (default %(default)g)")
    p.add_argument("--flush-timeout", type=float, default=30.0,
                   help="seconds to wait at exit for Kafka to acknowledge what was produced; the rest "
                        "is reported as undelivered (exit code 1) (default %(default)g)")
    p.add_argument("--linger-ms", type=float, default=LIVE_PRODUCER["linger.ms"],
                   help="Kafka producer linger.ms: 0 sends each record at once (lowest latency); "
                        "a few ms batches records (higher throughput) (default %(default)g)")
    p.add_argument("--symbols", default=",".join(cls.default_symbols),
                   help="comma-separated symbols in the exchange's spelling (default %(default)s)")
    p.add_argument("--url", default=None, help=f"WebSocket endpoint (default {cls.default_url})")
    if getattr(cls, "rest_url", None) is not None and "book" in cls.supported_channels:
        p.add_argument("--rest-url", default=cls.rest_url,
                       help="REST base URL of the book snapshots (GET /api/v3/depth) (default %(default)s)")
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    usdt = p.add_mutually_exclusive_group()
    usdt.add_argument("--usdt-as-usd", action="store_true",
                      help="record USDT quotes as USD (BTCUSDT -> BTC/USD, ignoring the USDT/USD "
                           "basis); default: USDT is its own quote (BTC/USDT)")
    usdt.add_argument("--keep-usdt", action="store_true",
                      help="USDT is its own quote (the default; kept for existing scripts)")
    p.add_argument("--row-group-size", type=int, default=10_000, help="Parquet rows per row group")
    p.add_argument("--row-group-seconds", type=float, default=10.0, help="Parquet row group at least every N s")
    p.add_argument("--dead-letter", metavar="FILE", default=None,
                   help="append rejected records and malformed frames to FILE as JSON lines, with the reason")
    p.add_argument("--max-age", type=float, default=86_400.0,
                   help="reject records whose event time is more than this many seconds old (default %(default)g)")
    p.add_argument("--max-ahead", type=float, default=60.0,
                   help="reject records whose event time is more than this many seconds ahead of the "
                        "local clock (default %(default)g)")
    p.add_argument("--backoff-base", type=float, default=float(os.environ.get("SABOT_BACKOFF_BASE", 1.0)),
                   help="first reconnect delay in seconds, doubling (env SABOT_BACKOFF_BASE; default %(default)s)")
    p.add_argument("--backoff-max", type=float, default=float(os.environ.get("SABOT_BACKOFF_MAX", 60.0)),
                   help="largest reconnect delay (env SABOT_BACKOFF_MAX; default %(default)s)")
    p.add_argument("--stale-after", type=float, default=None,
                   help=f"close a connection silent this many seconds (default {cls.stale_after:g})")
    p.add_argument("--data-stale-after", type=float, default=None,
                   help="reconnect when no data arrived for this many seconds although keepalives do "
                        "(default: off)")
    p.add_argument("--symbol-timeout", type=float, default=30.0,
                   help="Binance: report symbols without any data this many seconds after subscribing "
                        "(Binance sends nothing for symbols it does not list) (default %(default)g)")
    p.add_argument("--status-interval", type=float, default=30.0, help="seconds between status lines")
    p.add_argument("--metrics-port", type=int, default=None,
                   help="serve Prometheus metrics on 127.0.0.1:PORT/metrics (needs prometheus-client)")
    p.add_argument("-v", "--verbose", action="count", default=0, help="-v debug logging")


def trades_topic(exchange: str) -> str:
    """The Kafka topic of ``exchange``'s trades: ``<venue>-trades``."""
    return f"{exchange}-trades"


def book_topic(exchange: str) -> str:
    """The Kafka topic of ``exchange``'s book rows: ``<venue>-book``."""
    return f"{exchange}-book"


def book_path(ticker_path: str | os.PathLike) -> Path:
    """The book Parquet file beside the ticker file: ``<stem>-book<suffix>``."""
    p = Path(ticker_path)
    return p.with_name(f"{p.stem}-book{p.suffix or '.parquet'}")


def trades_path(ticker_path: str | os.PathLike) -> Path:
    """The trades Parquet file beside the ticker file: ``<stem>-trades<suffix>``."""
    p = Path(ticker_path)
    return p.with_name(f"{p.stem}-trades{p.suffix or '.parquet'}")


def _channels_type(cls: Any) -> Callable[[str], tuple[str, ...]]:
    """argparse type of ``--channels``: the named channels, or one line naming the accepted ones."""

    def parse(text: str) -> tuple[str, ...]:
        try:
            return tuple(cls.check_channels([c.strip() for c in text.split(",") if c.strip()]))
        except UnknownChannelError as exc:
            raise argparse.ArgumentTypeError(str(exc).partition(": ")[2]) from None

    parse.__name__ = "channels"
    return parse


def _kafka_sink(args: argparse.Namespace, sink_class: type = KafkaSink,
                topic: str | None = None) -> KafkaSink:
    from confluent_kafka import KafkaException

    props: dict[str, str] = {}
    if args.kafka_config is not None:
        try:
            props = read_client_properties(args.kafka_config)
        except KafkaConfigError as exc:
            raise UsageError(f"--kafka-config: {exc}") from None
        except OSError as exc:
            raise UsageError(f"--kafka-config {args.kafka_config}: cannot read it ({exc.strerror or exc})") from None
    bootstrap = args.bootstrap  # None keeps bootstrap.servers from the properties file
    if bootstrap is None and "bootstrap.servers" not in props:
        bootstrap = os.environ.get("SABOT_KAFKA_BOOTSTRAP") or DEFAULT_BOOTSTRAP
    try:
        return sink_class(bootstrap, topic or args.topic, linger_ms=args.linger_ms, kafka_config=props,
                         flush_timeout=args.flush_timeout)
    except (KafkaException, KafkaConfigError, ValueError, TypeError) as exc:
        raise UsageError(f"Kafka client configuration refused: {exc}") from None


def _parquet_sink(args: argparse.Namespace, exchange: str, sink_class: type = ParquetSink,
                  channel: str = "ticker") -> ParquetSink:
    output = args.output or f"./data/{exchange}_{dt.datetime.now(dt.timezone.utc):%Y-%m-%d}.parquet"
    if channel == "trades":
        output = str(trades_path(output))
    elif channel == "book":
        output = str(book_path(output))
    try:
        sink = (sink_class(output, exchange, args.row_group_size, args.row_group_seconds)
                if channel == "ticker" else
                sink_class(output, exchange, args.row_group_size, args.row_group_seconds, channel=channel))
        probe = sink.parts_dir / f".probe-{os.getpid()}"
        probe.write_bytes(b"")  # writable now, or a one-line error instead of a failure later
        probe.unlink()
    except OSError as exc:
        raise UsageError(f"-o {output}: cannot write there ({exc.strerror or exc})") from None
    return sink


def _metrics(args: argparse.Namespace, stats: Stats, exchange: str) -> None:
    from sabot.metrics import INSTALL_HINT, MetricsError, collector_source, serve

    try:
        server = serve(args.metrics_port)
    except ImportError:
        raise UsageError(f"--metrics-port needs prometheus-client: {INSTALL_HINT}") from None
    except MetricsError as exc:
        if INSTALL_HINT in str(exc):
            raise UsageError(f"--metrics-port needs prometheus-client: {INSTALL_HINT}") from None
        raise UsageError(f"--metrics-port {args.metrics_port}: cannot listen: {exc}") from None
    except OSError as exc:
        raise UsageError(f"--metrics-port {args.metrics_port}: cannot listen ({exc.strerror or exc})") from None
    server.add(collector_source(stats, exchange))
    server.add(rejection_metrics(stats, exchange))


def main(exchange: str, argv: list[str] | None = None) -> int:
    """``<venue>2parquet.py [options]``: parse ``argv`` and run; the exit code."""
    return command(build_parser(exchange).parse_args(argv), exchange)


def command(args: argparse.Namespace, exchange: str | None = None) -> int:
    """Run the collector with parsed arguments (``exchange`` defaults to ``args.venue``)."""
    exchange = exchange or args.venue
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.verbose < 2:
        logging.getLogger("websockets").setLevel(logging.INFO)
    try:
        return _main(exchange, args)
    except UsageError as exc:
        log.error("%s", exc)
        return 2
    except KafkaUnavailable as exc:
        log.error("%s", exc)
        return 1
    except KeyboardInterrupt:  # Ctrl+C before streaming began (e.g. during the broker check)
        log.info("interrupted before streaming started")
        return 130


def _main(exchange: str, args: argparse.Namespace) -> int:
    use_kafka = args.kafka or not args.file
    symbols = [s.strip() for s in args.symbols.split(",") if s.strip()]
    cls = get_venue(exchange).collector_class
    channels = tuple(getattr(args, "channels", None) or ("ticker",))
    try:
        aliases = USDT_AS_USD if getattr(args, "usdt_as_usd", False) else {}
        if channels == ("ticker",):  # a collector that knows only tickers takes no channels
            collector = cls(symbols, quote_aliases=aliases)
        else:
            collector = cls(symbols, quote_aliases=aliases, channels=channels)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    rest_url = getattr(args, "rest_url", None)
    if rest_url:
        if not rest_url.startswith(("http://", "https://")):
            raise UsageError(f"--rest-url {rest_url!r} must start with http:// or https://")
        collector.rest_url = rest_url
    if args.max_age <= 0 or args.max_ahead < 0:
        raise UsageError(f"--max-age {args.max_age:g} must be > 0 and --max-ahead {args.max_ahead:g} >= 0")
    stats = Stats()
    if args.metrics_port is not None:
        _metrics(args, stats, exchange)
    sinks: dict[str, list[Sink]] = {ch: [] for ch in channels}
    dests, short = [], []
    topics = {"ticker": args.topic, "trades": getattr(args, "trades_topic", None) or trades_topic(exchange),
              "book": getattr(args, "book_topic", None) or book_topic(exchange)}
    kafkas: list[KafkaSink] = []
    if use_kafka:
        for ch in channels:
            # the ticker channel may use a venue's own sink (perpetuals); trades the plain one
            kafka = _kafka_sink(args, getattr(cls, "kafka_sink", KafkaSink) if ch == "ticker" else KafkaSink,
                                topics[ch])
            kafka.check(args.broker_timeout)  # unreachable: one line and exit 1 before streaming
            kafkas.append(kafka)
            sinks[ch].append(kafka)
        dests.append(" and ".join(f"Kafka topic '{topics[ch]}'" for ch in channels))
        short.append("Kafka")
    parquets: list[ParquetSink] = []
    if args.file:
        for ch in channels:
            parquet = _parquet_sink(
                args, exchange, getattr(cls, "parquet_sink", ParquetSink) if ch == "ticker" else ParquetSink, ch)
            parquets.append(parquet)
            sinks[ch].append(parquet)
        dests.append(" and ".join(f"Parquet file '{p.path}'" for p in parquets))
        short.append("Parquet")
    dead_letter = None
    if args.dead_letter is not None:
        try:
            dead_letter = DeadLetter(args.dead_letter, exchange)
        except OSError as exc:
            raise UsageError(f"--dead-letter {args.dead_letter}: cannot write there ({exc.strerror or exc})") from None
    line = cls.subscribed_template.format(dest=" and ".join(dests), short=" and ".join(short))
    settings = ConnectionSettings(
        url=args.url, backoff_base=args.backoff_base, backoff_max=args.backoff_max,
        stale_after=args.stale_after, status_interval=args.status_interval, subscribe_line=line,
        data_stale_after=args.data_stale_after, max_age_s=args.max_age, max_ahead_s=args.max_ahead,
        symbol_timeout=args.symbol_timeout,
    )
    run(collector, sinks if channels != ("ticker",) else sinks["ticker"], settings, duration=args.duration,
        stats=stats, dead_letter=dead_letter)
    return _summary(exchange, stats, kafkas, parquets, dead_letter)


def _summary(exchange: str, stats: Stats, kafkas: list[KafkaSink], parquets: list[ParquetSink],
             dead_letter: DeadLetter | None) -> int:
    """Log the one exit summary line (and one line per failure); the exit code."""
    written: list[str] = []
    failures: list[str] = []
    for kafka in kafkas:
        written.append(f"{kafka.delivered} to Kafka topic '{kafka.topic}'")
        if kafka.undelivered:
            failures.append(f"{kafka.undelivered} records not delivered to Kafka topic '{kafka.topic}'")
    for parquet in parquets:
        written.append(f"{parquet.rows_written} to Parquet '{parquet.path}'")
        if parquet.unwritten:
            failures.append(f"{parquet.unwritten} records not written to Parquet '{parquet.path}'")
        if parquet.finalise_error:
            failures.append(f"Parquet '{parquet.path}' not finalised ({parquet.finalise_error}); "
                            f"its parts are kept in '{parquet.parts_dir}'")
    by_reason = ", ".join(f"{k} {v}" for k, v in sorted(stats.rejected_by.items()))
    extra: dict[str, Any] = {}
    if dead_letter is not None:
        extra["dead-lettered"] = dead_letter.written
        if dead_letter.errors:
            failures.append(f"{dead_letter.errors} dead-letter entries could not be written to "
                            f"'{dead_letter.path}'")
    undelivered = sum(k.undelivered for k in kafkas) + sum(p.unwritten for p in parquets)
    log.info("%s summary: written %s; rejected %d%s; skipped frames %d; undelivered %d%s", exchange,
             " and ".join(written) or "nowhere", stats.rejected, f" ({by_reason})" if by_reason else "",
             stats.skipped, undelivered, "".join(f"; {k} {v}" for k, v in extra.items()))
    for text in failures:
        log.error("%s", text)
    if stats.fatal is not None:
        return 1
    return 1 if failures else 0
