"""The server's Prometheus metrics, on ``prometheus_client`` with one registry per application.

Request counters and latencies are observed as requests finish; the batchers' counters and the
gauges (requests in flight, queue depth, readiness) are read from the server's state when
``/metrics`` is scraped. What a model did is labelled with its served name (``model``). Each application has its own :class:`~prometheus_client.CollectorRegistry`,
so two apps in one process (tests, an embedding server) never share or clash on a series, and
nothing is added to the library's global default registry.
"""

from __future__ import annotations

import re
from typing import Any, Iterator, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from ...runtime.batching import Batcher


class Labelled(Protocol):
    """A served model as its metrics see it (``ModelState``, which imports this module)."""

    @property
    def label(self) -> str: ...


#: The content type of :meth:`ServerMetrics.exposition`: Prometheus text format 0.0.4.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
# prometheus_client writes labels sorted by name; buckets keep "le" last, as the server always
# wrote them (and Prometheus' Go client does).
_BUCKET_LABELS = re.compile(rb'^(\w+_bucket\{)(le="[^"]*"),([^\n]+)\}', re.MULTILINE)


class _StateCollector:
    """The batcher's counters and the server's gauges, read at scrape time from the app's
    :class:`~poolkit.entrypoints.serving.state.ServerState`."""

    def __init__(self, state: Any) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        st = self.state
        counters = (
            ("poolkit_requests_cancelled_total", "Queued work dropped before it ran because its client went away.", "cancelled"),
            ("poolkit_batches_total", "Engine calls made by the batcher.", "batches"),
            ("poolkit_batch_tokens_total", "Tokens run by the batcher.", "tokens"),
        )
        for name, help_text, stat in counters:
            family = CounterMetricFamily(name, help_text, labels=["model"])
            for m in st.models:
                family.add_metric([_label(m)], getattr(m.batcher.stats, stat) if m.batcher is not None else 0)
            yield family
        yield GaugeMetricFamily("poolkit_requests_in_flight", "Requests being handled.", value=st.in_flight)
        yield GaugeMetricFamily(
            "poolkit_requests_receiving", "Requests whose body is still arriving (not yet admitted).", value=st.receiving
        )
        gauges = (
            ("poolkit_queue_depth", "Requests waiting for the model.", lambda m: m.batcher.queue_depth if m.batcher else 0),
            ("poolkit_model_ready", "1 when the model is loaded and the server takes requests.", lambda m: int(m.accepting)),
        )
        for name, help_text, read in gauges:
            family = GaugeMetricFamily(name, help_text, labels=["model"])
            for m in st.models:
                family.add_metric([_label(m)], read(m))
            yield family


def _label(model: Labelled) -> str:
    """A model's ``model`` label: its served name, never its directory (``ModelState.label``)."""
    return model.label


class _WithoutCreated:
    """A registry's metrics without the ``*_created`` samples prometheus_client adds to counters
    and histograms (start times no dashboard of this server reads); the library's global switch
    for them is left alone, as other code in the process may rely on it."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        for family in self.registry.collect():
            family.samples = [s for s in family.samples if not s.name.endswith("_created")]
            yield family


class ModelMetrics:
    """One model's series of the server's metrics, labelled with its served name."""

    def __init__(self, metrics: "ServerMetrics", model: Labelled) -> None:
        self.metrics = metrics
        self.model = model

    @property
    def disconnects(self) -> Counter:
        return self.metrics.disconnects

    def answered(self, inputs: int, prompt_tokens: int) -> None:
        """Count the inputs and prompt tokens of a request the model ran."""
        label = _label(self.model)
        self.metrics.series(self.metrics.inputs, label).inc(inputs)
        self.metrics.series(self.metrics.prompt_tokens, label).inc(prompt_tokens)

    def cached(self, hits: int, misses: int) -> None:
        """Count the embedding cache's hits and misses of a request."""
        label = _label(self.model)
        self.metrics.series(self.metrics.cache_hits, label).inc(hits)
        self.metrics.series(self.metrics.cache_misses, label).inc(misses)


class ServerMetrics:
    """Counters, gauges and histograms of one application.

    HTTP series are the server's (``route``, ``status``); what a model did carries a ``model``
    label (its served name), one series per served model.

    Attributes:
        registry: the application's own registry (what ``/metrics`` exposes).
        requests: ``poolkit_requests_total{route, status}``.
        duration: ``poolkit_request_duration_seconds{route}``.
        prompt_tokens, inputs: tokens and inputs of answered requests, per model.
        rejected: requests refused with 429; ``disconnects``: requests whose client went away.
        batch_size, queue_wait: per engine call and per request, folded in from each model's batcher.
        cache_hits, cache_misses: inputs the embedding cache answered, and those it did not.
    """

    def __init__(self, state: Any) -> None:
        self.state = state
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("poolkit_requests_total", "HTTP requests by route and status code.", ["route", "status"], registry=r)
        self.duration = Histogram(
            "poolkit_request_duration_seconds", "Time from the request's arrival to its response.", ["route"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.prompt_tokens = Counter("poolkit_prompt_tokens_total", "Prompt tokens of answered requests.", ["model"], registry=r)
        self.inputs = Counter("poolkit_inputs_total", "Inputs of answered requests.", ["model"], registry=r)
        self.rejected = Counter("poolkit_requests_rejected_total", "Requests refused with 429 (overload).", registry=r)
        self.disconnects = Counter("poolkit_client_disconnects_total", "Requests whose client went away first.", registry=r)
        self.cache_hits = Counter("poolkit_cache_hits_total", "Inputs answered from the embedding cache.", ["model"], registry=r)
        self.cache_misses = Counter(
            "poolkit_cache_misses_total", "Inputs the embedding cache did not hold (run by the model).", ["model"], registry=r
        )
        r.register(_StateCollector(state))
        ProcessCollector(registry=r)  # process_resident_memory_bytes and friends (poolkit bench-serve reads it)
        self.batch_size = Histogram("poolkit_batch_size", "Inputs per engine call.", ["model"], buckets=_BATCH_BUCKETS, registry=r)
        self.queue_wait = Histogram(
            "poolkit_queue_wait_seconds", "Time requests waited for the model.", ["model"], buckets=_LATENCY_BUCKETS, registry=r
        )
        self._exposed = _WithoutCreated(r)
        self._series: dict[tuple[Any, tuple[str, ...]], Any] = {}

    def series(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, kept: prometheus_client's lookup is several Python calls,
        which every request paid for each series it counts (routes, statuses and models are few)."""
        child = self._series.get((metric, labels))
        if child is None:
            child = self._series[(metric, labels)] = metric.labels(*labels)
        return child

    def observe(self, route: str, status: int, seconds: float) -> None:
        """Count a finished request and its latency."""
        self.series(self.requests, route, str(status)).inc()
        self.series(self.duration, route).observe(seconds)

    def fold(self) -> None:
        """Move each model's batcher's per-batch samples into histograms (so its lists stay short)."""
        for model in self.state.models:
            batcher: Batcher | None = model.batcher
            if batcher is None or not (batcher.stats.batch_sizes or batcher.stats.queue_seconds):
                continue
            stats, label = batcher.stats, _label(model)
            for samples, histogram in ((stats.batch_sizes, self.batch_size), (stats.queue_seconds, self.queue_wait)):
                n = len(samples)
                child = self.series(histogram, label)
                for value in samples[:n]:
                    child.observe(value)
                del samples[:n]

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric, after folding in the batchers' samples."""
        self.fold()
        return _BUCKET_LABELS.sub(rb"\1\3,\2}", generate_latest(self._exposed))
