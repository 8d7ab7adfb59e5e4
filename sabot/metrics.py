"""Optional Prometheus metrics for streams and collectors (extra ``metrics``: prometheus-client).

Off by default.  ``Stream.from_kafka(..., metrics_port=9100)`` or a collector's
``--metrics-port 9100`` serves ``http://<addr>:9100/metrics``.  Values are read from the live
counters when Prometheus scrapes (nothing is added to the hot path except the latency
histogram, one vectorised update per output batch):

* ``sabot_operator_rows_in_total`` / ``sabot_operator_rows_out_total`` {stream, operator}
* ``sabot_source_messages_total``, ``sabot_source_decode_errors_total`` (undecodable or
  invalid), ``sabot_source_commits_withheld_total`` (a dead letter was not delivered)
  {stream, source}
* ``sabot_sink_write_errors_total`` (Parquet I/O errors, retried) and
  ``sabot_sink_undelivered_total`` (records ``to_kafka`` could not deliver) {stream, sink}
* ``sabot_metrics_server_restarts_total``: times the endpoint's thread died and was restarted
* ``sabot_consumer_lag`` {stream, topic, partition}: messages behind the partition's high
  watermark, from librdkafka statistics (emitted every second).  An estimate: the embedded
  broker's high watermarks may undercount, so there it may read low; nothing relies on it
* ``sabot_checkpoint_age_seconds`` {stream}: since the last checkpoint written or restored
* ``sabot_changelog_records_written_total`` / ``_restored_total`` / ``_discarded_total``
  {stream}: per-partition checkpoint records of a ``changelog_topic`` stream (discarded:
  unreadable records skipped under ``reset_state=True``)
* ``sabot_tick_to_signal_seconds`` {stream}: histogram of sink time minus each output row's
  ``recv_timestamp`` (else ``timestamp``), i.e. from the exchange tick reaching us to the
  signal leaving the pipeline
* ``sabot_collector_messages_total``, ``_records_total``, ``_reconnects_total``,
  ``_skipped_total``, ``_exchange_errors_total`` {exchange}
"""
from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from .timeunits import INT64_MIN, column_ns

logger = logging.getLogger(__name__)

#: Latency histogram bucket upper bounds, seconds.
LATENCY_BUCKETS: Tuple[float, ...] = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                      0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

_lock = threading.Lock()
_servers: Dict[int, "MetricsServer"] = {}

INSTALL_HINT = "pip install 'sabot[metrics]'"


class MetricsError(RuntimeError):
    """The metrics endpoint cannot be served (one line: what and what to do)."""


