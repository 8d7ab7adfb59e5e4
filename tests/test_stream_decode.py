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


# -- validation at the edge: both decoders give the same records and the same bad set ---------
from sabot.api._decode import RecordRules  # noqa: E402

NOW_NS = 1_800_000_000_000_000_000
DAY_NS = 86_400 * 10**9
_FLOATS = ["123.5", "1", "0", "-0.0", "-5", "1e999", "-1e999", "1E400", "1e-400", "NaN",
           "Infinity", "-Infinity", "true", "false", '"nan"', '"1.5"', "null", "1E2",
           "99999999999999999999999", "0.1e1", "[1]", "{}", "01", "1.", ".5", "+1", "-",
           "2.5e-3", "1.7976931348623157e308", "4.9e-324"]
_INTS = ["1", "-9223372036854775808", "9223372036854775807", "9223372036854775808",
         "32503680000000000000", "1.0", "1e3", "true", '"5"', "null", "-0", "01", "[]"]
_STAMPS = [str(NOW_NS), str(NOW_NS - DAY_NS - 1), str(NOW_NS - DAY_NS + 1),
           str(NOW_NS + 60 * 10**9 + 1), str(NOW_NS + 59 * 10**9), "32503680000000000000",
           "32503680000000", "0", "-1", "1.7e18", "true", '"2026-01-01"', "null"]
_STRINGS = ['"BTC/USD"', '"A\\u0001B"', '"A\\nB"', '"\\u007f"', '"\\u0085x"', '"\\ud800"',
            '"\\u00e9"', '"caf\xc3\xa9"', "1", "null", "true", '"\\t"', '"a\\"b"', '""']
_NAMES = {"bid": "b\\u0069d", "symbol": "sym\\u0062ol"}  # member names written with escapes


def _field_values(name: str):
    if name in ("timestamp", "recv_timestamp"):
        return st.sampled_from(_STAMPS)
    if name == "sequence":
        return st.sampled_from(_INTS)
    if name in ("exchange", "symbol", "raw_symbol"):
        return st.sampled_from(_STRINGS)
    return st.sampled_from(_FLOATS)


_GOOD = {"exchange": '"kraken"', "symbol": '"BTC/USD"', "raw_symbol": '"XBT/USD"',
         "timestamp": str(NOW_NS), "recv_timestamp": str(NOW_NS + 1000), "bid": "100.5",
         "ask": "100.75", "bid_size": "1.5", "ask_size": "2", "price": "100.6",
         "volume_24h": "1234.5", "sequence": "42"}


@st.composite
def ticker_message(draw) -> bytes:
    """A ticker JSON object whose fields are drawn from the tricky values above."""
    members = []
    for name, good in _GOOD.items():
        choice = draw(st.integers(0, 9))
        if choice == 0:
            continue  # absent
        value = draw(_field_values(name)) if choice <= 3 else good
        key = _NAMES[name] if name in _NAMES and draw(st.booleans()) else name
        members.append(f'"{key}": {value}')
        if draw(st.integers(0, 30)) == 0:  # a field given twice
            members.append(f'"{name}": {draw(_field_values(name))}')
    if draw(st.booleans()):
        members.insert(draw(st.integers(0, len(members))), '"extra": {"a": [1, "x", null]}')
    return ("{" + ", ".join(members) + "}").encode("utf-8", "surrogateescape")


@settings(max_examples=300, deadline=None)
@given(st.lists(ticker_message(), min_size=1, max_size=12),
       st.sampled_from([RecordRules(), RecordRules(None, 60.0), RecordRules(None, None)]))
def test_native_and_fallback_agree_on_every_record_and_every_rejection(values, rules):
    ref = [NOW_NS] * len(values)
    import numpy as np

    got = [JsonBatchDecoder(TICKER_SCHEMA, use_native=native, rules=rules).decode(
        values, np.asarray(ref, dtype=np.int64)) for native in (True, False)]
    native, fallback = got
    assert [i for i, _ in native.bad] == [i for i, _ in fallback.bad], (values, native.bad,
                                                                         fallback.bad)
    assert native.batch.equals(fallback.batch), (values,)
    # what passed honours every rule
    t = native.batch
    for name in ("bid", "ask", "price"):
        v = [x for x in t.column(name).to_pylist() if x is not None]
        assert all(np.isfinite(x) and x > 0 for x in v)
    for name in ("bid_size", "ask_size", "volume_24h"):
        v = [x for x in t.column(name).to_pylist() if x is not None]
        assert all(np.isfinite(x) and x >= 0 for x in v)
    for name in ("exchange", "symbol", "raw_symbol"):
        assert not any(any(ord(c) < 0x20 or 0x7f <= ord(c) <= 0x9f for c in s)
                       for s in t.column(name).to_pylist())
    if rules.max_ahead_s is not None:
        ts = t.column("timestamp").cast(pa.int64()).to_pylist()
        assert all(x <= NOW_NS + 60 * 10**9 for x in ts)
        if rules.max_age_s is not None:
            assert all(x >= NOW_NS - DAY_NS for x in ts)
    # every validation reason names the field and its value
    for _, reason in native.bad + fallback.bad:
        assert reason


@pytest.mark.parametrize("native", PATHS)
@pytest.mark.parametrize("member, reason", [
    ('"bid": "nan"', "bid"), ('"bid": 1e999', "bid"), ('"ask": 0', "ask=0.0: not a finite positive price"),
    ('"price": -5', "price=-5.0: not a finite positive price"),
    ('"bid_size": -1', "bid_size=-1.0: not a finite non-negative size"),
    ('"bid": true', "bid"), ('"symbol": "BTC\\u0000"', "symbol='BTC\\x00': contains a control character"),
    (f'"timestamp": {NOW_NS + 61 * 10**9}', "timestamp=1800000061000000000 (2027-01-15T08:01:01Z): 61 s after"),
    (f'"timestamp": {NOW_NS - 2 * DAY_NS}', "172800 s before the message time, outside the timestamp window"),
    ('"timestamp": 32503680000000000000', "timestamp"),
])
def test_invalid_ticker_records_are_rejected_with_field_and_value(native, member, reason):
    good = dict(_GOOD)
    name = member.split('"')[1]
    good.pop(name, None)
    msg = ("{" + ", ".join([f'"{k}": {v}' for k, v in good.items()] + [member]) + "}").encode()
    import numpy as np

    r = JsonBatchDecoder(TICKER_SCHEMA, use_native=native, rules=RecordRules()).decode(
        [msg, ("{" + ", ".join(f'"{k}": {v}' for k, v in _GOOD.items()) + "}").encode()],
        np.asarray([NOW_NS, NOW_NS]))
    assert r.batch.num_rows == 1 and [i for i, _ in r.bad] == [0]
    assert reason in r.bad[0][1]
