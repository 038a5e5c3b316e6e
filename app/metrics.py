"""Prometheus metrics of the serving app, and the ASGI middleware that times requests.

One :class:`ServingMetrics` per app, on its own ``CollectorRegistry`` (two apps in one
process, as in tests, never share counters). ``GET /metrics`` renders it.

======================================  ===================================================
``mlops_http_requests_total``            requests by route (template), method, status and
                                         model version
``mlops_http_request_duration_seconds``  the same, as a latency histogram
``mlops_model_inference_seconds``        time in ``InferenceSession.run`` by model version
``mlops_predictions_total``              rows scored by model version and predicted class
``mlops_model_loads_total``              model versions loaded / refused by the reloader
``mlops_model_info``                     1 for the version being served
``mlops_online_store_read_seconds``      entity-feature reads by backend
``mlops_online_store_errors_total``      failed reads by backend and error kind
``mlops_request_log_*``                  queue depth, spool size, written and dropped
                                         records (read from the log at scrape time)
``mlops_model_drift_share``              the monitor flow's latest figures per model:
``mlops_model_drifted_features``         drift share, drifted features, live accuracy,
``mlops_model_live_accuracy``            rows judged and when (read from its
``mlops_monitoring_window_rows``         ``monitoring_runs`` history, at most every 30 s)
``mlops_monitoring_last_run_timestamp_seconds``
======================================  ===================================================

Each worker process has its own registry: run one uvicorn worker per container and
scale containers, or scrape each worker.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from mlops.monitoring.history import MonitoringRun
    from mlops.serving import LoadedModel
    from mlops.serving.request_log import RequestLog

logger = logging.getLogger(__name__)

MODEL_VERSION_HEADER = b"x-model-version"
UNMATCHED = "unmatched"
"""The route label of requests no route matched (keeps the label set small)."""

_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.05,
    0.1,
    0.2,
    0.5,
    1.0,
    2.0,
    5.0,
)
_MAX_CACHED_LABEL_SETS = 1_000
_INFERENCE_BUCKETS = (0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.1)


class _RequestLogCollector(Collector):
    """The request log's own counters, read when Prometheus scrapes."""

    def __init__(self) -> None:
        self.log: RequestLog | None = None

    def collect(self) -> Iterator[Metric]:
        log = self.log
        if log is None:
            return
        yield GaugeMetricFamily(
            "mlops_request_log_queue_depth",
            "Request-log records waiting in memory for their batch.",
            value=log.queue_depth,
        )
        yield GaugeMetricFamily(
            "mlops_request_log_spool_bytes",
            "Bytes of request-log records spooled on disk while the database is down.",
            value=log.spool_bytes,
        )
        yield GaugeMetricFamily(
            "mlops_request_log_spool_records",
            "Request-log records spooled on disk.",
            value=log.spool_records,
        )
        yield GaugeMetricFamily(
            "mlops_request_log_database_up",
            "1 when the request log's last write or probe succeeded.",
            value=1.0 if log.database_ok else 0.0,
        )
        yield CounterMetricFamily(
            "mlops_request_log_written",
            "Request-log records written to the database.",
            value=log.written,
        )
        yield CounterMetricFamily(
            "mlops_request_log_dropped",
            "Request-log records lost because the spool was full.",
            value=log.dropped,
        )


class _MonitoringCollector(Collector):
    """The monitor flow's newest figures per model, for Prometheus alerts on drift.

    The flow runs elsewhere and briefly; what it found stays in its history table, in
    the request log's database, and the app (scraped anyway) exports the newest row of
    each model. The table is read at most every ``ttl_s`` seconds; when the read fails
    the last figures stay and ``mlops_monitoring_read_up`` is 0.
    """

    def __init__(self, ttl_s: float = 30.0) -> None:
        self.source: Callable[[], list[MonitoringRun]] | None = None
        self.ttl_s = ttl_s
        self._runs: list[MonitoringRun] = []
        self._read_at = -math.inf
        self._read_ok = True

    def collect(self) -> Iterator[Metric]:
        source = self.source
        if source is None:
            return
        now = time.monotonic()
        if now - self._read_at >= self.ttl_s:
            self._read_at = now
            try:
                self._runs = source()
                self._read_ok = True
            except Exception as exc:  # a scrape must not fail on the history's database
                self._read_ok = False
                logger.warning("monitoring history unreadable for /metrics: %s", exc)
        yield GaugeMetricFamily(
            "mlops_monitoring_read_up",
            "1 when the last read of the monitor's history succeeded.",
            value=1.0 if self._read_ok else 0.0,
        )
        labels = ["model", "version"]
        drift = GaugeMetricFamily(
            "mlops_model_drift_share",
            "Share of features the latest monitor run found drifted (absent when its "
            "window was too small to judge).",
            labels=labels,
        )
        drifted = GaugeMetricFamily(
            "mlops_model_drifted_features",
            "Features the latest monitor run found drifted.",
            labels=labels,
        )
        accuracy = GaugeMetricFamily(
            "mlops_model_live_accuracy",
            "Live accuracy (feedback labels) in the latest monitor run's window.",
            labels=labels,
        )
        rows = GaugeMetricFamily(
            "mlops_monitoring_window_rows",
            "Logged prediction rows in the latest monitor run's window.",
            labels=labels,
        )
        last = GaugeMetricFamily(
            "mlops_monitoring_last_run_timestamp_seconds",
            "When the latest monitor run of the model finished (Unix time).",
            labels=["model"],
        )
        for run in self._runs:
            key = [run.model_name, run.model_version]
            if run.drift_share is not None:
                drift.add_metric(key, run.drift_share)
                drifted.add_metric(key, len(run.drifted_features))
            if run.live_accuracy is not None:
                accuracy.add_metric(key, run.live_accuracy)
            rows.add_metric(key, run.n_rows)
            last.add_metric([run.model_name], run.created_at.timestamp())
        yield from (drift, drifted, accuracy, rows, last)


