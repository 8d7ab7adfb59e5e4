"""The settings of a Kafka application and how they make a Kafka source (see
:class:`sabot.api.Application`, which adds ``stream()``)."""
from __future__ import annotations

import os
from typing import Any, Dict, Mapping, Optional, Sequence, Union

import pyarrow as pa

from ..kafka import validate_client_config
from ._kafka import KafkaSource


#: The parameters of ``Stream.from_kafka`` that belong to the application.
APPLICATION_PARAMETERS = ("checkpoint_dir", "checkpoint_interval_s", "changelog_topic",
                          "reset_state", "state_key", "metrics_port", "commit", "kafka_config")


class ApplicationSettings:
    """The broker, consumer group, state, metrics and commit settings of a Kafka pipeline.

    ``broker_address``: bootstrap servers (``host:port[,host:port]``).  ``consumer_group``: the
    group every stream of the application reads in.  ``kafka_config``: librdkafka client
    properties laid over the defaults of every client (consumer, dead-letter producer,
    changelog store, and ``to_kafka``'s producer on the same brokers).  ``checkpoint_dir`` /
    ``changelog_topic``: checkpoint operator state with the consumed offsets (see
    ``Stream.from_kafka`` for both), every ``checkpoint_interval_s`` seconds;
    ``reset_state=True`` discards state that cannot be restored instead of refusing to start;
    ``state_key`` authenticates state records (HMAC-SHA256).  ``metrics_port``: serve
    Prometheus metrics of every stream while it runs.  ``commit``: ``'sync'`` or ``'async'``.
    ``consumer_config``: further librdkafka consumer settings (``session_timeout_ms=6000``).
    Every value is checked here: a bad one raises naming the parameter and value."""

    def __init__(self, broker_address: str, *, consumer_group: str,
                 kafka_config: Optional[Mapping[str, Any]] = None,
                 checkpoint_dir: Optional[Union[str, os.PathLike]] = None,
                 checkpoint_interval_s: float = 60.0, changelog_topic: Optional[str] = None,
                 reset_state: bool = False, state_key: Optional[bytes] = None,
                 metrics_port: Optional[int] = None, commit: str = "sync",
                 **consumer_config: Any) -> None:
        if not isinstance(broker_address, str) or not broker_address.strip():
            raise ValueError(f"broker_address must be 'host:port[,host:port]', got "
                             f"{broker_address!r}")
        if not isinstance(consumer_group, str) or not consumer_group:
            raise ValueError(f"consumer_group must be a non-empty string, got {consumer_group!r}")
        if commit not in ("sync", "async"):
            raise ValueError(f"commit must be 'sync' or 'async', got {commit!r}")
        if checkpoint_interval_s < 0:
            raise ValueError(f"checkpoint_interval_s must be >= 0, got {checkpoint_interval_s}")
        if checkpoint_dir is not None and changelog_topic is not None:
            raise ValueError("checkpoint_dir and changelog_topic are mutually exclusive: state "
                             "goes either to a local directory or to a Kafka changelog topic")
        if metrics_port is not None:
            from ..metrics import require_prometheus

            require_prometheus(f"metrics_port={metrics_port}")
        self.broker_address = broker_address
        self.consumer_group = consumer_group
        self.kafka_config: Dict[str, Any] = validate_client_config(kafka_config)
        self.checkpoint_dir = checkpoint_dir
        self.checkpoint_interval_s = float(checkpoint_interval_s)
        self.changelog_topic = changelog_topic
        self.reset_state = bool(reset_state)
        self.state_key = state_key
        self.metrics_port = metrics_port
        self.commit = commit
        self.consumer_config = dict(consumer_config)

    def __repr__(self) -> str:
        state = (f", checkpoint_dir={str(self.checkpoint_dir)!r}" if self.checkpoint_dir
                 else f", changelog_topic={self.changelog_topic!r}" if self.changelog_topic
                 else "")
        return (f"{type(self).__name__}({self.broker_address!r}, consumer_group="
                f"{self.consumer_group!r}{state})")

    def source(self, topic: Union[str, Sequence[str]], *, schema: Optional[pa.Schema] = None,
               batch_size: int = 1000, max_latency_ms: float = 50,
               from_beginning: bool = False, dead_letter_topic: Optional[str] = None,
               stop_at_end: bool = False, order_by: Optional[str] = None,
               timestamp_window: Any = "auto", **consumer_config: Any) -> KafkaSource:
        """The Kafka source of ``topic`` with these settings (see :meth:`Application.stream`
        for the arguments)."""
        misplaced = sorted(set(consumer_config) & set(APPLICATION_PARAMETERS))
        if misplaced:
            raise TypeError(f"{', '.join(misplaced)} belong(s) to the Application, not to "
                            "app.stream(); set them on Application(...)")
        source = KafkaSource(self.broker_address, topic, self.consumer_group, schema=schema,
                             batch_size=batch_size, max_latency_ms=max_latency_ms,
                             from_beginning=from_beginning, dead_letter_topic=dead_letter_topic,
                             stop_at_end=stop_at_end, order_by=order_by,
                             checkpoint_dir=self.checkpoint_dir,
                             checkpoint_interval_s=self.checkpoint_interval_s,
                             metrics_port=self.metrics_port,
                             changelog_topic=self.changelog_topic, commit=self.commit,
                             kafka_config=self.kafka_config, timestamp_window=timestamp_window,
                             **{**self.consumer_config, **consumer_config})
        source.reset_state = self.reset_state
        source.state_key = self.state_key
        return source
