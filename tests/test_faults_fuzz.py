"""Fuzz the three exchange parsers and the Kafka JSON decoder with malformed messages.

Each test sees 10,000 messages: hypothesis draws 100 seeds (max_examples=100) and each seed
generates 100 mutations of a well-formed message (values replaced by junk of every JSON type,
keys deleted, bytes truncated or flipped, non-object roots).  Contract: no exception escapes,
every message is accounted for exactly once, and records that come out can be written by the
sinks (they convert to the exchange's Arrow schema)."""
from __future__ import annotations

import copy
import random

import numpy as np
import orjson
import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sabot.api._decode import JsonBatchDecoder, RecordRules
from sabot.collectors.base import KIND_NAMES, Parsed
from sabot.collectors.binance import BinanceCollector
from sabot.collectors.coinbase import CoinbaseCollector
from sabot.collectors.kraken import KrakenCollector
from sabot.schema import TICKER_SCHEMA, exchange_schema

from stream_data import json_values, ticker_table

PER_SEED = 100
SEEDS = settings(max_examples=100, deadline=None, derandomize=True,
                 suppress_health_check=list(HealthCheck))

JUNK = [None, True, False, 0, -1, 2 ** 63, 2 ** 64 - 1, -(2 ** 63), 1e308, -0.0, 3.5, "", "abc",
        "NaN", "inf", "-Infinity", "1e999", "0x1F", "١٢٣", " 12 ", "12,5", "2026-13-45T99:99:99Z",
        "2026-09-30T02:39:53.1234567891Z", "x" * 300, [], {}, [1, 2], {"a": 1}, [{}], "\u0000"]

# Well-formed messages, written from each exchange's public documentation (exchanges.md).
COINBASE = {"channel": "ticker", "client_id": "", "timestamp": "2026-09-30T02:39:53.788655130Z",
            "sequence_num": 7,
            "events": [{"type": "update", "tickers": [{
                "type": "ticker", "product_id": "BTC-USD", "price": "65000.01",
                "volume_24_h": "1234.5", "best_bid": "64999.99", "best_bid_quantity": "0.5",
                "best_ask": "65000.02", "best_ask_quantity": "0.25"}]}]}
KRAKEN = {"channel": "ticker", "type": "update", "data": [{
    "symbol": "BTC/USD", "bid": 64999.9, "bid_qty": 0.5, "ask": 65000.1, "ask_qty": 1.25,
    "last": 65000.0, "volume": 1500.2, "vwap": 64800.0, "low": 64000.0, "high": 65500.0,
    "change": 100.0, "change_pct": 0.15, "timestamp": "2026-09-30T02:39:53.788655Z"}]}
BINANCE_BOOK = {"stream": "btcusdt@bookTicker", "data": {
    "u": 400900217, "s": "BTCUSDT", "b": "64999.99", "B": "0.5", "a": "65000.01", "A": "0.25"}}
BINANCE_TICKER = {"stream": "btcusdt@ticker", "data": {
    "e": "24hrTicker", "E": 1700000000000, "s": "BTCUSDT", "c": "65000.00", "v": "1500.5",
    "P": "1.25", "n": 12345}}


