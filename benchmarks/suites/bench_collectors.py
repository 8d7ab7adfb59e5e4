"""asv suite: collector parse + normalise per exchange frame (the issue's <= 5 µs/message target).

Frames are the local simulators' own encodings (``peers_collectors.frames``); one timing parses
``FRAMES`` of them, so ``time_*`` / FRAMES is the cost per message.
"""
from sabot.collectors import BinanceCollector, CoinbaseCollector, KrakenCollector

FRAMES = 10_000


def _frames(exchange):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from peers_collectors import frames

    return frames(exchange, FRAMES)


class ParseNormalise:
    params = ["coinbase", "kraken", "binance"]
    param_names = ["exchange"]

    def setup(self, exchange):
        cls = {"coinbase": CoinbaseCollector, "kraken": KrakenCollector,
               "binance": BinanceCollector}[exchange]
        self.parse = cls().parse
        self.texts = _frames(exchange)

    def time_parse_frames(self, exchange):
        parse = self.parse
        for text in self.texts:
            parse(text, 0)
