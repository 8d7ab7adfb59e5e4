"""The kernel base's recycled output buffers: reused only once released, never while alive."""
import gc

import numpy as np
import pyarrow as pa
import pytest

from sabot.fintech import _kernel, midprice


@pytest.fixture
def small_pool(monkeypatch):
    monkeypatch.setattr(_kernel, "POOL_MAX_BYTES", 20 << 20)
    monkeypatch.setattr(_kernel, "_POOL", [])
    yield _kernel._POOL


def _quotes(n, shift=0.0):
    bid = np.arange(n, dtype=np.float64) + shift
    return pa.record_batch({"bid": bid, "ask": bid + 1.0})


def test_live_outputs_are_never_overwritten(small_pool):
    outs = [midprice(_quotes(300_000, shift=k)) for k in range(6)]
    for k, out in enumerate(outs):
        np.testing.assert_array_equal(out["midprice"].to_numpy(),
                                      np.arange(300_000) + k + 0.5)
    assert sum(a.nbytes for a in small_pool) <= 20 << 20


def test_released_output_memory_is_reused(small_pool):
    first = midprice(_quotes(300_000))
    address = first["midprice"].buffers()[1].address
    del first
    gc.collect()
    again = midprice(_quotes(300_000, shift=1.0))
    assert again["midprice"].buffers()[1].address == address
    np.testing.assert_array_equal(again["midprice"].to_numpy(), np.arange(300_000) + 1.5)


def test_pool_makes_room_when_sizes_change(small_pool):
    """Free buffers are dropped to stay under the cap, live ones kept (and outputs stay right)."""
    live = midprice(_quotes(1_000_000))                # 8 MB, held throughout
    for n in (500_000, 1_500_000, 250_000, 1_000_000):
        out = midprice(_quotes(n))
        np.testing.assert_array_equal(out["midprice"].to_numpy(), np.arange(n) + 0.5)
        del out
    assert sum(a.nbytes for a in small_pool) <= 20 << 20
    np.testing.assert_array_equal(live["midprice"].to_numpy(), np.arange(1_000_000) + 0.5)


def test_small_outputs_use_the_arrow_pool(small_pool):
    out = midprice(_quotes(100))
    assert out["midprice"].to_pylist()[:2] == [0.5, 1.5]
    assert small_pool == []


@pytest.mark.parametrize("rows", [1, 7, 16384, 16385, 40_000])
def test_nulls_are_exactly_the_nan_results_across_blocks(rows):
    """Only NaN results become nulls; ±inf and huge finite values stay values (the quick
    non-finite check must not miss a NaN nor turn an infinity into a null), in every 16Ki block."""
    rng = np.random.default_rng(rows)
    bid = rng.uniform(1.0, 2.0, rows)
    ask = bid + 0.01
    special = rng.integers(0, rows, size=max(1, rows // 50))
    kinds = rng.integers(0, 4, size=special.size)
    for i, kind in zip(special, kinds):
        if kind == 0:
            bid[i] = np.nan
        elif kind == 1:
            bid[i], ask[i] = np.inf, np.inf
        elif kind == 2:
            bid[i], ask[i] = np.inf, -np.inf              # inf - inf: an undefined result
        else:
            bid[i], ask[i] = 1e308, 1e308                 # overflows to inf, not NaN
    out = midprice(pa.record_batch({"bid": bid, "ask": ask})).column("midprice")
    expected = 0.5 * (bid + ask)
    np.testing.assert_array_equal(out.is_null().to_numpy(zero_copy_only=False), np.isnan(expected))
    got = out.to_numpy(zero_copy_only=False)
    np.testing.assert_array_equal(got[~np.isnan(expected)], expected[~np.isnan(expected)])


# -- key columns are read without pyarrow's pandas layer -------------------------------------
def test_key_values_read_from_the_buffers_equal_to_pylist():
    for arr in (pa.array(["BTC/USD", None, "é€", "", "ETH/USD"]),
                pa.array(["a", "b", None, "a"], pa.large_string()),
                pa.array(["x", None, "yz", "w"]).slice(1, 2),
                pa.array([], pa.string()), pa.array([3, None, 1])):
        assert _kernel._python_values(arr) == arr.to_pylist()


def test_a_keyed_kernel_does_not_import_pandas():
    """pyarrow's ``to_numpy``/``to_pylist`` convert through its pandas layer, which imports
    pandas (~0.2-0.5 s) the first time: a keyed kernel's first batch paid that in every process
    (a Kafka job, inside its measured run)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from sabot.api._decode import JsonBatchDecoder\n"
        "from sabot.fintech import EWMA, midprice\n"
        "from sabot.schema import TICKER_SCHEMA\n"
        "row = (b'{\"exchange\":\"coinbase\",\"symbol\":\"%s\",\"raw_symbol\":\"X\",'\n"
        "       b'\"timestamp\":1700000000000000000,\"recv_timestamp\":1700000000000000001,'\n"
        "       b'\"bid\":1.5,\"ask\":2.5,\"sequence\":1,\"time_source\":\"exchange\"}')\n"
        "batch = JsonBatchDecoder(TICKER_SCHEMA).decode([row % s for s in (b'A/USD', b'B/USD',"
        " b'A/USD')]).batch\n"
        "assert 'pandas' not in sys.modules\n"
        "out = EWMA('midprice', alpha=0.5, by='symbol')(midprice(batch))\n"
        "assert out.column('ewma').to_pylist() == [2.0, 2.0, 2.0], out\n"
        "print('pandas' in sys.modules)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "False"
