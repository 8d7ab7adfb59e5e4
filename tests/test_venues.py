"""The venue registry: each built-in venue is one module, and every venue list reads the registry.

The fourth venue (``tests/venue_fixture.py``) is defined outside the package: registering it is
all it takes for the broker's topics, the simulators, the collectors, the schemas, the ASOF
join's exchange names and the shared connection loop to pick it up.
"""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import sabot.venues as venues_pkg
from sabot.venues import UnknownVenueError, get_venue, register, unregister, venue_names

from venue_fixture import NAME, VENUE, BitstampCollector, BitstampSim

REPO = Path(__file__).resolve().parents[1]
BUILTINS = ("coinbase", "kraken", "binance")


@pytest.fixture
def fourth_venue():
    """The test venue registered for one test (and gone afterwards, whatever happens)."""
    register(VENUE)
    try:
        yield VENUE
    finally:
        unregister(NAME)


# ---- the built-in venues -------------------------------------------------------------------

def test_builtin_venues_are_one_module_each_in_registration_order():
    assert venue_names()[:3] == BUILTINS
    for name in BUILTINS:
        module = __import__(f"sabot.venues.{name}", fromlist=["VENUE"])
        venue = get_venue(name)
        assert module.VENUE is venue
        # the collector class lives in the venue module; the old import path is a re-export
        assert venue.collector_class.__module__ == f"sabot.venues.{name}"
        shim = __import__(f"sabot.collectors.{name}", fromlist=["x"])
        assert getattr(shim, venue.collector_class.__name__) is venue.collector_class
        # its simulator writer sits in sabot/sim/<venue>.py
        assert venue.simulator_class.__module__ == f"sabot.sim.{name}"
        assert venue.simulator_class.exchange == name
    assert [get_venue(n).default_fee_bps for n in BUILTINS] == [6.0, 16.0, 10.0]


def test_public_import_paths_keep_working():
    from sabot.collectors import COLLECTORS, BinanceCollector, CoinbaseCollector, KrakenCollector
    from sabot.schema import EXTRA_FIELDS, TICKER_SCHEMA, exchange_schema
    from sabot.sim import SIMULATORS, BinanceSim, CoinbaseSim, KrakenSim
    from sabot.sim.servers import CoinbaseSim as CoinbaseSim2
    from sabot.symbols import normalize_symbol

    assert dict(COLLECTORS) == {"coinbase": CoinbaseCollector, "kraken": KrakenCollector,
                                "binance": BinanceCollector}
    assert dict(SIMULATORS) == {"coinbase": CoinbaseSim, "kraken": KrakenSim, "binance": BinanceSim}
    assert CoinbaseSim2 is CoinbaseSim
    assert [f.name for f in EXTRA_FIELDS["coinbase"]] == ["product_id", "parent_timestamp"]
    assert exchange_schema("kraken").names == TICKER_SCHEMA.names + ["vwap", "change_pct"]
    assert normalize_symbol("XXBTZUSD", "kraken") == "BTC/USD"
    with pytest.raises(ValueError, match="unknown exchange 'bitmex'; known: binance, coinbase, kraken"):
        exchange_schema("bitmex")
    with pytest.raises(KeyError, match="unknown venue 'bitmex'"):
        COLLECTORS["bitmex"]
    import sabot.collectors
    import sabot.sim

    assert {"CoinbaseCollector", "KrakenCollector", "BinanceCollector", "COLLECTORS"} <= set(sabot.collectors.__all__)
    assert {"CoinbaseSim", "KrakenSim", "BinanceSim", "SIMULATORS"} <= set(sabot.sim.__all__)
    with pytest.raises(AttributeError, match="has no attribute 'NoSuchSim'"):
        sabot.sim.NoSuchSim


@pytest.mark.parametrize("name,canonical,spelled", [
    ("coinbase", "BTC/USD", "BTC-USD"), ("coinbase", "ETH/EUR", "ETH-EUR"),
    ("kraken", "BTC/USD", "BTC/USD"), ("kraken", "SOL/EUR", "SOL/EUR"),
    ("binance", "BTC/USDT", "BTCUSDT"), ("binance", "ETH/BTC", "ETHBTC"),
])
def test_symbol_spelling_both_ways(name, canonical, spelled):
    venue = get_venue(name)
    assert venue.to_exchange_symbol(canonical) == spelled
    assert venue.to_canonical_symbol(spelled) == canonical
    assert venue.to_exchange_symbol(spelled) == spelled  # already the venue's spelling
    from sabot.sim.quotes import to_raw_symbol

    assert to_raw_symbol(canonical, name) == spelled


