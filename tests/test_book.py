"""Order books: the compiled book, the venue appliers and the simulated venue messages.

Real frames: Kraken's ALGO/USD snapshot + update (a live 2024 capture, both checksums as sent),
the Binance combined depth capture (read from the shared samples when present), and Coinbase's
``l2_data`` example from the Advanced Trade websocket-channels page.  Everything else comes from
:mod:`sabot.sim.books`, whose messages are checked against a book rebuilt from them.
"""
from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings, strategies as st

from sabot.book import (
    TOB_SCHEMA, BinanceBook, Book, BookError, BookSet, ChecksumMismatch, CoinbaseBooks, DepthGap,
    KrakenBooks, SequenceGap, StaleSnapshot, crc32, depth_schema,
)
from sabot.book.venues import parse_rfc3339_ns
from sabot.sim.books import (
    BinanceDepthFeed, CoinbaseLevel2Feed, KrakenBookFeed, SimBook, fmt_fixed, kraken_checksum,
)

SAMPLES = Path(__file__).resolve().parents[1] / ".." / "shared" / "exchange_samples"

# Kraken v2, ALGO/USD, captured live 2024-10-03 (numbers at full precision on the wire).
KRAKEN_SNAPSHOT = (
    '{"channel":"book","type":"snapshot","data":[{"symbol":"ALGO/USD","bids":['
    '{"price":0.12291,"qty":27039.62776299},{"price":0.12290,"qty":8136.33288180},'
    '{"price":0.12287,"qty":10984.20817349},{"price":0.12283,"qty":28027.05025639},'
    '{"price":0.12280,"qty":9705.60000000},{"price":0.12279,"qty":15215.53522714},'
    '{"price":0.12275,"qty":4067.00000000},{"price":0.12274,"qty":30639.39949109},'
    '{"price":0.12268,"qty":2531.96119986},{"price":0.12267,"qty":16299.00000000}],"asks":['
    '{"price":0.12307,"qty":600.00000000},{"price":0.12308,"qty":4042.11919517},'
    '{"price":0.12312,"qty":10284.53891000},{"price":0.12314,"qty":16155.08885299},'
    '{"price":0.12315,"qty":5186.05778473},{"price":0.12316,"qty":32828.24000000},'
    '{"price":0.12317,"qty":7751.65718582},{"price":0.12318,"qty":32298.82000000},'
    '{"price":0.12319,"qty":1864.66899600},{"price":0.12322,"qty":4718.99755630}],'
    '"checksum":2375857985}]}'
)
KRAKEN_UPDATE = (
    '{"channel":"book","type":"update","data":[{"symbol":"ALGO/USD","bids":'
    '[{"price":0.12275,"qty":6597.51731160}],"asks":[],"checksum":1100635717,'
    '"timestamp":"2024-10-03T02:46:57.050170Z"}]}'
)

# Kraken's worked example on its WebSocket v2 book-checksum guide (prices and sizes as strings).
KRAKEN_DOC_BIDS = [("45283.5", "0.10000000"), ("45283.4", "1.54582015"), ("45282.1", "0.10000000"),
                   ("45281.0", "0.10000000"), ("45280.3", "1.54592586"), ("45279.0", "0.07990000"),
                   ("45277.6", "0.03310103"), ("45277.5", "0.30000000"), ("45277.3", "1.54602737"),
                   ("45276.6", "0.15445238")]
KRAKEN_DOC_ASKS = [("45285.2", "0.00100000"), ("45286.4", "1.54571953"), ("45286.6", "1.54571109"),
                   ("45289.6", "1.54560911"), ("45290.2", "0.15890660"), ("45291.8", "1.54553491"),
                   ("45294.7", "0.04454749"), ("45296.1", "0.35380000"), ("45297.5", "0.09945542"),
                   ("45299.5", "0.18772827")]
KRAKEN_DOC_CHECKSUM = 3310070434


