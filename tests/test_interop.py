"""Kernels and Streams on polars, pandas, numpy and Arrow-capsule data; the NaN option.

References are the pyarrow path of the same kernel (already tested against plain numpy/pandas
formulas in the kernels' own tests): here what matters is that every kind of data reaches the
kernel unchanged and comes back as the kind given."""
from __future__ import annotations

import pickle
import subprocess
import sys

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pytest

from sabot import interop
from sabot.api import Stream, StreamOperatorError
from sabot.fintech import (CUSUM, EWMA, RSI, KalmanHedgeRatio, asof_join, current_missing, cusum,
                           ewma, midprice, missing, rsi, set_missing, signed_volume,
                           stale_quote_detector)

PRICES = np.array([100.0, 101.0, np.nan, 102.5, 101.5, 103.0, 104.0, 103.5])
QUOTES = {"bid": [99.5, 99.6, 99.7, 99.9], "ask": [100.5, 100.6, 100.9, 100.1]}


def arrow_ewma(values, alpha=0.5) -> pa.Array:
    return ewma(pa.record_batch({"price": pa.array(values)}), alpha=alpha).column("ewma")


# -- frames in, the same kind out ----------------------------------------------------------
def test_polars_frame_in_polars_frame_out():
    df = pl.DataFrame(QUOTES)
    out = midprice(df)
    assert isinstance(out, pl.DataFrame)
    assert out.columns == ["bid", "ask", "midprice"]
    expected = midprice(pa.table(QUOTES)).column("midprice").to_pylist()
    assert out["midprice"].to_list() == expected


def test_pandas_frame_keeps_its_index_and_replaces_an_existing_output_in_place():
    df = pd.DataFrame({**QUOTES, "midprice": 0.0}, index=pd.Index([10, 20, 30, 40], name="t"))
    out = midprice(df)
    assert isinstance(out, pd.DataFrame)
    assert list(out.columns) == ["bid", "ask", "midprice"]
    assert out.index.equals(df.index)
    expected = midprice(pa.table(QUOTES)).column("midprice").to_pylist()
    assert out["midprice"].tolist() == expected
    assert (df["midprice"] == 0.0).all()                  # the caller's frame is untouched


def test_pandas_times_strings_and_nan_read_like_their_arrow_forms():
    df = pd.DataFrame({
        "timestamp": pd.to_datetime([0, 500, 3000, 3100], unit="ms"),
        "symbol": ["A", "A", "A", "B"],
        "side": ["buy", "sell", "BUY", "sell"],
        "volume": [1.0, np.nan, 3.0, 4.0],
    })
    arrow = pa.Table.from_pandas(df, preserve_index=False)
    for fn in (lambda d: signed_volume(d),
               lambda d: stale_quote_detector(d, max_age_ms=1000, by="symbol")):
        out = fn(df)
        ref = fn(arrow)
        (name,) = [c for c in out.columns if c not in df.columns]
        pd.testing.assert_series_equal(out[name], ref.column(name).to_pandas(), check_names=False)
    assert np.isnan(signed_volume(df)["signed_volume"].iloc[1])


def test_keyed_kernel_on_polars_with_string_keys_and_sides():
    df = pl.DataFrame({"symbol": ["A", "B", "A", "B", "A"],
                       "price": [1.0, 10.0, 2.0, 20.0, 3.0]})
    out = EWMA(alpha=0.5, by="symbol")(df)
    assert isinstance(out, pl.DataFrame)
    expected = EWMA(alpha=0.5, by="symbol")(df.to_arrow()).column("ewma").to_pylist()
    assert out["ewma"].to_list() == expected


def test_paired_kernel_with_both_columns_in_one_polars_frame():
    df = pl.DataFrame({"a": [1.0, 2.0, 3.0, 4.0], "b": [1.0, 1.5, 2.0, 2.5]})
    out = KalmanHedgeRatio(a_column="a", b_column="b")(df)
    assert isinstance(out, pl.DataFrame) and {"hedge_ratio", "spread"} <= set(out.columns)


# -- one column in, the output column(s) out -----------------------------------------------
def test_numpy_in_numpy_out():
    out = ewma(PRICES, alpha=0.5)
    assert isinstance(out, np.ndarray) and out.dtype == np.float64
    np.testing.assert_array_equal(out, arrow_ewma(PRICES).to_numpy(zero_copy_only=False))
    assert np.isnan(out[2])                               # the missing input's row


