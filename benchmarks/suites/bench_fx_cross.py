"""asv suites for fx_crypto, cross_exchange and cross_asset kernels (data as in peers_fx_cross)."""
import numpy as np
import pyarrow as pa

from sabot import fintech as fk

ROWS = 2_000_000
BATCH_ROWS = 64 * 1024


def _fx(rows):
    rng = np.random.default_rng(0)
    ab = 1.1 * np.exp(rng.normal(0, 1e-3, rows))
    bc = 150.0 * np.exp(rng.normal(0, 1e-3, rows))
    spot = 60000.0 * np.exp(np.cumsum(rng.normal(0, 1e-4, rows)))
    symbols = np.array([f"S{i}-PERP" for i in range(8)])
    return pa.table({
        "symbol": pa.array(symbols[rng.integers(0, 8, rows)]).dictionary_encode(),
        "spot_ab": ab, "spot_bc": bc, "spot_ac": ab * bc * np.exp(rng.normal(0, 2e-4, rows)),
        "spot_price": spot, "perp_price": spot * (1 + rng.normal(5e-4, 1e-4, rows)),
        "funding_rate": rng.normal(1e-4, 5e-5, rows),
        "open_interest": 1e6 + np.cumsum(rng.normal(0, 1e3, rows)),
        "coinbase_mid": spot * (1 + rng.normal(0, 2e-4, rows)),
        "kraken_mid": spot * (1 + rng.normal(0, 2e-4, rows)),
        "binance_mid": spot * (1 + rng.normal(0, 2e-4, rows)),
        "price": spot, "price_b": spot * 0.05 * (1 + rng.normal(0, 1e-3, rows)),
    }).combine_chunks()


class FxCrypto:
    def setup(self):
        self.batch = _fx(ROWS).to_batches()[0]

    def time_triangular_arbitrage(self):
        fk.triangular_arbitrage(self.batch)

    def time_cash_and_carry_edge(self):
        fk.cash_and_carry_edge(self.batch, fees_bps=5.0)

    def time_funding_apr(self):
        fk.funding_apr(self.batch)

    def time_open_interest_delta_by_symbol(self):
        fk.open_interest_delta(self.batch, by="symbol")


class CrossExchange:
    def setup(self):
        self.batch = _fx(ROWS).to_batches()[0]

    def time_cross_exchange_spread(self):
        fk.cross_exchange_spread(self.batch, "coinbase_mid", "kraken_mid")

    def time_arbitrage_opportunities(self):
        fk.arbitrage_opportunities(self.batch, ["coinbase_mid", "kraken_mid", "binance_mid"],
                                   fees_bps={"coinbase": 6.0, "kraken": 2.6, "binance": 1.0})


class CrossAsset:
    params = [1000, 60000]
    param_names = ["window_ms"]

    def setup(self, window_ms):
        rng = np.random.default_rng(1)
        n = ROWS // 2
        ta = np.unique(rng.integers(0, 50 * n, n)) * 1_000_000
        tb = np.unique(rng.integers(0, 50 * n, int(n * 0.7))) * 1_000_000
        self.a = pa.record_batch({"timestamp": ta, "returns": rng.normal(0, 1e-4, ta.size)})
        self.b = pa.record_batch({"timestamp": tb, "returns": rng.normal(0, 1e-4, tb.size)})
        self.pairs = _fx(ROWS // 4).to_batches()

    def time_hayashi_yoshida_cov(self, window_ms):
        fk.hayashi_yoshida_cov(self.a, self.b, window_ms=window_ms)

    def time_kalman_hedge_ratio_per_batch(self, window_ms):
        k = fk.KalmanHedgeRatio(b_column="price_b", by="symbol")
        for piece in self.pairs:
            k(piece)