def _kraken_doc_frame(as_numbers: bool) -> str:
    fmt = (lambda v: v) if as_numbers else (lambda v: f'"{v}"')
    side = lambda levels: ",".join(f'{{"price":{fmt(p)},"qty":{fmt(q)}}}' for p, q in levels)  # noqa: E731
    return ('{"channel":"book","type":"snapshot","data":[{"symbol":"BTC/USD","bids":[%s],"asks":[%s],'
            '"checksum":%d}]}' % (side(KRAKEN_DOC_BIDS), side(KRAKEN_DOC_ASKS), KRAKEN_DOC_CHECKSUM))


# Coinbase Advanced Trade level2 example (websocket-channels page): trailing zeros trimmed.
COINBASE_L2 = json.dumps({
    "channel": "l2_data", "client_id": "", "timestamp": "2023-02-09T20:32:50.714964855Z",
    "sequence_num": 0,
    "events": [{"type": "snapshot", "product_id": "BTC-USD", "updates": [
        {"side": "bid", "event_time": "1970-01-01T00:00:00Z", "price_level": "21921.73",
         "new_quantity": "0.06317902"},
        {"side": "bid", "event_time": "1970-01-01T00:00:00Z", "price_level": "21921.3",
         "new_quantity": "0.02"},
    ]}],
})


def _flip_digit(frame: str, needle: str) -> str:
    """Change the last digit of the first number text ``needle`` (still a valid number)."""
    i = frame.index(needle) + len(needle) - 1
    return frame[:i] + ("1" if frame[i] != "1" else "2") + frame[i + 1:]


# ----------------------------------------------------------------------------- the book
def test_book_levels_bbo_top_and_exact_strings():
    b = Book(2, 8)
    assert math.isnan(b.bbo()[0]) and len(b) == 0
    b.apply_levels("bid", [["100.01", "1.5"], ["99.5", "2"], ["100.00", "0.00000001"]])
    b.apply_levels("ask", [["100.02", "3"], ["101", "4.25"]])
    assert b.bbo() == (100.01, 1.5, 100.02, 3.0)
    assert b.levels("bid") == [("100.01", "1.50000000"), ("100.00", "0.00000001"),
                               ("99.50", "2.00000000")]
    bp, bq, ap, aq = b.top(3)
    assert bp.tolist() == [100.01, 100.0, 99.5] and ap[:2].tolist() == [100.02, 101.0]
    assert math.isnan(ap[2]) and math.isnan(aq[2])
    b.delete("bid", "100.01")
    b.set("ask", "100.02", "0")                  # qty 0 deletes
    b.set("bid", "99.99", "7")
    assert b.bbo() == (100.0, 1e-08, 101.0, 4.25)
    b.delete("bid", 100)                         # numbers are read through their text
    assert b.bbo() == (99.99, 7.0, 101.0, 4.25)
    b.set("bid", "42", "0")                      # deleting an absent level is a no-op
    assert b.bid_levels == 2
    b.clear()
    assert len(b) == 0


def test_book_grows_and_matches_a_dict_reference():
    rng = np.random.default_rng(5)
    b = Book(0, 0)
    ref = {0: {}, 1: {}}
    for _ in range(3000):
        side = int(rng.integers(0, 2))
        price = int(rng.integers(1, 700))
        qty = int(rng.integers(0, 3)) * int(rng.integers(1, 1000))
        b.set_fixed_point(side, price, qty)
        if qty:
            ref[side][price] = qty
        else:
            ref[side].pop(price, None)
    prices, qtys = b.levels_fixed("bid")
    assert list(zip(prices.tolist(), qtys.tolist())) == sorted(ref[0].items(), reverse=True)
    prices, qtys = b.levels_fixed("ask")
    assert list(zip(prices.tolist(), qtys.tolist())) == sorted(ref[1].items())


@pytest.mark.parametrize("price, qty, message", [
    ("1.234", "1", "price '1.234' has more than 2 decimals"),
    ("-1", "1", "price '-1' is not a plain non-negative decimal"),
    ("1e5", "1", "price '1e5' is not a plain"),
    ("1", "abc", "qty 'abc' is not a plain"),
    ("", "1", "price '' is not a plain"),
    ("99999999999999999999", "1", "price '99999999999999999999' is too large"),
])
def test_bad_values_name_field_and_value(price, qty, message):
    b = Book(2, 8)
    with pytest.raises(BookError, match=message):
        b.set("bid", price, qty)
    with pytest.raises(BookError, match="side 'middle'"):
        b.set("middle", "1", "1")
    b.set("ask", "1.2300000", "1")                # extra zero digits are fine
    assert b.levels("ask") == [("1.23", "1.00000000")]


