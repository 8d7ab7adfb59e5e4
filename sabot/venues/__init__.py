"""The venue registry: every exchange sabot speaks, described once.

A :class:`Venue` says everything the rest of the package needs to know about one exchange: its
name, the Kafka topic its tickers go to, its default taker fee, the extra columns its records
carry, how the local exchange server simulates it, and where its collector (URL, subscribe
messages, parser, symbol spelling) and its local exchange server live.  Every list of venues in
the package (broker topics, collector CLI, simulators, the demo, the monitor's fees, schemas)
is derived from here, so adding an exchange is one module that calls :func:`register`::

    from sabot.venues import Venue, register
    register(Venue(name="bitstamp", collector="mypkg.bitstamp:BitstampCollector",
                   simulator="mypkg.bitstamp:BitstampSim", default_fee_bps=30.0))

Each built-in venue is one module of this package (:mod:`sabot.venues.coinbase`,
:mod:`~sabot.venues.kraken`, :mod:`~sabot.venues.binance`) holding its collector (URL, subscribe
messages, parser, symbol spelling both ways), its default fee, extra columns and simulator
profile, and its :func:`register` call; the package imports them when it is imported, in that
order, and :func:`venues` returns venues in registration order.  Its local exchange server (the
simulator writer) sits next to it in :mod:`sabot.sim` and is imported only when asked for.

:mod:`sabot.venues.binance_usdm` registers Binance's USDⓈ-M perpetual futures as
``binance-usdm`` with ``market="perp"``: :func:`perp_venues` lists it, the spot lists
(:func:`venues`, :func:`venue_names`, ...) do not.

Lists keyed by venue elsewhere in the package (``sabot.collectors.COLLECTORS``,
``sabot.sim.SIMULATORS``, ``sabot.schema.EXTRA_FIELDS``) are :class:`VenueMapping` views: they
read the registry on every access, so a venue registered later appears in all of them.
"""
from __future__ import annotations

from sabot.venues.registry import (  # noqa: F401  (the registry's public names, re-exported)
    FIELD_CHECKS, MARKETS, UnknownVenueError, Venue, VenueMapping, default_fees, get_venue,
    perp_venue_names, perp_venues, register, ticker_topics, unregister, venue_names, venues,
)
from sabot.venues.registry import __all__  # noqa: F401

# The built-in venues, each registering itself on import (this order is the registry's order).
from sabot.venues import coinbase as _coinbase  # noqa: E402,F401  (registers "coinbase")
from sabot.venues import kraken as _kraken  # noqa: E402,F401  (registers "kraken")
from sabot.venues import binance as _binance  # noqa: E402,F401  (registers "binance")
# Perpetual futures (market="perp": listed by perp_venues(), not by venues()).
from sabot.venues import binance_usdm as _binance_usdm  # noqa: E402,F401  (registers "binance-usdm")
