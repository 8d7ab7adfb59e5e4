"""The from_kafka JSON decoder: native and Arrow-reader paths against orjson + pyarrow built
independently here, and the same verdict on malformed messages."""
from __future__ import annotations

import orjson
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sabot.api._decode import JsonBatchDecoder
from sabot.schema import TICKER_SCHEMA, exchange_schema

from stream_data import json_values, ticker_table

PATHS = [pytest.param(True, id="native"), pytest.param(False, id="arrow-reader")]


@pytest.fixture(autouse=True)
def _native_built():
    from sabot.api import _decode
    if _decode._native is None:
        pytest.fail("the Cython decoder sabot.api._jsondecode is not built")


@pytest.mark.parametrize("native", PATHS)
def test_ticker_messages_decode_exactly(native):
    t = ticker_table("binance", 500, seed=2)
    r = JsonBatchDecoder(TICKER_SCHEMA, use_native=native).decode(json_values(t))
    assert r.bad == []
    assert pa.Table.from_batches([r.batch]).equals(t)


def reference(values, schema):
    """orjson per message + pyarrow from_pylist (timestamps: int ns)."""
    rows = []
    for v in values:
        obj = orjson.loads(v)
        rows.append({f.name: obj.get(f.name) for f in schema})
    raw = pa.schema([pa.field(f.name, pa.int64() if pa.types.is_timestamp(f.type) else f.type,
                              nullable=f.nullable) for f in schema])
    return pa.Table.from_pylist(rows, schema=raw).cast(schema)


text = st.text(st.characters(blacklist_categories=["Cs"]), max_size=12)
finite = st.floats(allow_nan=False, allow_infinity=False)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.fixed_dictionaries(
    {"exchange": text, "symbol": text, "raw_symbol": text,
     "timestamp": st.integers(-2**63, 2**63 - 1), "recv_timestamp": st.integers(0, 2**62)},
    optional={"bid": finite | st.integers(-2**53, 2**53) | st.none(), "ask": finite,
              "sequence": st.integers(-2**63, 2**63 - 1) | st.none(), "price": st.none(),
              "extra": st.recursive(st.none() | st.booleans() | finite | text,
                                    lambda c: st.lists(c, max_size=3)
                                    | st.dictionaries(text, c, max_size=3), max_leaves=6)}),
    min_size=1, max_size=20), st.booleans(), st.booleans())
def test_random_objects_match_orjson_reference(rows, native, escape_unicode):
    values = [orjson.dumps(r) for r in rows]
    if escape_unicode:  # same objects, non-ASCII written as \\u escapes (json.dumps default)
        import json
        values = [json.dumps(r).encode() for r in rows]
    r = JsonBatchDecoder(TICKER_SCHEMA, use_native=native).decode(values)
    assert r.bad == []
    assert pa.Table.from_batches([r.batch]).equals(reference(values, TICKER_SCHEMA))


GOOD = json_values(ticker_table("coinbase", 3, seed=1))
BAD = {
    b"{not json": "invalid",
    GOOD[0][:-1]: "truncated",
    orjson.dumps({**orjson.loads(GOOD[0]), "bid": "100.5"}): "bid",
    orjson.dumps({**orjson.loads(GOOD[0]), "sequence": 1.5}): "sequence",
    orjson.dumps({**orjson.loads(GOOD[0]), "symbol": 7}): "symbol",
    orjson.dumps({k: v for k, v in orjson.loads(GOOD[0]).items() if k != "exchange"}): "exchange",
    b"[1, 2]": "object",
    b"": "empty",
    GOOD[0] + b" {}": "trailing",
}


