"""normalize_symbol: every exchange spelling maps to BASE/QUOTE."""
import pytest
from hypothesis import given, settings, strategies as st

from sabot.symbols import normalize_symbol, split_symbol


@pytest.mark.parametrize(
    "raw, exchange, expected",
    [
        ("BTC-USD", "coinbase", "BTC/USD"),
        ("ETH-USD", "coinbase", "ETH/USD"),
        ("BTC/USD", "kraken", "BTC/USD"),
        ("XBT/USD", "kraken", "BTC/USD"),
        ("XXBTZUSD", "kraken", "BTC/USD"),
        ("XETHZEUR", "kraken", "ETH/EUR"),
        ("BTCUSDT", "binance", "BTC/USDT"),
        ("btcusdt", "binance", "BTC/USDT"),
        ("ethusdt@bookTicker", "binance", "ETH/USDT"),
        ("LRCBTC", "binance", "LRC/BTC"),
        ("NKNUSDT", None, "NKN/USDT"),
        ("ETHFDUSD", None, "ETH/FDUSD"),
        ("BTCUSDC", None, "BTC/USDC"),
        ("DOGE/USD", None, "DOGE/USD"),
    ],
)
def test_spellings(raw, exchange, expected):
    assert normalize_symbol(raw, exchange) == expected


def test_quote_aliases_configurable():
    assert normalize_symbol("BTCUSDT", "binance", quote_aliases={}) == "BTC/USDT"
    assert normalize_symbol("BTC-USDC", quote_aliases={"USDC": "USD"}) == "BTC/USD"


@pytest.mark.parametrize("bad", ["", "BTC", "-USD", "BTC-", "A/B/C", "FOOBAR"])
def test_bad_symbol_raises_naming_value(bad):
    with pytest.raises(ValueError, match="symbol"):
        normalize_symbol(bad)


@settings(max_examples=200, deadline=None)
@given(
    base=st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWYZ0123456789", min_size=2, max_size=6),
    quote=st.sampled_from(["USD", "EUR", "GBP", "USDC"]),
    sep=st.sampled_from(["-", "/"]),
)
def test_separated_roundtrip(base, quote, sep):
    # Independent reference: the separated spelling splits exactly at the separator.
    assert split_symbol(f"{base}{sep}{quote}") == (base, quote)
