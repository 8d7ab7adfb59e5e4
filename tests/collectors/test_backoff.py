"""Reconnect backoff: 1 s doubling to 60 s with jitter U(0.5, 1), reset after a healthy minute."""
import random

from sabot.collectors.connection import Backoff


def test_backoff_doubles_with_jitter_and_caps():
    b = Backoff(base=1.0, max=60.0, rng=random.Random(5))
    ceilings = [1, 2, 4, 8, 16, 32, 60, 60, 60]
    for ceiling in ceilings:
        d = b.next_delay()
        assert 0.5 * ceiling <= d <= ceiling
    b.reset()
    assert 0.5 <= b.next_delay() <= 1.0


def test_backoff_jitter_spreads_clients():
    delays = {round(Backoff(rng=random.Random(seed)).next_delay(), 6) for seed in range(20)}
    assert len(delays) > 10
