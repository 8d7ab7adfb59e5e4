"""``Application``: what a Kafka pipeline is configured with once, apart from its streams.

An application owns the broker address, the client configuration (``kafka_config``: SASL,
TLS, tuning), the consumer group, where operator state is checkpointed (``checkpoint_dir`` or
``changelog_topic``, with ``checkpoint_interval_s``, ``reset_state`` and ``state_key``), the
metrics endpoint (``metrics_port``) and the offset commit mode (``commit``).  Its
:meth:`Application.stream` gives a :class:`~sabot.api.Stream` over one or more topics, which only
takes what belongs to reading those topics (schema, batching, dead letters, ordering)::

    app = Application("localhost:9092", consumer_group="features",
                      checkpoint_dir="state/features", metrics_port=9100)
    (app.stream("coinbase-ticker", order_by="timestamp")
        .map(lambda b: ewma(b, column="price", alpha=0.94, by="symbol"))
        .to_parquet("out/features.parquet"))

``Stream.from_kafka(bootstrap, topic, group_id, ...)`` remains the one-line form taking both
kinds of arguments; ``Application(bootstrap, consumer_group=group_id, <application arguments>)
.stream(topic, <stream arguments>)`` builds the same source.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import pyarrow as pa

from ._app import APPLICATION_PARAMETERS, ApplicationSettings
from ._plan import KafkaNode
from .stream import Stream

__all__ = ["APPLICATION_PARAMETERS", "Application"]


class Application(ApplicationSettings):
    """The broker, consumer group, state, metrics and commit settings of a Kafka pipeline,
    and the streams read with them (see the module docstring and
    :class:`~sabot.api._app.ApplicationSettings` for the arguments)."""

    def stream(self, topic: Union[str, Sequence[str]], *, schema: Optional[pa.Schema] = None,
               batch_size: int = 1000, max_latency_ms: float = 50,
               from_beginning: bool = False, dead_letter_topic: Optional[str] = None,
               stop_at_end: bool = False, order_by: Optional[str] = None,
               timestamp_window: Any = "auto", **consumer_config: Any) -> Stream:
        """A Stream of the JSON messages of ``topic`` (one name or several), read in this
        application's consumer group with its client, state, metrics and commit settings.
        The arguments are those of ``Stream.from_kafka`` that concern reading the topic;
        ``consumer_config`` here overrides the application's for this stream."""
        return Stream(KafkaNode(self.source(
            topic, schema=schema, batch_size=batch_size, max_latency_ms=max_latency_ms,
            from_beginning=from_beginning, dead_letter_topic=dead_letter_topic,
            stop_at_end=stop_at_end, order_by=order_by, timestamp_window=timestamp_window,
            **consumer_config)))
