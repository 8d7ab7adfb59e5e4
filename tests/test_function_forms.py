"""One function form for kernels, and no stateful operator whose state a checkpoint would miss.

Every public call form keeps working and agrees with the class form; inside a Stream with
checkpoints, a stateful kernel wrapped any way either restores exactly or is refused with an
error naming it — never silently restarted from fresh state."""
from __future__ import annotations

import functools

import numpy as np
import pyarrow as pa
import pytest

from sabot.api import Stream
from sabot.api._runtime import UncheckpointedStateError
from sabot.fintech import (EWMA, KalmanHedgeRatio, StatelessKernelOperator,
                           SymbolKeyedOperator, create_ewma_operator, ewma, kalman_hedge_ratio,
                           midprice)
from sabot.fintech._scope import StateScope, call_kernel, unsaved_state
from sabot.fintech.microstructure import Midprice

from stream_data import ticker_table

TABLE = ticker_table("coinbase", 3000, seed=5).select(["symbol", "timestamp", "bid", "ask",
                                                       "price"])


def _ewma_ref(alpha: float, by=None) -> np.ndarray:
    return EWMA(column="bid", alpha=alpha, by=by)(TABLE).column("ewma").to_numpy()


# -- every public call form ------------------------------------------------------------------
def test_public_call_forms_agree():
    want = _ewma_ref(0.94)
    assert np.allclose(ewma(TABLE, column="bid", alpha=0.94).column("ewma").to_numpy(), want)
    assert np.allclose(EWMA(column="bid", alpha=0.94)(TABLE).column("ewma").to_numpy(), want)
    mid = midprice(TABLE)
    assert np.allclose(mid.column("midprice").to_numpy(),
                       (TABLE.column("bid").to_numpy() + TABLE.column("ask").to_numpy()) / 2)
    for op in (EWMA(column="bid", alpha=0.94),
               lambda b: ewma(b, column="bid", alpha=0.94),
               StatelessKernelOperator(lambda b: ewma(b, column="bid", alpha=0.94))):
        got = Stream.from_table(TABLE, 250).map(op).collect()
        assert np.allclose(got.column("ewma").to_numpy(), want), op


def test_a_stateless_kernel_in_a_scope_keeps_nothing():
    scope = StateScope()
    with scope.active():
        call_kernel(Midprice, TABLE.to_batches()[0])
        midprice(TABLE.to_batches()[0])
        ewma(TABLE, column="bid", alpha=0.5)
    kernels = scope.state_dict()["kernels"]
    assert len(kernels) == 1 and next(iter(kernels)).startswith("0:EWMA")


def test_paired_kernel_through_call_kernel_keeps_state_in_the_scope():
    a = pa.table({"price": np.linspace(100, 110, 200)})
    b = pa.table({"price": np.linspace(50, 56, 200) + np.sin(np.arange(200))})
    whole = KalmanHedgeRatio()(a, b).column("hedge_ratio").to_numpy()
    scope = StateScope()
    parts = []
    for i in range(0, 200, 50):
        with scope.active():
            parts.append(call_kernel(KalmanHedgeRatio, a.slice(i, 50), b.slice(i, 50))
                         .column("hedge_ratio").to_numpy())
    assert np.allclose(np.concatenate(parts), whole)
    assert np.allclose(kalman_hedge_ratio(a, b).column("hedge_ratio").to_numpy(), whole)


# -- checkpoint and restore, each way of wrapping a stateful kernel ---------------------------
def _captured():
    k = EWMA(column="bid", alpha=0.9, by="symbol")
    return lambda b: k(b)


GLOBAL_KERNEL = EWMA(column="bid", alpha=0.9, by="symbol")


def _global_user(b):
    return GLOBAL_KERNEL(b)


def _with_default(b, k=EWMA(column="bid", alpha=0.9, by="symbol")):
    return k(b)


def _apply(kernel, b):
    return kernel(b)


SAVED = {
    "instance": lambda: EWMA(column="bid", alpha=0.9, by="symbol"),
    "function form": lambda: (lambda b: ewma(b, column="bid", alpha=0.9, by="symbol")),
    "SymbolKeyedOperator": lambda: SymbolKeyedOperator(EWMA, "symbol", column="bid",
                                                       alpha=0.9),
    "StatelessKernelOperator": lambda: StatelessKernelOperator(
        lambda b: ewma(b, column="bid", alpha=0.9, by="symbol")),
    "create_ewma_operator": lambda: create_ewma_operator(0.9, "bid"),
}
REFUSED = {
    "closure": (_captured, "captures 'k'"),
    "global": (lambda: _global_user, "global 'GLOBAL_KERNEL'"),
    "default argument": (lambda: _with_default, "default argument"),
    "partial": (lambda: functools.partial(_apply, EWMA(column="bid", alpha=0.9, by="symbol")),
                "argument 0"),
    "bound method": (lambda: EWMA(column="bid", alpha=0.9, by="symbol").__call__,
                     "bound to"),
}


def _run_split(make):
    """First half, state_dict, second half in a new Stream restored from it."""
    half = TABLE.num_rows // 2
    first = Stream.from_table(TABLE.slice(0, half), 300).map(make())
    out1 = first.collect()
    state = first.state_dict()
    second = Stream.from_table(TABLE.slice(half), 300).map(make())
    second.load_state_dict(state)
    out2 = second.collect()
    return pa.concat_tables([out1, out2]).column("ewma").to_numpy()


@pytest.mark.parametrize("way", sorted(SAVED))
def test_each_saved_way_restores_exactly(way):
    got = _run_split(SAVED[way])
    assert np.allclose(got, _ewma_ref(0.9, by="symbol"), equal_nan=True)


@pytest.mark.parametrize("way", sorted(REFUSED))
def test_each_unsaved_way_is_refused_naming_the_kernel(way):
    make, where = REFUSED[way]
    s = Stream.from_table(TABLE, 300).map(make())
    s.collect()  # without checkpoints it runs
    with pytest.raises(UncheckpointedStateError, match=rf"map #1.*{where}.*EWMA\(column='bid'"):
        s.state_dict()


def test_plain_functions_and_stateless_kernels_have_nothing_unsaved():
    assert unsaved_state(lambda b: midprice(b)) == []
    assert unsaved_state(lambda b: ewma(b, alpha=0.5)) == []
    assert unsaved_state(Midprice()) == []
    assert unsaved_state(EWMA()) == []  # the operator saves it


def test_checkpointed_kafka_stream_refuses_a_captured_kernel_before_reading(
        kafka_broker, unique_topic, tmp_path):
    from sabot.kafka import fast_consumer_config
    from stream_data import produce

    topic, group = unique_topic(), unique_topic("g")
    kafka_broker.create_topic(topic, partitions=1)
    produce(kafka_broker.bootstrap, topic, ticker_table("kraken", 200, seed=3))
    k = EWMA(column="bid", alpha=0.9, by="symbol")
    s = Stream.from_kafka(kafka_broker.bootstrap, topic, group, from_beginning=True,
                          stop_at_end=True, checkpoint_dir=tmp_path / "ck",
                          **fast_consumer_config()).map(lambda b: k(b))
    with pytest.raises(UncheckpointedStateError, match=r"captures 'k': EWMA"):
        s.collect()
    assert s.kafka_sources()[0].metrics["messages"] == 0
    assert not list((tmp_path / "ck").glob("*")) or not any(
        p.suffix == ".ckpt" for p in (tmp_path / "ck").iterdir())
