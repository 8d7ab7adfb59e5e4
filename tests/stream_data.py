"""Synthetic normalised ticker records for the Stream tests (spec §1 columns)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from sabot.schema import TICKER_SCHEMA

SYMBOLS = ["BTC/USD", "ETH/USD", "SOL/USD", "XRP/USD", "ADA/USD", "DOGE/USD", "LTC/USD", "DOT/USD"]
RAW = {"coinbase": lambda s: s.replace("/", "-"), "kraken": lambda s: s,
       "binance": lambda s: s.replace("/", "") + "T"}
EXCHANGES = ["coinbase", "kraken", "binance"]
T0 = 1_700_000_000_000_000_000


def ticker_table(exchange: str, n: int, seed: int = 0, step_ns: int = 1_000_000,
                 offset_ns: int = 0, symbols=SYMBOLS) -> pa.Table:
    """``n`` records in time order, symbols interleaved at random, distinct timestamps."""
    rng = np.random.default_rng(seed)
    sym_idx = rng.integers(0, len(symbols), n)
    base = 100.0 * (1 + np.arange(len(symbols)))[sym_idx]
    mid = base * np.exp(np.cumsum(rng.normal(0, 1e-4, n)))
    half = base * rng.uniform(1e-5, 5e-4, n)
    ts = T0 + offset_ns + np.arange(n, dtype=np.int64) * step_ns
    price = np.where(rng.random(n) < 0.2, np.nan, mid)
    syms = [symbols[i] for i in sym_idx]
    cols = {
        "exchange": pa.array([exchange] * n),
        "symbol": pa.array(syms),
        "raw_symbol": pa.array([RAW[exchange](s) for s in syms]),
        "timestamp": pa.array(ts).cast(pa.timestamp("ns", tz="UTC")),
        "recv_timestamp": pa.array(ts + 2_500).cast(pa.timestamp("ns", tz="UTC")),
        "bid": pa.array(mid - half),
        "ask": pa.array(mid + half),
        "bid_size": pa.array(rng.uniform(0.1, 5, n)),
        "ask_size": pa.array(rng.uniform(0.1, 5, n)),
        "price": pa.array(price, from_pandas=True),
        "volume_24h": pa.array(rng.uniform(1e3, 1e4, n)),
        "sequence": pa.array(np.arange(n, dtype=np.int64)),
        "time_source": pa.array(["receive" if exchange == "binance" else "exchange"] * n),
    }
    return pa.Table.from_pydict(cols, schema=TICKER_SCHEMA)


def json_values(table: pa.Table) -> list:
    """The Kafka JSON messages for ``table`` written independently of sabot (orjson per row)."""
    import orjson

    d = {}
    for name in table.column_names:
        col = table.column(name)
        if pa.types.is_timestamp(col.type):
            col = col.cast(pa.int64())
        d[name] = col.to_pylist()
    names = list(d)
    return [orjson.dumps(dict(zip(names, row))) for row in zip(*d.values())]


def produce(bootstrap: str, topic: str, table: pa.Table) -> None:
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5,
                  "queue.buffering.max.messages": 1_000_000})
    for key, value in zip(table.column("symbol").to_pylist(), json_values(table)):
        p.produce(topic, key=key.encode(), value=value)
        p.poll(0)
    assert p.flush(30) == 0


def exchange_rounded(table: pa.Table) -> pa.Table:
    """Prices to the cent and sizes to 1e-8, as exchanges publish them (shorter decimals)."""
    import pyarrow.compute as pc

    for name, digits in (("bid", 2), ("ask", 2), ("price", 2), ("bid_size", 8),
                         ("ask_size", 8), ("volume_24h", 8)):
        table = table.set_column(table.schema.get_field_index(name), name,
                                 pc.round(table[name], digits))
    return table