def require_prometheus(what: str) -> None:
    """Raise :class:`MetricsError` with the install line when prometheus-client is missing."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        raise MetricsError(f"{what} needs prometheus-client: {INSTALL_HINT}") from None


class MetricsServer:
    """One HTTP endpoint and registry; sources are callables yielding metric families."""

    def __init__(self, port: int, addr: str) -> None:
        require_prometheus(f"metrics port {port}")
        from prometheus_client import CollectorRegistry

        self.registry = CollectorRegistry(auto_describe=False)
        self._sources: List[Callable[[], Iterable[Any]]] = []
        self.registry.register(self)
        self.addr = addr
        #: times the HTTP thread was found dead and started again
        self.restarts = 0
        self._httpd, self._thread = self._start(port)
        self.port = self._httpd.server_address[1]
        logger.info("Prometheus metrics on http://%s:%d/metrics", addr, self.port)

    def _start(self, port: int) -> Tuple[Any, threading.Thread]:
        from prometheus_client import start_http_server

        try:
            return start_http_server(port, addr=self.addr, registry=self.registry)
        except OSError as exc:
            raise MetricsError(f"metrics port {port} on {self.addr}: "
                               f"{exc.strerror or exc} (choose another port)") from None

    def ensure_running(self) -> bool:
        """Start the HTTP thread again if it died (logged, counted); False if it cannot."""
        if self._thread.is_alive():
            return True
        logger.warning("metrics endpoint on port %d stopped; starting it again", self.port)
        try:
            self._httpd.server_close()
        except OSError:
            pass
        try:
            self._httpd, self._thread = self._start(self.port)
        except MetricsError as exc:
            logger.error("%s; metrics stay unavailable until it can be started", exc)
            return False
        self.restarts += 1
        return True

    def add(self, source: Callable[[], Iterable[Any]]) -> None:
        with _lock:
            self._sources.append(source)

    def remove(self, source: Callable[[], Iterable[Any]]) -> None:
        with _lock:
            if source in self._sources:
                self._sources.remove(source)

    def collect(self) -> Iterable[Any]:  # prometheus_client Collector protocol
        with _lock:
            sources = list(self._sources)
        for source in sources:
            try:
                yield from source()
            except Exception:  # a broken source must not break the endpoint
                logger.exception("metrics source %r failed", source)

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def serve(port: int, addr: str = "127.0.0.1") -> MetricsServer:
    """The metrics endpoint on ``port`` (started once per process and port; 0: a free port).
    :class:`MetricsError` (one line) without prometheus-client or when the port is taken."""
    with _lock:
        server = _servers.get(port)
    if server is not None:
        server.ensure_running()
    else:
        server = MetricsServer(port, addr)
        with _lock:
            _servers[port] = server
            _servers[server.port] = server
    return server


class LatencyHistogram:
    """Cumulative histogram of (now − row time) in seconds, updated per batch with numpy."""

    def __init__(self, buckets: Tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.bounds = np.asarray(buckets, dtype=np.float64)
        self.counts = np.zeros(len(buckets) + 1, dtype=np.int64)  # last: above every bound
        self.total = 0.0

    def observe_batch(self, batch: Any) -> None:
        names = batch.schema.names
        col = "recv_timestamp" if "recv_timestamp" in names else (
            "timestamp" if "timestamp" in names else None)
        if col is None:
            return
        try:  # integer time columns are ns since the epoch (sabot.timeunits)
            ts = column_ns(batch.column(names.index(col)), col, "ns")
        except (TypeError, ValueError):
            return
        ts = ts[ts != INT64_MIN]
        if not len(ts):
            return
        lat = (time.time_ns() - ts.astype(np.int64)) / 1e9
        # bucket i counts values <= bounds[i] (Prometheus ``le``), the last one the rest
        self.counts += np.bincount(np.searchsorted(self.bounds, lat, side="left"),
                                   minlength=len(self.counts))
        self.total += float(lat.sum())

    def family(self, name: str, doc: str, labels: Dict[str, str]) -> Any:
        from prometheus_client.core import HistogramMetricFamily

        cum = np.cumsum(self.counts)
        buckets = [(repr(float(b)), int(c)) for b, c in zip(self.bounds, cum[:-1])]
        buckets.append(("+Inf", int(cum[-1])))
        fam = HistogramMetricFamily(name, doc, labels=list(labels))
        fam.add_metric(list(labels.values()), buckets, self.total)
        return fam


class StreamMetrics:
    """Metric families of one running Stream (read from its counters at scrape time)."""

    def __init__(self, stream: Any, name: str) -> None:
        self.stream = stream
        self.name = name
        self.latency = LatencyHistogram()
        #: the endpoints serving this stream (kept running by the stream's run loop)
        self.servers: List[MetricsServer] = []

    def __call__(self) -> Iterable[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        rows_in = CounterMetricFamily("sabot_operator_rows_in", "Rows into each operator",
                                      labels=["stream", "operator"])
        rows_out = CounterMetricFamily("sabot_operator_rows_out", "Rows out of each operator",
                                       labels=["stream", "operator"])
        messages = CounterMetricFamily("sabot_source_messages", "Messages read by each source",
                                       labels=["stream", "source"])
        decode_errors = CounterMetricFamily("sabot_source_decode_errors",
                                            "Undecodable or invalid messages skipped (and "
                                            "counted)", labels=["stream", "source"])
        withheld = CounterMetricFamily("sabot_source_commits_withheld",
                                       "Offset commits held back: a dead letter was not "
                                       "delivered", labels=["stream", "source"])
        for node, m in self.stream.metrics.items():
            if "rows_in" in m:
                rows_in.add_metric([self.name, node], m["rows_in"])
                rows_out.add_metric([self.name, node], m["rows_out"])
            if "messages" in m:
                messages.add_metric([self.name, node], m["messages"])
                decode_errors.add_metric([self.name, node], m.get("decode_errors", 0))
                withheld.add_metric([self.name, node], m.get("commits_withheld", 0))
        sink_errors = CounterMetricFamily("sabot_sink_write_errors",
                                          "Sink I/O errors (held, retried; nothing committed)",
                                          labels=["stream", "sink"])
        undelivered = CounterMetricFamily("sabot_sink_undelivered",
                                          "Records to_kafka could not deliver",
                                          labels=["stream", "sink"])
        for node, m in self.stream.metrics.items():
            if "write_errors" in m:
                sink_errors.add_metric([self.name, node], m["write_errors"])
            if "undelivered" in m:
                undelivered.add_metric([self.name, node], m["undelivered"])
        yield from (rows_in, rows_out, messages, decode_errors, withheld, sink_errors,
                    undelivered)
        lag = GaugeMetricFamily("sabot_consumer_lag",
                                "Messages behind the high watermark as the broker reports it "
                                "(may read low on the embedded broker, whose watermarks may "
                                "undercount)", labels=["stream", "topic", "partition"])
        for source in self.stream.kafka_sources():
            for (topic, part), value in sorted(source.lag.items()):
                lag.add_metric([self.name, topic, str(part)], value)
        yield lag
        ckpt = self.stream.last_checkpointer
        if ckpt is not None and ckpt.age_s is not None:
            age = GaugeMetricFamily("sabot_checkpoint_age_seconds",
                                    "Seconds since the last checkpoint", labels=["stream"])
            age.add_metric([self.name], ckpt.age_s)
            yield age
        store = getattr(ckpt, "store", None)
        if hasattr(store, "records_written"):
            for what in ("written", "restored", "discarded"):
                fam = CounterMetricFamily(f"sabot_changelog_records_{what}",
                                          f"Changelog checkpoint records {what}",
                                          labels=["stream"])
                fam.add_metric([self.name], getattr(store, f"records_{what}"))
                yield fam
        restarts = CounterMetricFamily("sabot_metrics_server_restarts",
                                       "Times the metrics HTTP thread died and was restarted",
                                       labels=["stream"])
        restarts.add_metric([self.name], sum(s.restarts for s in set(self.servers)))
        yield restarts
        yield self.latency.family("sabot_tick_to_signal_seconds",
                                  "Sink time minus the row's receive (else event) time",
                                  {"stream": self.name})


def collector_source(stats: Any, exchange: str) -> Callable[[], Iterable[Any]]:
    """Metric families of a collector's connection-loop counters (``Stats``)."""

    def families() -> Iterable[Any]:
        from prometheus_client.core import CounterMetricFamily

        for field, doc in (("messages", "Frames received"), ("records", "Records emitted"),
                           ("reconnects", "Reconnects"), ("skipped", "Malformed/unknown frames skipped"),
                           ("errors", "Exchange error messages")):
            name = "exchange_errors" if field == "errors" else field
            fam = CounterMetricFamily(f"sabot_collector_{name}", doc, labels=["exchange"])
            fam.add_metric([exchange], getattr(stats, field))
            yield fam

    return families


