"""Symbol normalisation: every exchange spelling → ``BASE/QUOTE``.

``BTC-USD`` (Coinbase), ``BTC/USD`` (Kraken v2), ``XBT/USD`` / ``XXBTZUSD`` (Kraken v1 / REST),
``BTCUSDT`` / ``btcusdt`` (Binance) become ``BTC/USDT``: USDT is its own quote currency (a stable
coin whose USD price moves; :mod:`sabot.quote_conversion` prices USDT quotes in USD through a live
rate).  Folding USDT into USD is an explicit choice: ``quote_aliases=USDT_AS_USD``. This is the one pure-Python mapping; the ``normalize_symbols`` kernel reuses it.
A spelling only one venue uses (Kraken's ``XXBTZUSD``) is that venue's knowledge: its collector's
``split_exchange_symbol`` is asked when ``exchange`` names a registered venue
(:mod:`sabot.venues`); the reverse direction is ``Venue.to_exchange_symbol``.
"""
from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

__all__ = [
    "DEFAULT_QUOTE_ALIASES",
    "USDT_AS_USD",
    "KNOWN_QUOTES",
    "BASE_ALIASES",
    "normalize_symbol",
    "split_symbol",
]

#: Quote currencies folded into another by default: none (``BTCUSDT`` is ``BTC/USDT``).
DEFAULT_QUOTE_ALIASES: Mapping[str, str] = MappingProxyType({})

#: The explicit choice to read USDT as USD (``BTCUSDT`` -> ``BTC/USD``), ignoring the USDT/USD basis.
USDT_AS_USD: Mapping[str, str] = MappingProxyType({"USDT": "USD"})

#: Legacy base-asset codes (Kraken v1 / REST, BitMEX) → ISO codes.
BASE_ALIASES: Mapping[str, str] = MappingProxyType({"XBT": "BTC", "XDG": "DOGE"})

#: Quote suffixes recognised in concatenated symbols (``BTCUSDT``); longest match wins.
KNOWN_QUOTES: tuple[str, ...] = tuple(
    sorted(
        {
            "USDT", "USDC", "FDUSD", "TUSD", "BUSD", "USDP", "DAI", "USD", "EUR", "GBP", "JPY",
            "AUD", "CAD", "CHF", "TRY", "BRL", "BTC", "ETH", "BNB", "XBT", "SOL", "DOGE",
        },
        key=len,
        reverse=True,
    )
)

_SEPARATORS = ("/", "-", "_", ":")


def split_symbol(raw: str, exchange: str | None = None) -> tuple[str, str]:
    """Split an exchange symbol into upper-case ``(base, quote)`` without applying aliases.

    Raises ``ValueError`` naming ``raw`` when it cannot be split.
    """
    if not isinstance(raw, str) or not raw:
        raise ValueError(f"symbol must be a non-empty string, got {raw!r}")
    s = raw.strip().upper()
    # Binance stream names: ``btcusdt@bookTicker``.
    at = s.find("@")
    if at > 0:
        s = s[:at]
    for sep in _SEPARATORS:
        if sep in s:
            base, _, quote = s.partition(sep)
            if base and quote and sep not in quote:
                return base, quote
            raise ValueError(f"cannot split symbol {raw!r}: expected BASE{sep}QUOTE")
    if exchange is not None:  # a venue's own spelling (Kraken REST: XXBTZUSD)
        split = _venue_split(exchange, s)
        if split is not None:
            return split
    for quote in KNOWN_QUOTES:
        if len(s) > len(quote) and s.endswith(quote):
            return s[: -len(quote)], quote
    raise ValueError(f"cannot split symbol {raw!r}: no separator and no known quote suffix")


def _venue_split(exchange: str, text: str) -> tuple[str, str] | None:
    """The registered venue ``exchange``'s own split of ``text``; ``None`` for the generic rules
    (and for a name that is not a registered venue)."""
    from sabot.venues.registry import UnknownVenueError, get_venue

    try:
        collector = get_venue(exchange).collector_class
    except UnknownVenueError:
        return None
    split = getattr(collector, "split_exchange_symbol", None)
    return split(text) if split is not None else None


def normalize_symbol(
    raw: str,
    exchange: str | None = None,
    quote_aliases: Mapping[str, str] = DEFAULT_QUOTE_ALIASES,
) -> str:
    """``BASE/QUOTE`` for an exchange's spelling ``raw``.

    Base codes go through :data:`BASE_ALIASES` (``XBT`` → ``BTC``); the quote through
    ``quote_aliases`` (default none: ``USDT`` stays ``USDT``; :data:`USDT_AS_USD` folds it into USD).
    """
    base, quote = split_symbol(raw, exchange)
    base = BASE_ALIASES.get(base, base)
    quote = BASE_ALIASES.get(quote, quote)
    quote = quote_aliases.get(quote, quote)
    return f"{base}/{quote}"