def test_truncate_and_max_depth():
    b = Book(0, 0, max_depth=2)
    b.snapshot([[str(p), "1"] for p in (5, 4, 3)], [[str(p), "1"] for p in (6, 7, 8)])
    assert b.levels("bid") == [("5", "1"), ("4", "1")] and b.ask_levels == 2


# ----------------------------------------------------------------------------- Kraken
def test_kraken_real_capture_parses_value_for_value_and_checksums_verify():
    k = KrakenBooks(depth=10)
    assert k.on_message(KRAKEN_SNAPSHOT, recv_timestamp=7) == ["ALGO/USD"]
    book = k.book("ALGO/USD")
    wire = json.loads(KRAKEN_SNAPSHOT, parse_float=str)["data"][0]
    # the scale comes from the wire digits: price 5 decimals, qty 8
    assert (book.price_decimals, book.qty_decimals) == (5, 8)
    assert book.levels("bid") == [(lv["price"], lv["qty"]) for lv in wire["bids"]]
    assert book.levels("ask") == [(lv["price"], lv["qty"]) for lv in wire["asks"]]
    assert book.checksum() == 2375857985
    assert k.on_message(KRAKEN_UPDATE.encode(), recv_timestamp=8) == ["ALGO/USD"]   # bytes too
    assert book.levels("bid")[6] == ("0.12275", "6597.51731160")
    assert book.checksum() == 1100635717 and k.mismatches == 0
    # the checksum text, built by hand from the wire strings, gives the same CRC (zlib)
    text = "".join(p.replace(".", "").lstrip("0") + q.replace(".", "").lstrip("0")
                   for p, q in book.levels("ask") + book.levels("bid"))
    assert zlib.crc32(text.encode()) == 1100635717 == crc32(text)
    tob = k.books.flush_tob()
    assert tob.num_rows == 1                       # the update did not touch the best levels
    assert tob.column("bid").to_pylist() == [0.12291] and tob.column("ask_size").to_pylist() == [600.0]


@pytest.mark.parametrize("as_numbers", [False, True])
def test_kraken_docs_worked_example_checksum(as_numbers):
    k = KrakenBooks()
    assert k.on_message(_kraken_doc_frame(as_numbers)) == ["BTC/USD"]
    book = k.book("BTC/USD")
    assert (book.price_decimals, book.qty_decimals) == (1, 8)
    assert book.levels("bid") == KRAKEN_DOC_BIDS and book.levels("ask") == KRAKEN_DOC_ASKS
    assert book.checksum() == KRAKEN_DOC_CHECKSUM
    # the guide's first formatted ask: "45285.2" -> "452852", "0.00100000" -> "100000"
    assert book.checksum(1) == zlib.crc32(b"452852100000" + b"45283510000000")
    with pytest.raises(ChecksumMismatch):
        KrakenBooks().on_message(_flip_digit(_kraken_doc_frame(as_numbers), "1.54571109"))


@pytest.mark.parametrize("frame, needle", [
    (KRAKEN_UPDATE, '"qty":6597.51731160'),          # a changed size in the update
    (KRAKEN_UPDATE, '"checksum":1100635717'),       # the sent checksum itself
    (KRAKEN_SNAPSHOT, '"price":0.12319'),            # a price in the snapshot
])
def test_kraken_flipped_digit_is_a_mismatch(frame, needle):
    k = KrakenBooks()
    bad = _flip_digit(frame, needle)
    if frame is KRAKEN_UPDATE:
        k.on_message(KRAKEN_SNAPSHOT)
    with pytest.raises(ChecksumMismatch) as err:
        k.on_message(bad)
    assert err.value.symbol == "ALGO/USD" and k.mismatches == 1
    assert "ALGO/USD" not in k.books                  # dropped until the next snapshot
    assert k.on_message(KRAKEN_UPDATE) == [] and k.skipped == 1
    k.on_message(KRAKEN_SNAPSHOT)                     # resubscribed: in sync again
    assert k.on_message(KRAKEN_UPDATE) == ["ALGO/USD"]


