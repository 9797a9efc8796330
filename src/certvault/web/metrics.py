"""Prometheus metrics. With several worker processes, `serve` sets PROMETHEUS_MULTIPROC_DIR and
the collectors add up every worker's numbers."""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

REQUESTS = Counter("certvault_http_requests_total", "HTTP requests", ["method", "route", "status"])
LATENCY = Histogram("certvault_http_request_seconds", "HTTP request latency", ["method", "route"])
ARCHIVES = Counter("certvault_archives_total", "Keys archived")
RELEASES = Counter("certvault_releases_total", "Keys released")
REFUSALS = Counter("certvault_refusals_total", "Refused archive or release attempts", ["action"])


def observe_request(method: str, route: str, status: int, seconds: float) -> None:
    REQUESTS.labels(method, route, str(status)).inc()
    LATENCY.labels(method, route).observe(seconds)


def render() -> tuple[bytes, str]:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    from prometheus_client import REGISTRY

    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