def test_kraken_rest_spelling_belongs_to_the_kraken_module():
    kraken = get_venue("kraken").collector_class
    assert kraken.split_exchange_symbol("XXBTZUSD") == ("XBT", "USD")
    assert kraken.split_exchange_symbol("BTCUSDT") is None
    assert get_venue("kraken").to_canonical_symbol("XETHZEUR") == "ETH/EUR"
    # the same text means nothing special to another venue
    assert get_venue("coinbase").collector_class.split_exchange_symbol("XXBTZUSD") is None
    from sabot.fintech.symbols import normalize_symbols
    import pyarrow as pa

    batch = pa.record_batch({"symbol": pa.array(["XXBTZUSD", "XETHZEUR"])})
    assert normalize_symbols(batch, "kraken").column("symbol").to_pylist() == ["BTC/USD", "ETH/EUR"]


def test_importing_the_registry_is_cheap():
    """No simulator (websockets server) is imported with the registry, and the broker module
    does not import the registry at all until its topics are used."""
    code = ("import sys, sabot.venues, sabot.collectors; "
            "bad = [m for m in ('websockets', 'sabot.sim', 'sabot.sim.servers') if m in sys.modules]; "
            "assert not bad, bad; "
            "import sabot.broker")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=60)
    code = ("import sys, sabot.broker; assert 'sabot.venues' not in sys.modules and 'pyarrow' not in sys.modules; "
            "assert list(sabot.broker.TICKER_TOPICS) == ['coinbase-ticker', 'kraken-ticker', 'binance-ticker']")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=60)


# ---- a fourth venue, defined in the tests ----------------------------------------------------

def test_fourth_venue_appears_in_every_list(fourth_venue):
    from sabot.broker import TICKER_TOPICS
    from sabot.collectors import COLLECTORS
    from sabot.fintech.asof import KNOWN_EXCHANGES
    from sabot.schema import EXTRA_FIELDS, TICKER_SCHEMA, exchange_schema
    from sabot.sim import SIMULATORS
    from sabot.sim.__main__ import build_parser
    from sabot.sim.quotes import EXCHANGE_PROFILES, to_raw_symbol
    from sabot.symbols import normalize_symbol

    assert venue_names() == BUILTINS + (NAME,)
    assert list(TICKER_TOPICS) == ["coinbase-ticker", "kraken-ticker", "binance-ticker", "bitstamp-ticker"]
    assert COLLECTORS[NAME] is BitstampCollector
    assert SIMULATORS[NAME] is BitstampSim
    assert [f.name for f in EXTRA_FIELDS[NAME]] == ["book_depth"]
    assert exchange_schema(NAME).names == TICKER_SCHEMA.names + ["book_depth"]
    assert NAME in KNOWN_EXCHANGES
    assert EXCHANGE_PROFILES[NAME]["decimals"] == 0
    assert venues_pkg.default_fees()[NAME] == 30.0
    assert to_raw_symbol("ETH/USD", NAME) == "ethusd"
    assert normalize_symbol("btcusd", NAME) == "BTC/USD"
    a = build_parser().parse_args([NAME, "--port", "0"])
    assert a.exchange == NAME
    import sabot.collectors
    import sabot.sim

    assert sabot.collectors.BitstampCollector is BitstampCollector
    assert "BitstampSim" in sabot.sim.__all__ and sabot.sim.BitstampSim is BitstampSim


def test_fourth_venue_is_gone_once_unregistered(fourth_venue):
    from sabot.broker import TICKER_TOPICS
    from sabot.collectors import COLLECTORS
    from sabot.fintech.asof import KNOWN_EXCHANGES
    from sabot.schema import exchange_schema

    assert "bitstamp-ticker" in TICKER_TOPICS
    unregister(NAME)
    assert "bitstamp-ticker" not in TICKER_TOPICS and NAME not in COLLECTORS and NAME not in KNOWN_EXCHANGES
    with pytest.raises(ValueError, match="unknown exchange 'bitstamp'"):
        exchange_schema(NAME)
    with pytest.raises(UnknownVenueError):
        BitstampSim()


