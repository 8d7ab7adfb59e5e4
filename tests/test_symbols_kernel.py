"""normalize_symbols: exchange spellings to BASE/QUOTE, raw kept, idempotent."""
import pyarrow as pa
import pytest

from sabot.fintech import normalize_symbols
from sabot.fintech import symbols as symbols_module


def test_spellings_of_three_exchanges():
    b = pa.record_batch({"symbol": ["BTC-USD", "XBT/USD", "btcusdt", "ETH/USD", None],
                         "bid": [1.0, 2.0, 3.0, 4.0, 5.0]})
    out = normalize_symbols(b)
    assert out["symbol"].to_pylist() == ["BTC/USD", "BTC/USD", "BTC/USDT", "ETH/USD", None]
    assert out["raw_symbol"].to_pylist() == ["BTC-USD", "XBT/USD", "btcusdt", "ETH/USD", None]
    assert out.schema.names == ["symbol", "bid", "raw_symbol"]


def test_idempotent_and_quote_aliases():
    b = pa.record_batch({"symbol": ["ETHUSDT"]})
    once = normalize_symbols(b)
    assert normalize_symbols(once).equals(once)
    assert normalize_symbols(b, quote_aliases={})["symbol"].to_pylist() == ["ETH/USDT"]
    assert normalize_symbols(b, quote_aliases={"USDT": "USD"})["symbol"].to_pylist() == ["ETH/USD"]


def test_table_and_dictionary_input():
    t = pa.table({"symbol": pa.array(["BTC-USD", "ETH-USD", "BTC-USD"]).dictionary_encode()})
    out = normalize_symbols(pa.concat_tables([t, t]))
    assert out["symbol"].to_pylist() == ["BTC/USD", "ETH/USD", "BTC/USD"] * 2


def test_errors_name_value_and_column():
    with pytest.raises(ValueError, match="'symbol'.*'BTC'"):
        normalize_symbols(pa.record_batch({"symbol": ["BTC"]}))
    with pytest.raises(KeyError, match="'sym'"):
        normalize_symbols(pa.record_batch({"symbol": ["BTC-USD"]}), symbol_column="sym")
    with pytest.raises(TypeError, match="string"):
        normalize_symbols(pa.record_batch({"symbol": [1]}))


def test_one_row_ticks_map_as_whole_batches_do():
    """Small batches map row by row, larger ones each distinct symbol once: same column."""
    spellings = ["BTC-USD", "XBT/USD", "btcusdt", None, "ETH/USD", "eth-usdt", "SOL-USD"] * 3
    whole = normalize_symbols(pa.record_batch({"symbol": pa.array(spellings, pa.string())}))
    assert len(spellings) > symbols_module.FEW_ROWS
    ticks = [normalize_symbols(pa.record_batch({"symbol": pa.array([s], pa.string())}))
             for s in spellings]
    assert pa.Table.from_batches(ticks).equals(pa.Table.from_batches([whole]))
    with pytest.raises(ValueError, match="'symbol'.*'BTC'"):
        normalize_symbols(pa.record_batch({"symbol": ["BTC-USD"] * 20 + ["BTC"]}))
