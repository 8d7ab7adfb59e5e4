"""asv: volatility, liquidity and execution/risk kernels on 1M rows (one RecordBatch)."""
import numpy as np
import pyarrow as pa

from sabot.fintech import (
    amihud_illiquidity, bipower_var, cornish_fisher_var, corwin_schultz_spread, cusum,
    garman_klass_vol, historical_cvar, historical_var, kyle_lambda, medrv, parkinson_vol,
    realized_var, riskmetrics_vol, roll_spread, vwap,
)

N = 1_000_000


class VolatilityLiquidityExec:
    timeout = 300

    def setup(self):
        rng = np.random.default_rng(0)
        price = 100.0 * np.exp(np.cumsum(rng.normal(0, 1e-3, N)))
        high = price * (1 + rng.uniform(0, 2e-3, N))
        low = price * (1 - rng.uniform(0, 2e-3, N))
        self.batch = pa.record_batch({
            "symbol": rng.choice(["BTC/USD", "ETH/USD", "SOL/USD"], N),
            "log_return": rng.normal(0, 1e-3, N),
            "signed_volume": rng.normal(0, 5.0, N),
            "volume": rng.exponential(2.0, N),
            "price": price, "open": low + (high - low) * rng.uniform(0, 1, N),
            "high": high, "low": low, "close": price,
            "pnl": rng.standard_t(4, N), "value": rng.normal(0, 1, N),
        })

    def time_realized_var(self):
        realized_var(self.batch)

    def time_realized_var_by_symbol(self):
        realized_var(self.batch, by="symbol")

    def time_bipower_var(self):
        bipower_var(self.batch)

    def time_medrv(self):
        medrv(self.batch)

    def time_riskmetrics_vol(self):
        riskmetrics_vol(self.batch)

    def time_parkinson_vol(self):
        parkinson_vol(self.batch)

    def time_garman_klass_vol(self):
        garman_klass_vol(self.batch)

    def time_kyle_lambda(self):
        kyle_lambda(self.batch)

    def time_amihud_illiquidity(self):
        amihud_illiquidity(self.batch)

    def time_roll_spread(self):
        roll_spread(self.batch)

    def time_corwin_schultz_spread(self):
        corwin_schultz_spread(self.batch)

    def time_vwap(self):
        vwap(self.batch)

    def time_cusum(self):
        cusum(self.batch)

    def time_historical_var_250(self):
        historical_var(self.batch)

    def time_historical_cvar_250(self):
        historical_cvar(self.batch)

    def time_cornish_fisher_var_250(self):
        cornish_fisher_var(self.batch)