def test_kraken_frames_in_any_key_order_and_with_string_numbers():
    msg = json.loads(KRAKEN_SNAPSHOT, parse_float=str)   # numbers as strings, keys reordered
    item = msg["data"][0]
    reordered = {"data": [{"checksum": item["checksum"], "asks": item["asks"],
                           "bids": [{"qty": lv["qty"], "price": lv["price"]} for lv in item["bids"]],
                           "symbol": item["symbol"]}], "type": "snapshot", "channel": "book"}
    k = KrakenBooks()
    assert k.on_message(json.dumps(reordered, indent=1)) == ["ALGO/USD"]
    assert k.book("ALGO/USD").checksum() == 2375857985


def test_kraken_precision_given_for_reserialised_numbers():
    # A JSON library re-serialising the frame drops trailing zeros; with the pair's precision
    # (instrument channel) the checksum still verifies.
    msg = json.loads(KRAKEN_SNAPSHOT)
    k = KrakenBooks(precision={"ALGO/USD": (5, 8)})
    assert k.on_message(json.dumps(msg)) == ["ALGO/USD"]


@pytest.mark.parametrize("frame, message", [
    ('[1,2]', "not a JSON object"),
    ('{"channel":"book","type":"snapshot","data":[{"bids":[]}]}', "no symbol"),
    ('{"channel":"book","type":"weird","data":[]}', "'snapshot' or 'update'"),
    ('{"channel":"book","type":"update","data":[{"symbol":"X","bids":[{"price":1}]}]}', "bids are malformed"),
    ('{"channel":"book","type":"snapshot","data":[{"symbol":"X","bids":[{"price":"1x","qty":"1"}]}]}',
     "price '1x'"),
    ('{"channel":"book","type":"update","data":[{"symbol":"X","bids":[],"checksum":"abc"}]}',
     "checksum 'abc'"),
    ('{"channel":"book","type":"update","data":[{"symbol":"X","bids":[{"price":1,"qty":', "malformed"),
    ('{"channel":"book","type":"update","data":[{"symbol":"X","bids":[]', "not valid JSON"),
    ('{"data":[{"symbol":"X"}],"type":"update","channel":"book","x":', "not valid JSON"),
])
def test_kraken_malformed_frames_raise_book_error(frame, message):
    with pytest.raises(BookError, match=message):
        KrakenBooks().on_message(frame)


def test_kraken_other_channels_are_ignored():
    k = KrakenBooks()
    assert k.on_message('{"channel":"heartbeat"}') == []
    assert k.on_message('{"channel":"status","type":"update","data":[{"system":"online"}]}') == []
    assert k.on_message('{"method":"subscribe","result":{"channel":"book"},"success":true}') == []


@pytest.mark.parametrize("depth", [10, 25])
def test_kraken_rebuilt_book_equals_the_next_snapshot(depth):
    sim = SimBook(11, levels=40, changes=4)
    feed = KrakenBookFeed(sim, "ETH/USD", depth=depth)
    k = KrakenBooks(depth=depth)
    k.on_message(feed.snapshot())
    for _ in range(400):
        k.on_message(feed.update())
    fresh = KrakenBooks(depth=depth)
    fresh.on_message(feed.snapshot())
    assert k.book("ETH/USD") == fresh.book("ETH/USD")
    assert k.book("ETH/USD").levels("bid") == fresh.book("ETH/USD").levels("bid")
    assert k.book("ETH/USD").bid_levels == depth and k.mismatches == 0
    # and the generator's checksum agrees with an independent zlib computation
    bids, asks = (k.book("ETH/USD").levels_fixed(s) for s in ("bid", "ask"))
    assert k.book("ETH/USD").checksum() == kraken_checksum(
        list(zip(*(a.tolist() for a in asks))), list(zip(*(a.tolist() for a in bids))))