def test_numpy_several_outputs_come_back_by_name():
    values = np.r_[np.zeros(5), np.full(5, 3.0)]
    out = cusum(values, k=0.5, h=2.0)
    ref = cusum(pa.record_batch({"value": values}), k=0.5, h=2.0)
    assert list(out) == ["cusum_stat", "cusum_alarm"]
    np.testing.assert_array_equal(out["cusum_stat"], ref.column("cusum_stat").to_numpy())
    assert out["cusum_alarm"].tolist() == ref.column("cusum_alarm").to_pylist()


def test_pyarrow_arrays_and_chunked_arrays_carry_state_across_chunks():
    out = ewma(pa.array(PRICES, from_pandas=True), alpha=0.5)
    assert isinstance(out, pa.Array) and out.equals(arrow_ewma(PRICES))
    chunked = pa.chunked_array([PRICES[:3], PRICES[3:]])
    out = ewma(chunked, alpha=0.5)
    assert isinstance(out, pa.ChunkedArray)
    assert out.to_numpy().tolist()[3:] == arrow_ewma(PRICES).to_numpy(
        zero_copy_only=False).tolist()[3:]


def test_series_in_series_out():
    s = pl.Series("close", PRICES)
    out = ewma(s, alpha=0.5)
    assert isinstance(out, pl.Series) and out.name == "ewma" and len(out) == len(PRICES)
    ps = pd.Series(PRICES, index=list("abcdefgh"), name="close")
    out = ewma(ps, alpha=0.5)
    assert isinstance(out, pd.Series) and out.name == "ewma"
    assert list(out.index) == list("abcdefgh")
    np.testing.assert_array_equal(out.to_numpy(), ewma(PRICES, alpha=0.5))
    both = cusum(pd.Series([0.0, 3.0, 3.0], index=[7, 8, 9]), h=1.0)
    assert isinstance(both, pd.DataFrame) and list(both.index) == [7, 8, 9]


def test_a_single_array_becomes_the_kernels_named_column():
    # historical_var reads column "pnl" by default, rsi a value column: both take one array
    assert isinstance(rsi(PRICES, period=3), np.ndarray)
    assert CUSUM(column="x", k=0.5, h=2.0)(np.arange(4.0))["cusum_stat"].shape == (4,)


# -- any Arrow-capsule producer ------------------------------------------------------------
class StreamOnly:
    """An object exposing only ``__arrow_c_stream__`` (like a DuckDB relation)."""

    def __init__(self, table: pa.Table) -> None:
        self._table = table

    def __arrow_c_stream__(self, requested_schema=None):
        return self._table.__arrow_c_stream__(requested_schema)


class ArrayOnly:
    """An object exposing only ``__arrow_c_array__``."""

    def __init__(self, data) -> None:
        self._data = data

    def __arrow_c_array__(self, requested_schema=None):
        return self._data.__arrow_c_array__(requested_schema)


def test_capsule_objects():
    table = pa.table(QUOTES)
    out = midprice(StreamOnly(table))
    assert isinstance(out, pa.Table) and out.equals(midprice(table))
    out = midprice(ArrayOnly(pa.record_batch(QUOTES)))
    assert isinstance(out, pa.RecordBatch) and out.equals(midprice(pa.record_batch(QUOTES)))
    out = ewma(ArrayOnly(pa.array(PRICES, from_pandas=True)), alpha=0.5)
    assert isinstance(out, pa.Array) and out.equals(arrow_ewma(PRICES))
    # view string types some producers export are read like strings
    views = pa.table({"price": [1.0, 2.0, 3.0], "symbol": pa.array(["a", "b", "a"],
                                                                   pa.string_view())})
    out = EWMA(alpha=0.5, by="symbol")(StreamOnly(views))
    assert out.column("ewma").to_pylist() == [1.0, 2.0, 2.0]


