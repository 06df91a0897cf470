"""The delivery process's Prometheus metrics, on WEBHOOK_METRICS_PORT (0: none), served by
`worker.metrics_server.serve_metrics` from its event loop."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 7200, 36000, 86400)


class WebhookMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.delivered = Counter(
            "spp_webhooks_delivered", "Events delivered (a 2xx answer), by type.", ["type"], registry=self.registry
        )
        self.failed_attempts = Counter(
            "spp_webhooks_failed_attempts",
            "Attempts that failed, by reason: the answer's status class (3xx, 4xx, 5xx) or the error kind.",
            ["reason"],
            registry=self.registry,
        )
        self.given_up = Counter(
            "spp_webhooks_given_up",
            "Events given up: retries past WEBHOOK_RETRY_HOURS, 410 Gone, or an address refused.",
            registry=self.registry,
        )
        self.dropped = Counter(
            "spp_webhooks_dropped",
            "Events dropped unsent: their job or batch was erased or expired, or its webhook does not want them.",
            registry=self.registry,
        )
        self.latency = Histogram(
            "spp_webhooks_delivery_seconds",
            "From the end of the job (or batch) to its delivery, retries included.",
            buckets=_SECONDS,
            registry=self.registry,
        )
        self.attempt_seconds = Histogram(
            "spp_webhooks_attempt_seconds",
            "Duration of one attempt, from resolving the host to the answer.",
            buckets=_SECONDS[:12],
            registry=self.registry,
        )
        self.in_flight = Gauge("spp_webhooks_in_flight", "Deliveries running now.", registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)