@pytest.mark.parametrize("native", PATHS)
def test_bad_messages_are_isolated_with_reasons(native):
    values = []
    expect_bad = {}
    for i, (bad, word) in enumerate(BAD.items()):
        values.append(GOOD[i % 3])
        expect_bad[len(values)] = word
        values.append(bad)
    values.append(None)
    expect_bad[len(values) - 1] = "empty"
    r = JsonBatchDecoder(TICKER_SCHEMA, use_native=native).decode(values)
    assert [i for i, _ in r.bad] == sorted(expect_bad)
    for i, reason in r.bad:
        assert reason, i
    if native:  # the native decoder names the offending field or problem
        for i, reason in r.bad:
            word = expect_bad[i]
            if word in ("bid", "sequence", "symbol", "exchange", "trailing", "empty", "object"):
                assert word in reason.lower(), (word, reason)
    assert r.batch.num_rows == len(BAD)
    assert r.batch.column("sequence").to_pylist() == [i % 3 for i in range(len(BAD))]


def test_pretty_printed_and_exchange_extras():
    schema = exchange_schema("coinbase")
    obj = {**orjson.loads(GOOD[0]), "product_id": "BTC-USD", "parent_timestamp": 5}
    pretty = orjson.dumps(obj, option=orjson.OPT_INDENT_2)
    assert b"\n" in pretty
    for native in (True, False):
        r = JsonBatchDecoder(schema, use_native=native).decode([pretty, GOOD[1]])
        assert r.bad == []
        assert r.batch.column("product_id").to_pylist() == ["BTC-USD", None]
        assert r.batch.column("parent_timestamp").cast(pa.int64()).to_pylist() == [5, None]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(finite, st.integers(0, 17)), min_size=1, max_size=30))
def test_numbers_parse_to_the_nearest_double(pairs):
    """Short decimals (the native fast path) and long ones (strtod) both equal Python's float()."""
    texts = [(repr(x) if k == 17 else f"{x:.{k}f}") for x, k in pairs]
    schema = pa.schema([pa.field("bid", pa.float64())])
    values = [b'{"bid": ' + t.encode() + b"}" for t in texts]
    r = JsonBatchDecoder(schema).decode(values)
    assert r.bad == []
    got = r.batch.column("bid").to_pylist()
    assert [np_bits(g) for g in got] == [np_bits(float(t)) for t in texts]


def np_bits(x: float) -> int:
    import struct
    return struct.unpack("<q", struct.pack("<d", x))[0]


MIXED = pa.schema([pa.field("name", pa.string(), nullable=False), pa.field("flag", pa.bool_()),
                   pa.field("t_ms", pa.timestamp("ms")), pa.field("t_ns", pa.timestamp("ns")),
                   pa.field("n", pa.int64()), pa.field("x", pa.float64())])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.fixed_dictionaries(
    {"t_ns": st.integers(-2**62, 2**62)},
    optional={"name": text, "flag": st.booleans() | st.none(),
              "t_ms": st.integers(-2**40, 2**40).map(lambda ms: ms * 1_000_000) | st.none(),
              "n": st.integers(-2**63, 2**63 - 1) | st.none(), "x": finite | st.none()}),
    min_size=1, max_size=12), st.booleans())
def test_every_field_kind_and_required_fields(rows, native):
    """bool, a timestamp in ms (converted from the integer ns) and one in ns (built as is), and
    a required string: a message without it is reported, the others decode."""
    values = [orjson.dumps(r) for r in rows]
    r = JsonBatchDecoder(MIXED, use_native=native).decode(values)
    missing = [i for i, row in enumerate(rows) if "name" not in row]
    assert [i for i, _ in r.bad] == missing
    assert all("name" in reason for _, reason in r.bad)
    kept = [row for row in rows if "name" in row]
    expected = pa.Table.from_pylist(
        [{"name": row["name"], "flag": row.get("flag"),
          "t_ms": None if row.get("t_ms") is None else row["t_ms"] // 1_000_000,
          "t_ns": row["t_ns"], "n": row.get("n"), "x": row.get("x")} for row in kept],
        schema=pa.schema([pa.field("name", pa.string(), nullable=False),
                          pa.field("flag", pa.bool_()), pa.field("t_ms", pa.int64()),
                          pa.field("t_ns", pa.int64()), pa.field("n", pa.int64()),
                          pa.field("x", pa.float64())])).cast(MIXED)
    assert pa.Table.from_batches([r.batch]).equals(expected)