def test_asof_join_knows_the_fourth_venue_prefix(fourth_venue):
    """A column already carrying a registered venue's prefix is not prefixed again."""
    import pyarrow as pa

    from sabot.fintech.asof import asof_join

    left = pa.table({"timestamp": pa.array([1, 2, 3], pa.int64()), "exchange": ["kraken"] * 3,
                     "bid": [1.0, 2.0, 3.0], "bitstamp_bid": [9.0, 9.0, 9.0]})
    right = pa.table({"timestamp": pa.array([1, 2], pa.int64()), "exchange": ["coinbase"] * 2,
                      "bid": [5.0, 6.0]})
    out = asof_join(left, right, on="timestamp")
    assert "bitstamp_bid" in out.column_names and "kraken_bitstamp_bid" not in out.column_names
    assert {"kraken_bid", "coinbase_bid"} <= set(out.column_names), out.column_names


def test_fourth_venue_extra_column_is_validated_by_the_shared_loop(fourth_venue):
    """The loop's record validation checks the extra columns a venue declares, naming the value."""
    from sabot.collectors.connection import ConnectionSettings, Stats, _Edge

    edge = _Edge(BitstampCollector(), ConnectionSettings(), Stats(), None)
    rec = {"raw_symbol": "btcusd", "timestamp": time.time_ns(), "bid": 1.0, "ask": 2.0, "bid_size": 1.0,
           "ask_size": 1.0, "price": None, "volume_24h": None, "book_depth": 2}
    assert edge.validator.check(rec) is None
    assert edge.validator.check({**rec, "book_depth": -1}) == ("negative", "book_depth=-1 is negative")
    assert edge.validator.check({**rec, "book_depth": "deep"}) == ("not_a_number", "book_depth='deep' is not a number")


def test_venue_field_checks_are_checked_when_declared():
    import pyarrow as pa

    from sabot.venues import Venue

    with pytest.raises(ValueError, match="field_checks names 'vwap', which is not one of its extra_fields"):
        Venue(name="x", collector=BitstampCollector, simulator=BitstampSim, default_fee_bps=1.0,
              field_checks={"vwap": "positive"})
    with pytest.raises(ValueError, match=r"field_checks\['depth'\]='big'; expected one of positive"):
        Venue(name="x", collector=BitstampCollector, simulator=BitstampSim, default_fee_bps=1.0,
              extra_fields=(pa.field("depth", pa.int64()),), field_checks={"depth": "big"})


def _run_loop(collector, sinks, sim, expect: int, timeout: float = 60.0, until=None):
    """The shared connection loop against ``sim`` until it accounted for ``expect`` data frames
    (and ``until(stats)`` holds, when given)."""
    from sabot.collectors.connection import ConnectionSettings, Stats, run_collector

    stats = Stats()
    settings = ConnectionSettings(url=sim.url, backoff_base=0.02, backoff_max=0.1, status_interval=3600)

    async def main() -> None:
        stop = asyncio.Event()
        loop_task = asyncio.create_task(run_collector(collector, sinks, settings, stop, stats))
        deadline = time.monotonic() + timeout
        while (stats.records + stats.rejected < expect or (until and not until(stats))) \
                and time.monotonic() < deadline and not loop_task.done():
            await asyncio.sleep(0.02)
        stop.set()
        await loop_task

    asyncio.run(main())
    for s in sinks:
        s.close()
    return stats


