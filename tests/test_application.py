"""Application: the broker, group, state, metrics and commit settings of a Kafka pipeline, and
``app.stream(topic)``; ``Stream.from_kafka`` builds the same source."""
from __future__ import annotations

import numpy as np
import pytest

from sabot.api import Application, Stream
from sabot.fintech import ewma
from sabot.kafka import fast_consumer_config

from stream_data import produce, ticker_table


def test_application_settings_are_checked_naming_the_value():
    with pytest.raises(ValueError, match="commit must be 'sync' or 'async', got 'later'"):
        Application("localhost:9092", consumer_group="g", commit="later")
    with pytest.raises(ValueError, match="consumer_group"):
        Application("localhost:9092", consumer_group="")
    with pytest.raises(ValueError, match="mutually exclusive"):
        Application("localhost:9092", consumer_group="g", checkpoint_dir="x",
                    changelog_topic="y")
    with pytest.raises(ValueError, match="checkpoint_interval_s must be >= 0, got -1"):
        Application("localhost:9092", consumer_group="g", checkpoint_interval_s=-1)


def test_stream_refuses_application_arguments():
    app = Application("localhost:9092", consumer_group="g")
    with pytest.raises(TypeError, match="checkpoint_dir belong.*Application"):
        app.stream("t", checkpoint_dir="somewhere")


def test_app_stream_checkpoints_where_the_app_says_and_resumes(kafka_broker, unique_topic,
                                                               tmp_path):
    n = 1200
    table = ticker_table("kraken", n, seed=21)
    topic, group = unique_topic(), unique_topic("g")
    kafka_broker.create_topic(topic, partitions=1)
    produce(kafka_broker.bootstrap, topic, table.slice(0, n // 2))
    app = Application(kafka_broker.bootstrap, consumer_group=group,
                      checkpoint_dir=tmp_path / "ck", checkpoint_interval_s=0,
                      **fast_consumer_config())

    def pipeline():
        return (app.stream(topic, batch_size=100, from_beginning=True, stop_at_end=True)
                .map(lambda b: ewma(b, column="bid", alpha=0.9, by="symbol")))

    first = pipeline()
    out1 = first.collect()
    assert first.kafka_sources()[0].group_id == group
    assert first.last_checkpointer.count >= 1 and any((tmp_path / "ck").iterdir())
    produce(kafka_broker.bootstrap, topic, table.slice(n // 2))
    second = pipeline()
    out2 = second.collect()
    assert second.last_checkpointer.restored_from is not None
    assert out1.num_rows + out2.num_rows == n
    got = np.concatenate([out1.column("ewma").to_numpy(), out2.column("ewma").to_numpy()])
    want = ewma(table, column="bid", alpha=0.9, by="symbol").column("ewma").to_numpy()
    np.testing.assert_allclose(got, want)


def test_from_kafka_builds_the_same_source_as_the_application(kafka_broker, tmp_path):
    kw = dict(checkpoint_dir=tmp_path / "a", checkpoint_interval_s=5.0, commit="async",
              reset_state=True, state_key=b"k", kafka_config={"client.id": "x"})
    a = Stream.from_kafka(kafka_broker.bootstrap, "t", "g", batch_size=7,
                          session_timeout_ms=6000, **kw).kafka_sources()[0]
    b = Application(kafka_broker.bootstrap, consumer_group="g", session_timeout_ms=6000,
                    **kw).stream("t", batch_size=7).kafka_sources()[0]
    for attr in ("topics", "group_id", "checkpoint_dir", "checkpoint_interval_s", "commit_mode",
                 "reset_state", "state_key", "kafka_config", "batch_size", "changelog_topic"):
        assert getattr(a, attr) == getattr(b, attr), attr
    assert {k: v for k, v in a.config.items() if k != "on_commit"} == {
        k: v for k, v in b.config.items() if k != "on_commit"}