def test_kraken_generator_faults_are_detected():
    feed = KrakenBookFeed(SimBook(3), "BTC/USD")
    k = KrakenBooks()
    k.on_message(feed.snapshot())
    k.on_message(feed.update())
    with pytest.raises(ChecksumMismatch):
        k.on_message(feed.update(bad_checksum=True))
    k.on_message(feed.snapshot())
    with pytest.raises(ChecksumMismatch):          # a lost update leaves the book wrong
        for _ in range(50):
            k.on_message(feed.update(gap=True))


# ----------------------------------------------------------------------------- Coinbase
def test_coinbase_docs_example_value_for_value():
    c = CoinbaseBooks(price_decimals=2)
    assert c.on_message(COINBASE_L2, recv_timestamp=1) == ["BTC-USD"]
    assert c.book("BTC-USD").levels("bid") == [("21921.73", "0.06317902"), ("21921.30", "0.02000000")]
    tob = c.books.flush_tob()
    assert tob.column("timestamp").cast(pa.int64()).to_pylist() == [
        parse_rfc3339_ns("2023-02-09T20:32:50.714964855Z")]
    assert parse_rfc3339_ns("2023-02-09T20:32:50.714964855Z") % 10**9 == 714964855
    assert tob.column("ask").to_pylist() == [None]          # an empty side is null


def test_coinbase_stream_equals_next_snapshot_and_gaps_are_reported():
    counter = [0]
    feeds = [CoinbaseLevel2Feed(SimBook(s), p, counter) for s, p in ((1, "BTC-USD"), (2, "ETH-USD"))]
    c = CoinbaseBooks()
    for f in feeds:
        c.on_message(f.snapshot())
    for i in range(300):
        c.on_message(feeds[i % 2].update())
        if i % 7 == 0:
            c.on_message(feeds[0].heartbeat())     # other channels advance the same sequence
    for f in feeds:
        ref = CoinbaseBooks(check_sequence=False)
        ref.on_message(f.snapshot())
        assert c.book(f.product_id) == ref.book(f.product_id)
        c.last_sequence += 1                       # the snapshot above was sent to ``ref``
    with pytest.raises(SequenceGap) as err:
        c.on_message(feeds[0].update(gap=True))
    assert (err.value.expected, err.value.got) == (counter[0] - 2, counter[0] - 1) and c.gaps == 1
    assert c.on_message(feeds[1].update()) == [] and c.skipped == 1   # books dropped
    c.on_message(feeds[1].snapshot())
    assert c.on_message(feeds[1].update()) == ["ETH-USD"]


@pytest.mark.parametrize("patch, message", [
    ({"side": "ask"}, "side 'ask' is not 'bid' or 'offer'"),
    ({"price_level": "abc"}, "price 'abc'"),
    ({"new_quantity": "-1"}, "qty '-1'"),
])
def test_coinbase_bad_update_names_the_field(patch, message):
    msg = json.loads(COINBASE_L2)
    msg["events"][0]["updates"][0].update(patch)
    with pytest.raises(BookError, match=message):
        CoinbaseBooks().on_message(json.dumps(msg))


