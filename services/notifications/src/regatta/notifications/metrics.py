"""What the notifications workers export: deliveries, their queue, and the events they consume.

Only a process running the workers (``regatta.notifications.worker``, or the embedded app)
exports these, from the moment its workers start: with every worker gone the series vanish
(the dead-man alerts see it) instead of reading 0. In such a process zero is an answer, so
every delivery outcome exists before the first attempt.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from regatta.common.telemetry.metrics import LAG_BUCKETS, LATENCY_BUCKETS

ATTEMPT_BUCKETS: Final = (1, 2, 3, 4, 5, 6, 8, 10, 15, 20, 50, 100)
CHANNELS: Final = ("email", "webhook")
OUTCOMES: Final = ("delivered", "retry", "failed")


class WorkerMetrics:
    """The workers' metrics, in the app's registry (``PlatformMetrics.part(WorkerMetrics)``)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.deliveries = Counter(
            "regatta_deliveries_total",
            "Delivery attempts, by channel and outcome (delivered, retry, failed).",
            ["channel", "outcome"],
            registry=r,
        )
        self.attempt_duration = Histogram(
            "regatta_delivery_attempt_duration_seconds",
            "Duration of one delivery attempt (SMTP conversation or webhook request).",
            ["channel"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.latency = Histogram(
            "regatta_delivery_latency_seconds",
            "Time from a notification's acceptance to its final outcome (delivered or failed).",
            ["channel", "outcome"],
            buckets=LAG_BUCKETS,
            registry=r,
        )
        self.attempts = Histogram(
            "regatta_delivery_attempts",
            "Attempts a notification took to reach its final outcome.",
            ["channel", "outcome"],
            buckets=ATTEMPT_BUCKETS,
            registry=r,
        )
        self.backlog = Gauge(
            "regatta_delivery_backlog",
            "Notifications due for delivery and waiting for a worker.",
            multiprocess_mode="livemax",
            registry=r,
        )
        self.oldest_due = Gauge(
            "regatta_delivery_oldest_due_seconds",
            "How long the longest-waiting due notification has waited (0 when none).",
            multiprocess_mode="livemax",
            registry=r,
        )
        self.stream_lag = Gauge(
            "regatta_stream_consumer_lag",
            "Stream entries not yet read by the consumer group.",
            ["group"],
            multiprocess_mode="livemax",
            registry=r,
        )
        self.stream_pending = Gauge(
            "regatta_stream_pending",
            "Stream entries read by the consumer group but not yet acknowledged.",
            ["group"],
            multiprocess_mode="livemax",
            registry=r,
        )
        self.events_consumed = Counter(
            "regatta_events_consumed_total",
            "Platform events handled by a consumer group, by event type.",
            ["group", "type"],
            registry=r,
        )
        self.event_lag = Histogram(
            "regatta_event_lag_seconds",
            "Time from an event's commit to its handling by the consumer group.",
            ["group"],
            buckets=LAG_BUCKETS,
            registry=r,
        )
        for channel in CHANNELS:
            for outcome in OUTCOMES:
                self.deliveries.labels(channel, outcome)