def _paths(obj, prefix=()):
    """Every (container path, key) inside a JSON value."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield prefix + (k,)
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield prefix + (i,)
            yield from _paths(v, prefix + (i,))


def mutate(template: dict, rng: random.Random) -> bytes:
    """One malformed (or occasionally still valid) variant of ``template``."""
    how = rng.random()
    if how < 0.08:
        return orjson.dumps(rng.choice(JUNK))  # a root that is not an object
    msg = copy.deepcopy(template)
    paths = list(_paths(msg))
    for _ in range(rng.randint(1, 3)):
        path = rng.choice(paths)
        parent = msg
        try:
            for p in path[:-1]:
                parent = parent[p]
            key = path[-1]
            if not (isinstance(parent, dict) and isinstance(key, str)
                    or isinstance(parent, list) and isinstance(key, int) and key < len(parent)):
                continue  # an earlier mutation replaced the container
            if rng.random() < 0.3 and isinstance(parent, dict):
                parent.pop(key, None)
            else:
                parent[key] = copy.deepcopy(rng.choice(JUNK))
        except (KeyError, IndexError, TypeError):
            pass  # an earlier mutation removed or replaced the container
    raw = orjson.dumps(msg)
    if how > 0.9:
        cut = rng.randrange(len(raw))
        raw = raw[:cut] if rng.random() < 0.5 else raw[:cut] + bytes([rng.randrange(256)]) + raw[cut + 1:]
    return raw


def check_parser(collector, templates, seed: int) -> None:
    rng = random.Random(seed)
    schema = exchange_schema(collector.name)
    counts = [0] * len(KIND_NAMES)
    records = []
    for i in range(PER_SEED):
        raw = mutate(rng.choice(templates), rng)
        try:
            result = collector.parse(raw, 1_700_000_000_000_000_000 + i)
        except Exception as exc:  # the contract under test
            raise AssertionError(f"{collector.name} parser raised {exc!r} on {raw!r}") from exc
        assert isinstance(result, Parsed) and 0 <= result.kind < len(KIND_NAMES), (raw, result)
        counts[result.kind] += 1
        for rec in result.records:
            try:  # what both sinks do with a record: Arrow conversion (Parquet) / JSON (Kafka)
                pa.Table.from_pylist([rec], schema=schema)
                orjson.dumps(rec)
            except Exception as exc:
                raise AssertionError(f"{collector.name}: record from {raw!r} cannot be written: "
                                     f"{exc!r}: {rec}") from exc
            records.append(rec)
    assert sum(counts) == PER_SEED


@SEEDS
@given(st.integers(0, 2 ** 32 - 1))
def test_coinbase_parser_survives_malformed_messages(seed):
    check_parser(CoinbaseCollector(["BTC-USD"]), [COINBASE], seed)


@SEEDS
@given(st.integers(0, 2 ** 32 - 1))
def test_kraken_parser_survives_malformed_messages(seed):
    check_parser(KrakenCollector(["BTC/USD"]), [KRAKEN], seed)


@SEEDS
@given(st.integers(0, 2 ** 32 - 1))
def test_binance_parser_survives_malformed_messages(seed):
    check_parser(BinanceCollector(["BTCUSDT"]), [BINANCE_BOOK, BINANCE_TICKER], seed)


_TICKER_MESSAGES = [orjson.loads(v) for v in json_values(ticker_table("kraken", 20, seed=3))]
_DECODER = JsonBatchDecoder(TICKER_SCHEMA)


@SEEDS
@given(st.integers(0, 2 ** 32 - 1))
def test_json_decoder_counts_every_malformed_message(seed):
    rng = random.Random(seed)
    values = [mutate(rng.choice(_TICKER_MESSAGES), rng) if rng.random() < 0.7
              else orjson.dumps(rng.choice(_TICKER_MESSAGES)) for _ in range(PER_SEED)]
    if rng.random() < 0.1:
        values[rng.randrange(PER_SEED)] = None  # a tombstone / empty value
    result = _DECODER.decode(values)
    bad = [i for i, _ in result.bad]
    assert len(set(bad)) == len(bad) and all(0 <= i < PER_SEED for i in bad)
    assert result.batch.num_rows + len(bad) == PER_SEED
    assert all(reason for _, reason in result.bad)
    # the rows that decoded are the good messages, in order (sequence identifies them when intact)
    good = [v for i, v in enumerate(values) if i not in set(bad)]
    assert result.batch.num_rows == len(good)
    assert result.batch.schema.equals(TICKER_SCHEMA)


def test_json_decoder_null_root_after_invalid_utf8_is_counted_not_a_crash():
    """Regression: invalid UTF-8 sends a batch to the Arrow reader, which crashed (SIGSEGV) on
    a leading ``null`` root and read later ``null`` roots as rows."""
    ok = orjson.dumps(_TICKER_MESSAGES[0])
    values = [b"null", ok.replace(b'"kraken"', b'"kr\xffken"'), ok, b" null", b"[]"]
    result = _DECODER.decode(values)
    assert sorted(i for i, _ in result.bad) == [0, 1, 3, 4]
    assert result.batch.num_rows == 1
    assert result.batch.column("sequence").to_pylist() == [_TICKER_MESSAGES[0]["sequence"]]


_RULES = RecordRules()
_BOTH = [(JsonBatchDecoder(TICKER_SCHEMA, use_native=True, rules=r),
          JsonBatchDecoder(TICKER_SCHEMA, use_native=False, rules=r)) for r in (None, _RULES)]


@SEEDS
@given(st.integers(0, 2 ** 32 - 1))
def test_native_and_fallback_decoders_agree_on_malformed_messages(seed):
    """The same mutated bytes (truncations, stray bytes, invalid UTF-8 anywhere, wrong types,
    overflowing numbers) give both decoders the same records and the same rejected set."""
    rng = random.Random(seed)
    values = [mutate(rng.choice(_TICKER_MESSAGES), rng) if rng.random() < 0.7
              else orjson.dumps(rng.choice(_TICKER_MESSAGES)) for _ in range(PER_SEED)]
    ref = np.full(PER_SEED, 1_700_000_000_000_000_000, dtype=np.int64)
    for native, fallback in _BOTH:
        a, b = native.decode(values, ref), fallback.decode(values, ref)
        assert [i for i, _ in a.bad] == [i for i, _ in b.bad], (a.bad, b.bad)
        assert a.batch.equals(b.batch)
