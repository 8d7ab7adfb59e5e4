"""The applications built on the library, each also a ``sabot`` subcommand:

* :mod:`sabot.apps.collect` - a venue's tickers to Kafka and/or Parquet (``sabot collect VENUE``);
* :mod:`sabot.apps.monitor` - the cross-venue arbitrage monitor and its decision logic
  (``sabot monitor``);
* :mod:`sabot.apps.research` - features, backtest, arbitrage study, export, live features
  (``sabot research`` / ``sabot backtest``);
* :mod:`sabot.apps.demo` - the whole live pipeline on one machine (``sabot demo``).

Modules are imported on use: ``import sabot.apps`` stays cheap.
"""