# ----------------------------------------------------------------------------- Binance
def _samples(name):
    path = SAMPLES / name
    if not path.exists():
        pytest.skip(f"shared exchange sample {name} not found (optional reference data)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("sample, symbol", [
    ("binance_combined_depth.jsonl", "NKNUSDT"),
    ("binance_combined_depth.jsonl", "LRCBTC"),
    ("binanceus_combined_mixed.jsonl", "COMPUSDT"),
    ("binanceus_combined_mixed.jsonl", "OMGBUSD"),
])
def test_binance_real_capture_is_contiguous_and_parses_value_for_value(sample, symbol):
    frames = [f for f in _samples(sample) if f["data"].get("e") == "depthUpdate" and f["data"]["s"] == symbol]
    assert len(frames) >= 3
    first = frames[0]["data"]
    bb = BinanceBook(symbol)
    for f in frames[:3]:
        bb.on_event(json.dumps(f))                   # buffered: no snapshot yet
    assert bb.needs_snapshot and len(bb.buffer) == 3
    # an empty snapshot that ends just before the capture begins
    applied = bb.on_snapshot({"lastUpdateId": first["U"] - 1, "bids": [], "asks": []})
    assert applied == 3
    for f in frames[3:]:
        assert bb.on_event(json.dumps(f).encode())  # every real event continues the previous
    ref = {"b": {}, "a": {}}
    for f in frames:
        for side in "ba":
            for p, q in f["data"][side]:
                ref[side][p] = q
    for side, name, sign in (("b", "bid", -1), ("a", "ask", 1)):
        want = sorted(((p, q) for p, q in ref[side].items() if float(q)), key=lambda x: sign * float(x[0]))
        got = bb.book.levels(name)
        # exact decimals: the book's strings at its scale are the wire strings, zero-padded
        assert got == [(p + "00", q) for p, q in want]
    assert bb.last_update_id == frames[-1]["data"]["u"]


def test_binance_real_capture_with_a_missing_event_is_a_gap():
    frames = [f for f in _samples("binance_combined_depth.jsonl") if f["data"]["s"] == "NKNUSDT"]
    assert any(float(q) == 0 for f in frames for _, q in f["data"]["a"])   # the capture deletes levels
    bb = BinanceBook("NKNUSDT")
    bb.on_snapshot({"lastUpdateId": frames[0]["data"]["U"] - 1, "bids": [], "asks": []})
    bb.on_event(frames[0])
    with pytest.raises(DepthGap, match="NKNUSDT"):
        bb.on_event(frames[2])
    assert bb.needs_snapshot and bb.gaps == 1 and "NKNUSDT" not in bb.books
    assert [e["U"] for e in bb.buffer] == [frames[2]["data"]["U"]]   # kept for the resync


def test_binance_doc_example_event():
    raw = [line for line in (SAMPLES / "binance_raw_doc_examples.jsonl").read_text().splitlines()
           if "depthUpdate" in line] if SAMPLES.exists() else []
    if not raw:
        pytest.skip("shared Binance documentation examples not found")
    bb = BinanceBook("BNBBTC")
    bb.on_snapshot('{"lastUpdateId":156,"bids":[["0.0024","1"]],"asks":[]}')
    assert bb.on_event(raw[0])
    assert bb.book.levels("bid", 1) == [("0.0024000000", "10.00000000")]
    assert bb.book.levels("ask") == [("0.0026000000", "100.00000000")]


@settings(max_examples=40, deadline=None)
@given(n_events=st.integers(1, 25), start=st.integers(0, 10), snap_at=st.integers(0, 25),
       lag=st.integers(0, 6), dup=st.integers(0, 3), seed=st.integers(0, 10**6))
def test_binance_sync_rules_over_orderings(n_events, start, snap_at, lag, dup, seed):
    """The venue produces ``n_events``; the client sees them from event ``start`` on (buffering),
    fetches a REST snapshot taken before event ``snap_at`` and gets it ``lag`` events after
    both; then ``dup`` already-seen events are replayed.  The book must end equal to the venue's
    book, after one retry when the snapshot is older than the first buffered event."""
    start = min(start, n_events - 1)
    snap_at = min(snap_at, n_events)
    sim = SimBook(seed, levels=15)
    feed = BinanceDepthFeed(sim, "BTCUSDT")
    snapshots, events = [], []
    for i in range(n_events + 1):
        snapshots.append(feed.rest_snapshot())      # the body a GET before event i returns
        if i < n_events:
            events.append(feed.event(combined=bool(i % 2)))
    seen = events[start:]
    deliver_at = min(max(snap_at - start, 0) + lag, len(seen))
    bb = BinanceBook("BTCUSDT")
    for ev in seen[:deliver_at]:
        assert not bb.on_event(ev)                  # buffered until the snapshot
    assert bb.needs_snapshot and len(bb.buffer) == deliver_at
    if snap_at < start and deliver_at:
        with pytest.raises(StaleSnapshot):
            bb.on_snapshot(snapshots[snap_at])
        assert bb.needs_snapshot and len(bb.buffer) == deliver_at   # buffer kept for the retry
        snap_at = start + deliver_at                # fetch again: the current book
    bb.on_snapshot(snapshots[snap_at])
    if snap_at < start:                             # nothing buffered: the first event shows the hole
        with pytest.raises(DepthGap):
            bb.on_event(seen[0])
        assert bb.needs_snapshot and len(bb.buffer) == 1
        bb.on_snapshot(snapshots[start])
        seen, deliver_at = seen[1:], 0
    for ev in seen[:dup] + seen[deliver_at:]:
        bb.on_event(ev)
    want = Book(10, 8)
    want.snapshot([[fmt_fixed(p, 2), fmt_fixed(q, 8)] for p, q in sim.sorted_bids()],
                  [[fmt_fixed(p, 2), fmt_fixed(q, 8)] for p, q in sim.sorted_asks()])
    assert bb.book == want and bb.last_update_id == feed.update_id


