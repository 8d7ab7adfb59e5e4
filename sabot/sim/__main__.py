"""``python -m sabot.sim VENUE --port N [--replay FILE | --scenario FILE] [--seed S] ...`` (any registered venue)."""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys

from sabot.sim.servers import CORRUPT_KINDS, SIMULATORS
from sabot.venues import perp_venue_names


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sabot.sim",
                                description="Local WebSocket server speaking an exchange's market-data protocol.",
                                allow_abbrev=False)
    p.add_argument("exchange", choices=[*SIMULATORS, *perp_venue_names()], help="the venue to simulate")
    p.add_argument("--port", type=int, default=8765, help="port on --host (0 = any free port)")
    p.add_argument("--host", default="127.0.0.1")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--replay", help="JSON lines file of frames to send verbatim after subscribing")
    src.add_argument("--scenario", help="JSON lines scenario of quotes {t, exchange, symbol, bid, ask, ...}")
    p.add_argument("--seed", type=int, default=0, help="random-walk seed (same seed = same mid path on all exchanges)")
    p.add_argument("--rate", type=float, default=20.0, help="data frames per second (0 = as fast as possible)")
    p.add_argument("--count", type=int, default=None, help="stop sending data after N frames (keepalives continue)")
    p.add_argument("--latency-ms", type=float, default=None, help="event time lag behind the wall clock")
    f = p.add_argument_group("faults")
    f.add_argument("--drop-every", type=int, default=None, help="close each connection after N data frames")
    f.add_argument("--drop-after", type=int, default=None, help="close the connection once, after N data frames")
    f.add_argument("--malformed", type=int, default=0, help="send N malformed/unknown frames after subscribing")
    f.add_argument("--silence-after", type=int, default=None,
                   help="after N data frames send nothing more but keep the socket open")
    f.add_argument("--error", default=None, help="send the exchange's error message with this text once")
    f.add_argument("--lifetime", type=float, default=None, help="Binance: close each connection after S seconds")
    f.add_argument("--shutdown-after", type=int, default=None,
                   help="Binance: send serverShutdown and close after N data frames")
    f.add_argument("--corrupt-every", type=int, default=None,
                   help="every Nth data frame carries one bad value (still one record each)")
    f.add_argument("--corrupt-kinds", default=None,
                   help=f"comma-separated bad values to cycle through (default all the exchange can carry: "
                        f"{','.join(CORRUPT_KINDS)}; Binance has no 'future')")
    f.add_argument("--garbage-every", type=int, default=None, help="a garbage frame after every N data frames")
    f.add_argument("--quiet-after", type=int, default=None,
                   help="after N data frames send no data (keepalives continue) for --quiet-for seconds")
    f.add_argument("--quiet-for", type=float, default=3600.0, help="length of the quiet spell (default %(default)g s)")
    f.add_argument("--listed", default=None,
                   help="comma-separated symbols the venue lists (exchange spelling); others are refused "
                        "as the exchange refuses them (default: every well-formed symbol)")
    p.add_argument("--heartbeat-interval", type=float, default=1.0)
    p.add_argument("--ping-interval", type=float, default=20.0, help="Binance ping frame interval (s)")
    p.add_argument("--funding-interval", type=float, default=None,
                   help="perpetuals: seconds between funding times (default 28800, the exchange's 8 h)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if a.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    kwargs = dict(replay=a.replay, scenario=a.scenario, seed=a.seed, rate=a.rate, count=a.count,
                  drop_every=a.drop_every, drop_after=a.drop_after, malformed=a.malformed,
                  silence_after=a.silence_after, error=a.error, heartbeat_interval=a.heartbeat_interval,
                  ping_interval=a.ping_interval, lifetime=a.lifetime, shutdown_after=a.shutdown_after,
                  latency_ms=a.latency_ms, corrupt_every=a.corrupt_every,
                  corrupt_kinds=a.corrupt_kinds.split(",") if a.corrupt_kinds else None,
                  garbage_every=a.garbage_every, quiet_after=a.quiet_after, quiet_for=a.quiet_for,
                  listed=[s.strip() for s in a.listed.split(",") if s.strip()] if a.listed else None)
    if a.funding_interval is not None:
        if a.exchange not in perp_venue_names():
            logging.getLogger("sabot.sim").error("--funding-interval: %s is not a perpetual-futures venue",
                                                 a.exchange)
            return 2
        kwargs["funding_interval"] = a.funding_interval
    try:
        server = SIMULATORS[a.exchange](a.port, a.host, **kwargs)
    except (ValueError, OSError) as exc:
        logging.getLogger("sabot.sim").error("%s", exc)
        return 2

    async def run() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.ensure_future(server.serve_forever())
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, lambda: server._stop and server._stop.set())
        await task
        logging.getLogger("sabot.sim").info("%s simulator stopped: %d data frames sent to %d connections",
                                            a.exchange, server.sent_count, server.connections)
        # one JSON line on stdout for exact accounting against a collector's summary
        print(json.dumps(server.report()), flush=True)

    try:
        asyncio.run(run())
    except OSError as exc:  # port in use, address not available
        logging.getLogger("sabot.sim").error("cannot listen on %s:%d (%s)", a.host, a.port, exc.strerror or exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