# -- what is refused, and how ------------------------------------------------------------------
def test_unsupported_inputs_get_one_clear_error():
    with pytest.raises(TypeError, match=r"midprice input: unsupported type dict; expected .*"
                                        r"polars or pandas DataFrame"):
        midprice({"bid": [1.0]})
    with pytest.raises(TypeError, match="numpy array, one column, where a table is needed"):
        midprice(np.ones(3))
    with pytest.raises(TypeError, match="where a table is needed"):
        EWMA(by="symbol")(np.ones(3))
    with pytest.raises(ValueError, match=r"1-D .* shape \(2, 2\)"):
        ewma(np.ones((2, 2)))
    with pytest.raises(TypeError, match=r"LazyFrame; call \.collect\(\)"):
        midprice(pl.DataFrame(QUOTES).lazy())
    with pytest.raises(TypeError, match="1-D numpy array"):
        ewma([1.0, 2.0])
    # functions that take Arrow only say how to convert
    with pytest.raises(TypeError, match=r"got polars\.DataFrame; convert it with "
                                        r"sabot\.interop\.to_arrow"):
        asof_join(pl.DataFrame(QUOTES), pa.table(QUOTES))


def test_polars_is_not_imported_to_check_types():
    # (pandas is left out: pyarrow itself loads it when it builds arrays, if installed)
    code = (
        "import sys, numpy as np, pyarrow as pa\n"
        "from sabot.fintech import ewma, midprice\n"
        "ewma(np.arange(5.0)); ewma(pa.record_batch({'price': [1.0]}))\n"
        "try:\n    midprice({'bid': 1})\nexcept TypeError:\n    pass\n"
        "print('polars' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


# -- the NaN option ----------------------------------------------------------------------------
def test_nulls_stay_the_default():
    out = rsi(pa.record_batch({"price": PRICES}), period=3).column("rsi")
    assert out.null_count > 0
    with pytest.raises(pa.ArrowInvalid):
        out.to_numpy()


def test_nan_mode_makes_float_outputs_nan_and_keeps_bool_nulls():
    batch = pa.record_batch({"value": pa.array([0.0, None, 3.0, 3.0])})
    with missing("nan"):
        out = cusum(batch, h=1.0)
    stat = out.column("cusum_stat")
    assert stat.null_count == 0 and stat.buffers()[0] is None
    values = stat.to_numpy()                              # zero-copy: no validity bitmap
    assert np.isnan(values[1]) and not np.isnan(values[[0, 2, 3]]).any()
    assert out.column("cusum_alarm").null_count == 1      # booleans have no NaN: still null
    ref = cusum(batch, h=1.0).column("cusum_stat").to_numpy(zero_copy_only=False)
    np.testing.assert_array_equal(values, ref)


def test_set_missing_is_process_wide_and_restorable():
    previous = set_missing("nan")
    try:
        assert current_missing() == "nan"
        assert rsi(pa.record_batch({"price": PRICES}), period=3).column("rsi").null_count == 0
        with missing("null"):
            assert EWMA().nulls == "null"
    finally:
        set_missing(previous)
    assert current_missing() == "null"
    with pytest.raises(ValueError, match="nulls must be 'null' or 'nan', got 'NaN'"):
        set_missing("NaN")


def test_a_kernel_may_declare_its_mode_itself():
    from sabot.fintech._kernel import Kernel, output, value_input

    class Declared(Kernel):
        def __init__(self, nulls=None):
            self.declare("declared", [value_input("column", None)], [output("y")],
                         config=dict(nulls=nulls) if nulls else {}, nulls=nulls)

    assert Declared(nulls="nan").nulls == "nan"
    with missing("nan"):
        assert Declared(nulls="null").nulls == "null" and Declared().nulls == "nan"
        assert Declared(nulls="null").config == {}        # the default is not written down
    with pytest.raises(ValueError, match="nulls must be 'null' or 'nan', got 'none'"):
        Declared(nulls="none")


def test_nan_mode_is_config_so_checkpoints_restore_the_same_mode():
    batch = pa.record_batch({"price": PRICES})
    with missing("nan"):
        k = RSI(period=3)
    assert k.nulls == "nan" and k.config["nulls"] == "nan"
    k(batch)
    state = pickle.loads(pickle.dumps(k.state_dict()))
    with missing("nan"):
        twin = RSI(period=3)
    twin.load_state_dict(state)
    np.testing.assert_array_equal(twin(batch).column("rsi").to_numpy(),
                                  k(batch).column("rsi").to_numpy())
    with pytest.raises(ValueError, match="nulls"):
        RSI(period=3).load_state_dict(state)              # a null-mode kernel refuses it
    clone = k.clone()
    assert clone.nulls == "nan" and clone.config == k.config
    k.nulls = "null"
    assert "nulls" not in k.config and k(batch).column("rsi").null_count > 0


# -- Streams -----------------------------------------------------------------------------------
TICKS = pa.table({"symbol": ["A", "B"] * 6, "price": np.linspace(100.0, 101.1, 12)})


def test_stream_sources_accept_frames_and_collect_to_frames():
    expected = Stream.from_table(TICKS, batch_size=5).map(lambda b: ewma(b, by="symbol")).collect()
    polars_in = Stream.from_table(pl.from_arrow(TICKS), batch_size=5).map(
        lambda b: ewma(b, by="symbol"))
    out = polars_in.to_polars()
    assert isinstance(out, pl.DataFrame) and out.to_dict(as_series=False) == expected.to_pydict()
    pandas_in = Stream.from_table(TICKS.to_pandas(), batch_size=5).map(
        lambda b: ewma(b, by="symbol"))
    out = pandas_in.to_pandas()
    assert isinstance(out, pd.DataFrame)
    assert out["ewma"].tolist() == expected.column("ewma").to_pylist()
    frames = [pl.from_arrow(TICKS.slice(0, 7)), TICKS.slice(7).to_pandas()]
    assert Stream.from_batches(frames).collect().to_pydict() == TICKS.to_pydict()
    assert Stream.from_table(StreamOnly(TICKS)).collect().equals(TICKS)
    with pytest.raises(TypeError, match="from_table: unsupported type list"):
        Stream.from_table([1, 2])


def test_map_may_return_polars_or_pandas():
    def with_polars(batch: pa.RecordBatch) -> pl.DataFrame:
        return pl.from_arrow(batch).with_columns((pl.col("price") * 2).alias("double"))

    out = Stream.from_table(TICKS, batch_size=5).map(with_polars).map(
        lambda b: b.to_pandas()).collect()
    assert out.column("double").to_pylist() == [p * 2 for p in TICKS.column("price").to_pylist()]
    flat = Stream.from_table(TICKS, batch_size=5).flat_map(lambda b: pl.from_arrow(b)).collect()
    assert flat.to_pydict() == TICKS.to_pydict()
    with pytest.raises(StreamOperatorError, match=r"must return .* got dict"):
        Stream.from_table(TICKS).map(lambda b: {"price": 1}).collect()


def test_nan_mode_carries_into_stream_operators_and_their_checkpoints():
    with missing("nan"):
        stream = Stream.from_table(TICKS, batch_size=5).map(lambda b: rsi(b, period=3,
                                                                          by="symbol"))
    out = stream.collect()                                # run outside the block
    assert out.column("rsi").null_count == 0 and np.isnan(out.column("rsi").to_numpy()[0])
    (op_state,) = stream.state_dict()["operators"].values()
    assert [k["config"]["nulls"] for k in op_state["scope"]["kernels"].values()] == ["nan"]
    plain = Stream.from_table(TICKS, batch_size=5).map(lambda b: rsi(b, period=3, by="symbol"))
    assert plain.collect().column("rsi").null_count > 0
    # per-partition clones keep the mode: the operator's, and a kernel instance's own
    op = stream.operators()[0]
    assert op.clone().scope.missing == "nan"
    with missing("nan"):
        kernel_op = Stream.from_table(TICKS).map(RSI(period=3, by="symbol")).operators()[0]
    twin = kernel_op.clone().fn
    assert isinstance(twin, RSI) and twin.config == kernel_op.fn.config
    assert twin.config["nulls"] == "nan"


def test_interop_helpers():
    assert interop.to_arrow(pa.table(QUOTES)) is not None
    rb = pa.record_batch(QUOTES)
    assert interop.to_arrow(rb) is rb                     # Arrow passes through untouched
    assert isinstance(interop.to_arrow(pd.DataFrame(QUOTES)), pa.RecordBatch)
    assert interop.is_table(pl.DataFrame(QUOTES)) and not interop.is_table(pl.Series([1]))
    assert interop.type_name(pl.DataFrame()) == "polars.DataFrame"