def test_fourth_venue_through_the_connection_loop_to_parquet(fourth_venue, tmp_path):
    from sabot.collectors.sinks import ParquetSink
    from sabot.schema import exchange_schema

    out = tmp_path / "bitstamp.parquet"
    n = 240
    with BitstampSim(rate=0, count=n, keep_sent=True, corrupt_every=10) as sim:
        stats = _run_loop(BitstampCollector(), [ParquetSink(out, NAME, row_group_size=50)], sim, n)
        assert sim.sent_count == n
        corrupt = set(sim.corrupt_texts)
        sent = [text for text, is_data in sim.sent if is_data]
    assert stats.records + stats.rejected == n and stats.rejected == n // 10, stats.line()
    assert stats.skipped == 0 and stats.errors == 0
    assert set(stats.rejected_by) <= {"not_a_number", "non_finite", "non_positive", "negative",
                                      "unsubscribed_symbol"}
    table = pq.read_table(out)
    assert table.schema == exchange_schema(NAME)
    rows = table.set_column(3, "timestamp", table.column("timestamp").cast("int64")).to_pylist()
    assert len(rows) == n - n // 10
    # each stored row is its frame read independently (stdlib json, float())
    expected = []
    for text in sent:
        if text in corrupt:
            continue
        msg = json.loads(text)
        d = msg["data"]
        expected.append((msg["channel"][len("order_book_"):], float(d["bids"][0][0]), float(d["asks"][0][0]),
                         float(d["bids"][0][1]), float(d["asks"][0][1]), int(d["microtimestamp"]) * 1000,
                         len(d["bids"])))
    got = [(r["raw_symbol"], r["bid"], r["ask"], r["bid_size"], r["ask_size"], r["timestamp"], r["book_depth"])
           for r in rows]
    assert got == expected
    # streaming starts with the first acknowledged symbol, so ETH may or may not have had a turn
    assert all(r["symbol"] == {"btcusd": "BTC/USD", "ethusd": "ETH/USD"}[r["raw_symbol"]] for r in rows)
    assert {r["exchange"] for r in rows} == {NAME}


def test_fourth_venue_into_its_topic_on_the_embedded_broker(fourth_venue):
    """The broker's default topics include the new venue's; its records arrive there."""
    from confluent_kafka import Consumer
    from confluent_kafka.admin import AdminClient

    from sabot.broker import EmbeddedBroker
    from sabot.collectors.sinks import KafkaSink
    from sabot.kafka import assign_all, consumer_config

    n = 60
    with EmbeddedBroker(port=0, partitions=1) as broker:  # default topics: every registered venue's
        md = AdminClient({"bootstrap.servers": broker.bootstrap}).list_topics(timeout=10)
        assert VENUE.ticker_topic == "bitstamp-ticker" and VENUE.ticker_topic in md.topics, sorted(md.topics)
        with BitstampSim(rate=0, count=n) as sim:
            sink = KafkaSink(broker.bootstrap, VENUE.ticker_topic)
            stats = _run_loop(BitstampCollector(["btcusd"]), [sink], sim, n)
        assert stats.records == n and sink.delivered == n, (stats.line(), sink.delivered)
        consumer = Consumer(consumer_config(broker.bootstrap, "venue-check", from_beginning=True))
        try:
            assign_all(consumer, VENUE.ticker_topic)
            got, deadline = [], time.monotonic() + 30
            while len(got) < n and time.monotonic() < deadline:
                got += [m for m in consumer.consume(1000, 0.2) if m.error() is None]
        finally:
            consumer.close()
    values = [json.loads(m.value()) for m in got]
    assert len(values) == n
    assert {v["exchange"] for v in values} == {NAME} and {v["symbol"] for v in values} == {"BTC/USD"}
    assert all(v["book_depth"] == 2 for v in values)


def test_fourth_venue_refused_symbol_is_dropped_and_the_rest_streams(fourth_venue, tmp_path):
    """A symbol the venue refuses is reported by the shared loop; the listed one keeps streaming."""
    from sabot.collectors.sinks import ParquetSink

    out = tmp_path / "b.parquet"
    with BitstampSim(rate=0, count=40, listed=["btcusd"]) as sim:
        collector = BitstampCollector(["btcusd", "zzzusd"])
        stats = _run_loop(collector, [ParquetSink(out, NAME)], sim, 40,
                          until=lambda st: st.symbols_rejected)  # the refusal may come last
        assert sim.rejected_symbols == ["zzzusd"]
    assert stats.records == 40 and stats.symbols_rejected == ["zzzusd"] and collector.symbols == ["btcusd"]
    assert pq.read_table(out).num_rows == 40