@settings(max_examples=20, deadline=None)
@given(lost=st.integers(1, 12), seed=st.integers(0, 10**6))
def test_binance_any_lost_event_is_reported(lost, seed):
    feed = BinanceDepthFeed(SimBook(seed), "BTCUSDT")
    bb = BinanceBook("BTCUSDT")
    bb.on_snapshot(feed.rest_snapshot())
    events = [feed.event() for _ in range(14)]
    del events[lost]
    for ev in events[:lost]:
        bb.on_event(ev)
    with pytest.raises(DepthGap):
        bb.on_event(events[lost])
    assert bb.needs_snapshot


# ----------------------------------------------------------------------------- BookSet output
def _kraken_run(flush_points, n=120):
    feeds = [KrakenBookFeed(SimBook(s, changes=2), sym) for s, sym in ((4, "BTC/USD"), (5, "ETH/USD"))]
    k = KrakenBooks(out_depth=3)
    tob, depth = [], []
    for f in feeds:
        k.on_message(f.snapshot(), recv_timestamp=1)
    for i in range(n):
        k.on_message(feeds[i % 2].update(), recv_timestamp=1000 + i)
        if i in flush_points:
            tob.append(k.books.flush_tob())
            depth.append(k.books.flush_depth())
    tob.append(k.books.flush_tob())
    depth.append(k.books.flush_depth())
    return pa.Table.from_batches(tob), pa.Table.from_batches(depth)


@settings(max_examples=10, deadline=None)
@given(st.sets(st.integers(0, 119), max_size=15))
def test_bookset_output_does_not_depend_on_flush_points(points):
    tob, depth = _kraken_run(points)
    tob1, depth1 = _kraken_run(set())
    assert tob.equals(tob1) and depth.equals(depth1)


def test_bookset_rows_only_on_change_with_schema():
    tob, depth = _kraken_run(set())
    assert tob.schema == TOB_SCHEMA and depth.schema == depth_schema(3)
    df = tob.to_pandas()
    for _, g in df.groupby("symbol"):
        vals = g[["bid", "bid_size", "ask", "ask_size"]].to_numpy()
        assert (np.abs(np.diff(vals, axis=0)).sum(axis=1) > 0).all()   # each row is a change
    d = depth.to_pandas()
    for _, g in d.groupby("symbol"):
        vals = g.drop(columns=["exchange", "symbol", "timestamp", "recv_timestamp"]).to_numpy()
        assert (np.abs(np.diff(vals, axis=0)).sum(axis=1) > 0).all()
    assert len(d) > len(df) > 0
    assert (d["bid_price_1"] > d["bid_price_2"]).all() and (d["ask_price_1"] < d["ask_price_2"]).all()
    assert (d["recv_timestamp"].astype("int64").iloc[2:] >= 1000).all()