@dataclass(frozen=True, slots=True)
class VersionMetrics:
    """One model version's label children of the prediction metrics."""

    inference: Any
    negative: Any
    positive: Any


class ServingMetrics:
    """The app's metrics, on a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = ["route", "method", "status", "model_version"]
        self.requests = Counter(
            "mlops_http_requests",
            "HTTP requests by route, method, status and model version.",
            labels,
            registry=self.registry,
        )
        self.latency = Histogram(
            "mlops_http_request_duration_seconds",
            "HTTP request latency by route, method, status and model version.",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.inference = Histogram(
            "mlops_model_inference_seconds",
            "Time in onnxruntime's InferenceSession.run, by model version.",
            ["model_version"],
            buckets=_INFERENCE_BUCKETS,
            registry=self.registry,
        )
        self.predictions = Counter(
            "mlops_predictions",
            "Rows scored, by model version and predicted class.",
            ["model_version", "label"],
            registry=self.registry,
        )
        self.model_loads = Counter(
            "mlops_model_loads",
            "Model versions the app loaded (result=loaded) or refused (result=refused).",
            ["result"],
            registry=self.registry,
        )
        self.model_info = Gauge(
            "mlops_model_info",
            "1 for the model version being served.",
            ["name", "version"],
            registry=self.registry,
        )
        self.online_latency = Histogram(
            "mlops_online_store_read_seconds",
            "Online-store reads of entity features, by backend.",
            ["backend"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.online_errors = Counter(
            "mlops_online_store_errors",
            "Failed online-store reads, by backend and kind (unavailable, error).",
            ["backend", "kind"],
            registry=self.registry,
        )
        self._request_log = _RequestLogCollector()
        self.registry.register(self._request_log)
        self._monitoring = _MonitoringCollector()
        self.registry.register(self._monitoring)
        self._served: tuple[str, str] | None = None
        self._versions: dict[str, VersionMetrics] = {}
        # Label children by their label values: prometheus_client's labels() takes a lock
        # and builds a key on every call; a hot route has few distinct label sets.
        self._http_children: dict[tuple[str, str, int, str], tuple[Any, Any]] = {}

    def observe_request(
        self, route: str, method: str, status: int, version: str, seconds: float
    ) -> None:
        """Count and time one HTTP request."""
        key = (route, method, status, version)
        children = self._http_children.get(key)
        if children is None:
            labels = (route, method, str(status), version)
            children = (self.requests.labels(*labels), self.latency.labels(*labels))
            if len(self._http_children) < _MAX_CACHED_LABEL_SETS:
                self._http_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def of_version(self, version: str) -> VersionMetrics:
        """The per-version children (cached: the hot path skips ``labels()``)."""
        found = self._versions.get(version)
        if found is None:
            found = VersionMetrics(
                inference=self.inference.labels(version),
                negative=self.predictions.labels(version, "0"),
                positive=self.predictions.labels(version, "1"),
            )
            self._versions[version] = found
        return found

    def observe_inference(self, model: LoadedModel, seconds: float) -> None:
        """One ``InferenceSession.run`` of ``model`` took ``seconds``."""
        self.of_version(model.version).inference.observe(seconds)

    def watch_request_log(self, log: RequestLog | None) -> None:
        """Report ``log``'s queue, spool and counters at each scrape."""
        self._request_log.log = log

    def watch_monitoring(self, source: Callable[[], list[MonitoringRun]] | None) -> None:
        """Export the monitor's newest figures per model, read with ``source``."""
        self._monitoring.source = source

    def model_loaded(self, model: LoadedModel) -> None:
        self.model_loads.labels("loaded").inc()
        if self._served is not None:
            self.model_info.remove(*self._served)
        self._served = (model.name, model.version)
        self.model_info.labels(*self._served).set(1)

    def model_refused(self, version: str, reason: str) -> None:
        del version, reason  # logged by the reloader; the counter is enough here
        self.model_loads.labels("refused").inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts and times every HTTP request (pure ASGI: no per-request task or copy).

    The route label is the matched route's path template (or the request's path when it
    is one of ``paths``, the app's fixed paths: a plain Starlette route leaves no route in
    the scope), the model version label the response's ``X-Model-Version`` header (empty
    when the response has none).
    """

    def __init__(
        self, app: ASGIApp, *, metrics: ServingMetrics, paths: frozenset[str] = frozenset()
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.paths = paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        version = ""

        async def send_and_note(message: Message) -> None:
            nonlocal status, version
            if message["type"] == "http.response.start":
                status = message["status"]
                for name, value in message.get("headers", ()):
                    if name == MODEL_VERSION_HEADER:
                        version = value.decode("latin-1")
                        break
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route: Any = scope.get("route")
            path = getattr(route, "path", None) or (
                scope["path"] if scope["path"] in self.paths else UNMATCHED
            )
            self.metrics.observe_request(
                path, scope["method"], status, version, time.perf_counter() - started
            )
