"""Prometheus metrics. With several worker processes, `serve` sets PROMETHEUS_MULTIPROC_DIR and
the collectors add up every worker's numbers."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from certvault.services.kernel.ports import Ports
from certvault.services.vault import drill_record
from certvault.services.vault.drill_record import DrillRecord

log = logging.getLogger("certvault.metrics")

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


class _DrillCollector(Collector):
    """The verification drill's gauges, from its MAC-proven record (drill_record.py): every node
    reads the same record from the database, and a record that does not verify is not believed
    (``certvault_verify_record_intact`` 0, ``certvault_last_verify_ok`` 0, times 0)."""

    def __init__(self, record: DrillRecord) -> None:
        self.record = record

    def collect(self) -> Iterator[GaugeMetricFamily]:
        r = self.record

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, value=value)

        yield gauge(
            "certvault_verify_record_intact",
            "1 if the drill record verifies against the audit chain (or no drill ran yet)",
            0 if r.status == "broken" else 1,
        )
        yield gauge(
            "certvault_last_verify_ok",
            "1 if the last verification drill found no failures",
            1 if r.ok else 0,
        )
        # 0 for "never" or "not believed": an alert on the age of a time fires then too.
        for name, doc, field in (
            ("certvault_last_verify_timestamp_seconds", "End of the last drill", "finished_at"),
            (
                "certvault_last_full_verify_timestamp_seconds",
                "End of the last complete pass over every escrowed key",
                "last_full_pass_at",
            ),
        ):
            moment = r.time(field)
            yield gauge(name, doc, moment.timestamp() if moment else 0)
        if not r.intact:
            return
        failures = GaugeMetricFamily(
            "certvault_verify_failures", "Keys the last drill found broken", labels=["reason"]
        )
        for reason, count in r.reasons().items():
            failures.add_metric([reason], count)
        yield failures
        yield gauge("certvault_verify_keys_checked", "Keys the last drill opened", r.number("keys"))
        yield gauge(
            "certvault_verify_keys_destroyed",
            "Destroyed keys the last drill met",
            r.number("destroyed"),
        )


def drill_text(record: DrillRecord) -> bytes:
    """The drill's gauges in the Prometheus text format."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_DrillCollector(record))
    return generate_latest(registry)


def render_drill(ports: Ports) -> bytes:
    """The drill's gauges for ``/metrics``; an unreadable record counts as not intact."""
    try:
        record = drill_record.latest(ports)
    except Exception as exc:  # noqa: BLE001 - /metrics still answers; the gauges say not ok
        log.error("cannot read the verification record: %s", type(exc).__name__)
        record = DrillRecord("broken", problem="unreadable")
    return drill_text(record)