class LatencyBuffer:
    """A growing float64 buffer of latencies (ms), appended to by the decisions, with a
    log-scale histogram of them beside it.

    The decision loop appends without a Python object per value (a list of floats also made
    the garbage collector's walks longer).  The periodic summary (another thread, twice a
    second) reads its percentiles from the histogram (:meth:`approx_percentiles`): numpy's
    percentile over every latency so far holds the GIL for a time growing with the run - about
    15 ms per 200 000 values on a busy 2-core machine - and the event loop waits that long
    for it; the final summary computes them exactly (:meth:`values`)."""

    #: histogram bins per decade (a bin spans 1.2 %), from 1 us to 100 s
    BINS_PER_DECADE = 200
    LOW_MS = 1e-3
    DECADES = 8

    def __init__(self, capacity: int = 1 << 16) -> None:
        self._data = np.empty(capacity, dtype=np.float64)
        self._n = 0
        self._hist = np.zeros(self.BINS_PER_DECADE * self.DECADES, dtype=np.int64)

    def __len__(self) -> int:
        return self._n

    def extend(self, values: Sequence[float]) -> None:
        """Append ``values`` (doubling the buffer when full)."""
        k = len(values)
        if not k:
            return
        if self._n + k > len(self._data):
            grown = np.empty(max(2 * len(self._data), self._n + k), dtype=np.float64)
            grown[:self._n] = self._data[:self._n]
            self._data = grown
        if k <= 8 and isinstance(values, list):  # a tick's few values: no numpy calls
            data, hist, n = self._data, self._hist, self._n
            log10, low, per, top = math.log10, self.LOW_MS, self.BINS_PER_DECADE, len(self._hist) - 1
            for i, v in enumerate(values):
                data[n + i] = v
                hist[int(min(top, log10(v / low) * per)) if v > low else 0] += 1
            self._n = n + k
            return
        values = np.asarray(values, dtype=np.float64)
        self._data[self._n:self._n + k] = values
        with np.errstate(invalid="ignore", divide="ignore"):
            bins = np.log10(np.maximum(values, self.LOW_MS) / self.LOW_MS) * self.BINS_PER_DECADE
        np.add.at(self._hist, np.clip(np.nan_to_num(bins), 0, len(self._hist) - 1)
                  .astype(np.int64), 1)
        self._n += k

    def values(self) -> np.ndarray:
        """The latencies so far (a view of the buffer).  Safe to call from another thread:
        the count is read before the buffer, and a value is in place before it is counted."""
        n = self._n
        return self._data[:n]

    def approx_percentiles(self, qs: Sequence[float]) -> List[Optional[float]]:
        """Percentiles ``qs`` from the histogram (within a bin, 1.2 %, of the exact value for
        latencies between 1 us and 100 s); None without latencies.  Cheap from any thread."""
        cum = np.cumsum(self._hist)
        total = int(cum[-1])
        if not total:
            return [None for _ in qs]
        out: List[Optional[float]] = []
        for q in qs:
            b = int(np.searchsorted(cum, max(1.0, q / 100 * total), side="left"))
            out.append(self.LOW_MS * 10 ** ((b + 0.5) / self.BINS_PER_DECADE))
        return out
