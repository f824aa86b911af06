"""Prometheus metrics, served at TF Serving's path ``/monitoring/prometheus/metrics``.

Each server owns its registry (tests run several servers in one process). Names are
``sightline_serving_*``; TF Serving's own ``:tensorflow:serving:*`` series are not
reproduced (their labels differ and they need a monitoring config there).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

PATH = "/monitoring/prometheus/metrics"
_LATENCY_BUCKETS = (.001, .002, .003, .005, .0075, .01, .015, .02, .03, .05, .075, .1, .15,
                    .2, .3, .5, .75, 1.0, 2.0, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128, 256, 512, 1024)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "sightline_serving_requests", "Predict/metadata/status requests by outcome",
            ["model", "version", "signature", "api", "status"], registry=r)
        self.latency = Histogram(
            "sightline_serving_request_latency_seconds",
            "Time from request arrival to response, predict requests",
            ["model", "version", "signature", "api"], buckets=_LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram(
            "sightline_serving_batch_size", "Requests' items per executed batch (before "
            "padding)", ["model", "version", "signature"], buckets=_BATCH_BUCKETS, registry=r)
        self.queue_depth = Gauge(
            "sightline_serving_queue_depth", "Requests queued for batching, or in flight "
            "when unbatched",
            ["model", "version", "signature"], registry=r)
        self.model_loads = Counter(
            "sightline_serving_model_loads", "Version load attempts by outcome",
            ["model", "outcome"], registry=r)
        self.loaded_versions = Gauge(
            "sightline_serving_loaded_versions", "Versions available for inference",
            ["model"], registry=r)
        self.version_available = Gauge(
            "sightline_serving_version_available", "1 while the version serves",
            ["model", "version"], registry=r)
        self.log_records = Counter(
            "sightline_serving_request_log_records", "Request log records by outcome "
            "(written, dropped: buffer full, error: write failed)",
            ["model", "outcome"], registry=r)
        self.shadow_requests = Counter(
            "sightline_serving_shadow_requests", "Shadow copies of stable traffic run on the "
            "canary, by outcome (ok, error, dropped: canary or shadow queue full)",
            ["model", "version", "outcome"], registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