def test_bookset_direct_use():
    bs = BookSet("test", depth=2, price_decimals=2, qty_decimals=2)
    bs.book("X").snapshot([["1.00", "1"]], [])
    assert bs.emit("X", 5, 6) == 3
    assert bs.emit("X", 7, 8) == 0                 # nothing changed
    bs.book("X").set("ask", "1.10", "2")
    assert bs.emit("X", 9, 9) == 3
    d = bs.flush_depth()
    assert d.column("ask_price_1").to_pylist() == [None, 1.1]
    assert d.column("bid_price_2").null_count == 2
    assert bs.pending == (2, 0)
    with pytest.raises(BookError, match="depth 0"):
        BookSet("x", depth=0)


def test_a_bad_value_drops_the_half_applied_book():
    k = KrakenBooks()
    k.on_message(KRAKEN_SNAPSHOT)
    bad = KRAKEN_UPDATE.replace('"asks":[]', '"asks":[{"price":0.123456,"qty":1}]')
    with pytest.raises(BookError, match="price '0.123456' has more than 5 decimals"):
        k.on_message(bad)
    assert "ALGO/USD" not in k.books and k.on_message(KRAKEN_UPDATE) == []

    c = CoinbaseBooks()
    c.on_message(COINBASE_L2)
    upd = json.loads(COINBASE_L2)
    upd["sequence_num"] = 1
    upd["events"][0]["type"] = "update"
    upd["events"][0]["updates"][1]["new_quantity"] = "1e-3"
    with pytest.raises(BookError, match="qty '1e-3'"):
        c.on_message(json.dumps(upd))
    assert "BTC-USD" not in c.books

    bb = BinanceBook("BNBBTC")
    bb.on_snapshot({"lastUpdateId": 1, "bids": [["1.0", "1"]], "asks": []})
    with pytest.raises(BookError, match="price 'x'"):
        bb.on_event({"e": "depthUpdate", "E": 1, "s": "BNBBTC", "U": 2, "u": 2, "b": [["x", "1"]], "a": []})
    assert bb.needs_snapshot and "BNBBTC" not in bb.books
    with pytest.raises(BookError, match="U 5 > u 4"):
        bb.on_event({"e": "depthUpdate", "U": 5, "u": 4})
    with pytest.raises(BookError, match="lastUpdateId 'x'"):
        bb.on_snapshot({"lastUpdateId": "x"})


def test_crc32_and_checksum_match_zlib_at_every_length():
    rng = np.random.default_rng(9)
    for n in range(0, 80):
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert crc32(data) == zlib.crc32(data), n
    book = Book(0, 0)
    for i in range(1, 60):                  # long digit strings, more levels than one buffer
        book.set_fixed_point("bid", i * 137, i * 7919)
        book.set_fixed_point("ask", 10**6 + i * 3, 10**15 + i)
    asks = list(zip(*(a.tolist() for a in book.levels_fixed("ask"))))
    bids = list(zip(*(a.tolist() for a in book.levels_fixed("bid"))))
    for levels in (1, 10, 40, 60):
        text = "".join(f"{p}{q}" for p, q in asks[:levels] + bids[:levels])
        assert book.checksum(levels) == zlib.crc32(text.encode()), levels


def test_binance_stale_snapshot_fault_from_the_generator():
    feed = BinanceDepthFeed(SimBook(8), "ETHUSDT", history=5)
    for _ in range(4):
        feed.event()                               # before the client connected
    bb = BinanceBook("ETHUSDT")
    for _ in range(2):
        bb.on_event(feed.event())
    with pytest.raises(StaleSnapshot, match="ETHUSDT"):
        bb.on_snapshot(feed.stale_snapshot(behind=4))   # older than the first buffered event
    assert bb.on_snapshot(feed.stale_snapshot(behind=2)) == 2   # just in time: replays both
    with pytest.raises(ValueError, match="behind 6"):
        feed.stale_snapshot(behind=6)


def test_books_at_different_scales_compare_by_value():
    a, b = Book(2, 8), Book(4, 3)
    a.snapshot([["1.5", "2"]], [["1.75", "0.5"]])
    b.snapshot([["1.5000", "2.000"]], [["1.75", "0.5"]])
    assert a == b
    b.set("ask", "1.7501", "1")
    assert a != b
