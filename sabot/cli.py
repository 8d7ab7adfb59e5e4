"""The ``sabot`` command line: one command for every application in the package::

    sabot demo [--duration 30]                 the whole live pipeline on one machine
    sabot collect VENUE [-k] [-F] ...          one venue's tickers to Kafka and/or Parquet
    sabot monitor [--bootstrap HOST:PORT] ...  the cross-venue arbitrage monitor
    sabot funding [--spot binance] ...         the spot / perpetual funding-rate monitor
    sabot broker [--port 19092]                the embedded Kafka-protocol broker
    sabot sim VENUE --port N [--replay FILE]   a local exchange server
    sabot research --parquet FILE              features of recorded tickers
    sabot research report --opportunities F    opportunities per day, edge, duration per pair
    sabot backtest --parquet FILE              the mean-reversion backtest
    sabot topics                               topics and their partitions
    sabot tail TOPIC [-n N] [--from-beginning] the next (or first) N messages of a topic

``VENUE`` is any registered venue (:mod:`sabot.venues`).  Every subcommand that makes a Kafka
client takes ``--kafka-config FILE`` (librdkafka ``key=value`` properties: TLS, SASL).

Exit codes, the same for ``sabot``, ``python -m sabot.broker`` and ``python -m sabot.demo``:

* 0 - ran and stopped cleanly (Ctrl+C or SIGTERM included);
* 1 - something failed while running (a process crashed, records were lost);
* 2 - could not start because of how it was called: a bad argument, a port already in use, a
  data directory that cannot be written, a missing package, a broker that cannot be reached.
  These are reported in one line on stderr, without a traceback;
* 130 - interrupted before it finished (the demo, which otherwise runs for a fixed time).
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import NoReturn, Optional, Sequence

from sabot.clitools import (  # noqa: F401  (shared by every command; re-exported)
    EXIT_FAILURE, EXIT_OK, EXIT_USAGE, ArgumentParser, UsageError, port_number, positive_float,
    positive_int, report_usage_error,
)


def _venue_choices() -> list:
    from sabot.venues import perp_venue_names, venue_names

    return [*venue_names(), *perp_venue_names()]


def _delegate(sub: argparse._SubParsersAction, name: str, help_text: str, description: str,
              func) -> argparse.ArgumentParser:
    """A subcommand ``name VENUE ...`` whose options depend on the venue: the rest of the
    command line is handed to ``func(venue, rest)``, which parses it."""
    p = sub.add_parser(name, help=help_text, description=description, add_help=False)
    p.add_argument("venue", choices=_venue_choices(), metavar="VENUE",
                   help="one of: " + ", ".join(_venue_choices()))
    p.add_argument("rest", nargs=argparse.REMAINDER, default=[], metavar="...",
                   help="the venue's options (VENUE --help)")
    p.set_defaults(func=lambda args: func(args.venue, list(args.rest)))
    return p


def _collect(venue: str, rest: list) -> int:
    from sabot.apps import collect

    args = collect.build_parser(venue, prog=f"sabot collect {venue}").parse_args(rest)
    return collect.command(args, venue)


def _sim(venue: str, rest: list) -> int:
    from sabot.sim.__main__ import main as sim_main

    return sim_main([venue, *rest])


def _broker(args: argparse.Namespace) -> int:
    from .apps._common import broker_missing
    from .broker import run

    missing = broker_missing()
    if missing:
        return report_usage_error("sabot broker", UsageError(missing))
    return run(args)


def _demo(args: argparse.Namespace) -> int:
    from .apps import demo

    return demo.command(args, prog="sabot demo")


def _monitor(args: argparse.Namespace) -> int:
    from .apps import monitor

    return monitor.command(args)


def _funding(args: argparse.Namespace) -> int:
    from .apps import funding

    return funding.command(args)


def _research(args: argparse.Namespace) -> int:
    from .apps import research

    return research.command(args)


def _add_kafka_client_arguments(p: argparse.ArgumentParser) -> None:
    from .apps._common import add_kafka_config_argument

    p.add_argument("--bootstrap", default=None,
                   help="Kafka bootstrap servers (else bootstrap.servers from --kafka-config, "
                        "else env SABOT_KAFKA_BOOTSTRAP, else localhost:19092)")
    add_kafka_config_argument(p)
    p.add_argument("--connect-timeout", type=positive_float, default=8.0,
                   help="give up when no broker answers within this many seconds (default %(default)g)")


def _kafka_client(args: argparse.Namespace):
    """(bootstrap, client properties) of ``topics`` / ``tail``; UsageError for a bad file,
    BrokerUnreachableError when no broker answers."""
    import os

    from .apps._common import load_kafka_config, wait_reachable
    from .kafka import KafkaConfigError

    try:
        props = load_kafka_config(args.kafka_config)
    except KafkaConfigError as exc:
        raise UsageError(str(exc)) from None
    bootstrap = (args.bootstrap or props.get("bootstrap.servers")
                 or os.environ.get("SABOT_KAFKA_BOOTSTRAP") or "localhost:19092")
    wait_reachable(bootstrap, props, timeout_s=args.connect_timeout)
    return bootstrap, props


def _topics(args: argparse.Namespace) -> int:
    """``sabot topics``: brokers, topics and partitions, as ``kcat -L`` prints them."""
    from confluent_kafka.admin import AdminClient

    from .apps._common import BrokerUnreachableError
    from .kafka import admin_config

    try:
        bootstrap, props = _kafka_client(args)
        md = AdminClient(admin_config(bootstrap, props)).list_topics(timeout=args.connect_timeout)
    except (UsageError, BrokerUnreachableError) as exc:
        return report_usage_error("sabot topics", exc)
    except Exception as exc:  # KafkaException: the broker stopped answering meanwhile
        return report_usage_error("sabot topics", UsageError(f"metadata from {bootstrap}: {exc}"))
    topics = sorted(t for t in md.topics if args.all or not t.startswith("__"))
    print(f"Metadata for all topics (from broker {md.orig_broker_id}: {md.orig_broker_name}):")
    print(f" {len(md.brokers)} broker{'s' if len(md.brokers) != 1 else ''}:")
    for b in sorted(md.brokers.values(), key=lambda b: b.id):
        print(f"  broker {b.id} at {b.host}:{b.port}")
    print(f" {len(topics)} topic{'s' if len(topics) != 1 else ''}:")
    for name in topics:
        t = md.topics[name]
        err = f", error: {t.error}" if t.error is not None else ""
        print(f'  topic "{name}" with {len(t.partitions)} partitions{err}:')
        for pid in sorted(t.partitions):
            part = t.partitions[pid]
            print(f"    partition {pid}, leader {part.leader}, replicas: "
                  f"{','.join(map(str, part.replicas))}, isrs: {','.join(map(str, part.isrs))}")
    return EXIT_OK


def _tail(args: argparse.Namespace) -> int:
    """``sabot tail TOPIC``: print the next ``-n`` messages (from the topic's end, or from its
    start with ``--from-beginning``), one value per line, as ``kcat -C -o end -c N`` does.

    Exit 0 after ``-n`` messages (or Ctrl+C); 1 when ``--timeout`` passed first (what arrived
    is printed, the shortfall said on stderr); 2 for an unknown topic or unreachable broker."""
    import time
    import uuid

    from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaError, TopicPartition

    from .apps._common import BrokerUnreachableError
    from .kafka import client_config

    prog = "sabot tail"
    try:
        bootstrap, props = _kafka_client(args)
    except (UsageError, BrokerUnreachableError) as exc:
        return report_usage_error(prog, exc)
    cfg = client_config(bootstrap, props, {"group.id": f"sabot-tail-{uuid.uuid4().hex[:8]}",
                                           "enable.auto.commit": False, "log_level": 0})
    consumer = Consumer(cfg)
    try:
        md = consumer.list_topics(timeout=args.connect_timeout)
        topic = md.topics.get(args.topic)
        if topic is None or topic.error is not None or not topic.partitions:
            known = ", ".join(sorted(t for t in md.topics if not t.startswith("__"))) or "none"
            return report_usage_error(prog, UsageError(
                f"no topic {args.topic!r} at {bootstrap} (topics: {known})"))
        start = OFFSET_BEGINNING if args.from_beginning else OFFSET_END
        consumer.assign([TopicPartition(args.topic, p, start) for p in sorted(topic.partitions)])
        deadline = None if args.timeout is None else time.monotonic() + args.timeout
        printed = 0
        try:
            while printed < args.n:
                wait = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
                if wait <= 0:
                    break
                msg = consumer.poll(wait)
                if msg is None:
                    continue
                err = msg.error()
                if err is not None:
                    if err.code() != KafkaError._PARTITION_EOF:
                        logging.getLogger("sabot.tail").warning("%s: %s", args.topic, err)
                    continue
                value = msg.value()
                text = value.decode("utf-8", errors="replace") if value is not None else ""
                if args.meta:
                    key = msg.key()
                    key_text = key.decode("utf-8", errors="replace") if key is not None else ""
                    text = f"{msg.topic()}[{msg.partition()}]@{msg.offset()} key={key_text} {text}"
                print(text, flush=True)
                printed += 1
        except KeyboardInterrupt:
            return EXIT_OK
        if printed < args.n:
            print(f"{prog}: {printed} of {args.n} messages from {args.topic} within "
                  f"{args.timeout:g} s", file=sys.stderr)
            return EXIT_FAILURE
        return EXIT_OK
    finally:
        consumer.close()


def build_parser() -> ArgumentParser:
    """The ``sabot`` parser with every subcommand."""
    parser = ArgumentParser(prog="sabot", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    from .apps import demo, monitor, research
    from .broker import add_arguments as broker_arguments

    p = sub.add_parser("demo", help="run the whole live pipeline on this machine",
                       description=demo.__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    demo.add_arguments(p)
    p.set_defaults(func=_demo)

    _delegate(sub, "collect", "collect one venue's tickers to Kafka and/or Parquet",
              "Stream a venue's best bid/offer tickers to Kafka (-k) and/or Parquet (-F); "
              "'sabot collect VENUE --help' lists the options.", _collect)

    p = sub.add_parser("monitor", help="the cross-venue arbitrage monitor on the ticker topics",
                       description=monitor.__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    monitor.add_arguments(p)
    p.set_defaults(func=_monitor)

    from .apps import funding

    p = sub.add_parser("funding", help="the spot / perpetual funding-rate (cash-and-carry) monitor",
                       description=funding.__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    funding.add_arguments(p)
    p.set_defaults(func=_funding)

    p = sub.add_parser("broker", help="run the embedded Kafka-protocol broker",
                       description="Run the embedded Kafka-protocol broker (needs the 'broker' "
                                   "extra: pip install 'sabot-marketdata[broker]').")
    broker_arguments(p)
    p.set_defaults(func=_broker)

    _delegate(sub, "sim", "a local exchange server speaking a venue's protocol",
              "A local WebSocket server speaking a venue's market-data protocol; "
              "'sabot sim VENUE --help' lists the options.", _sim)

    p = sub.add_parser("research", help="features of recorded tickers into a Parquet file",
                       description=research.add_research_arguments.__doc__)
    research.add_research_arguments(p)
    p.set_defaults(func=_research)

    p = sub.add_parser("backtest", help="the mean-reversion backtest on recorded tickers",
                       description=research.add_backtest_arguments.__doc__)
    research.add_backtest_arguments(p)
    p.set_defaults(func=_research)

    p = sub.add_parser("topics", help="list topics and their partitions (like kcat -L)",
                       description="List the brokers, topics and partitions of a Kafka cluster.")
    _add_kafka_client_arguments(p)
    p.add_argument("--all", action="store_true", help="also internal topics (__consumer_offsets)")
    p.set_defaults(func=_topics)

    p = sub.add_parser("tail", help="print the next (or first) N messages of a topic",
                       description="Print the next N messages of TOPIC from its end (like "
                                   "kcat -C -o end -c N), or its first N with --from-beginning.")
    p.add_argument("topic", metavar="TOPIC")
    p.add_argument("-n", type=positive_int, default=10, help="messages to print (default %(default)s)")
    p.add_argument("--from-beginning", action="store_true", help="start at the topic's first message")
    p.add_argument("--timeout", type=positive_float, default=None,
                   help="stop after this many seconds, exit 1 if fewer than N arrived "
                        "(default: wait)")
    p.add_argument("--meta", action="store_true", help="prefix topic[partition]@offset and key")
    _add_kafka_client_arguments(p)
    p.set_defaults(func=_tail)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``sabot COMMAND ...``: the exit code (see the module docstring)."""
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
