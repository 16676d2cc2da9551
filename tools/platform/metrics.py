"""The local gateway's metrics in Prometheus text format (GET /_gateway/metrics): calls, instance
failures and latency per cord, fed by the gateway's observers (one `CallRecord` per call).

A private registry: the deploy module, imported by the gateway, imports the chutes SDK, whose own
metrics (`invocation_total`, ...) live in prometheus_client's global registry for the node's /_metrics.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder

# Seconds: calls range from milliseconds (JSON) to minutes (generation); the gateway allows 600.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
NO_CORD = "(none)"  # calls that matched no cord (404): one label, whatever path they asked for


class GatewayMetrics:
    """Counters and a histogram labelled by the cord's public method and path."""

    def __init__(self, cords: Iterable[tuple[str, str]] = (), in_flight: Callable[[], float] | None = None) -> None:
        self.registry = CollectorRegistry()
        labels = ["method", "cord"]
        self.calls = Counter("chutes_gateway_calls", "Calls through the local gateway, by the status the caller got",
                             [*labels, "status"], registry=self.registry)
        self.failures = Counter("chutes_gateway_instance_failures",
                                "Calls the instance failed (the Chutes gateway retries them and counts them "
                                "against the instance)", labels, registry=self.registry)
        self.latency = Histogram("chutes_gateway_call_duration_seconds",
                                 "Time from the call to the end of its answer", labels, buckets=BUCKETS,
                                 registry=self.registry)
        self.answer_bytes = Counter("chutes_gateway_answer_bytes", "Bytes of answers sent to callers", labels,
                                    registry=self.registry)
        if in_flight is not None:
            Gauge("chutes_gateway_in_flight", "Calls being served now", registry=self.registry).set_function(in_flight)
        for method, path in cords:  # every cord shows up before its first call
            self.failures.labels(method, path)
            self.latency.labels(method, path)

    def observe(self, call: Any) -> None:
        """A gateway observer: one finished call (tools.platform.gateway.CallRecord)."""
        labels = (call.method, call.path if call.cord else NO_CORD)
        self.calls.labels(*labels, str(call.status)).inc()
        self.latency.labels(*labels).observe(call.ms / 1000)
        self.answer_bytes.labels(*labels).inc(call.bytes)
        if call.failure:
            self.failures.labels(*labels).inc()

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The page and its content type: Prometheus text 0.0.4, or OpenMetrics when the scraper asks."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type
