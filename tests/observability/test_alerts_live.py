"""The alerts that watch for silence fire when their target goes silent, on a real Prometheus.

The deployment of ``test_prometheus`` (items, heroes, the notifications API and its worker as
separate processes on Postgres and Redis, rate limiting on), a Prometheus scraping them every
second and evaluating the shipped rules with their ``for:`` durations dropped (promtool's unit
tests cover those): then the worker is killed, items stopped and Redis stopped, and each
alert must fire for what was stopped.
"""

from __future__ import annotations

import signal
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from daemons import RedisServer

from tests.observability.conftest import binary
from tests.observability.test_prometheus import (
    PROCESSES,
    READY_SECONDS,
    RULES,
    WORKER,
    deployment,
    query,
    run_otlp_sink,
    service_env,
    start_prometheus,
    start_services,
    wait_until,
)

pytestmark = pytest.mark.postgres

ALERT_SECONDS = 30.0


def immediate_rules(directory: Path) -> list[Path]:
    """The shipped rule files without ``for:``: an alert fires at its first true evaluation."""
    copies = []
    for path in RULES:
        document: dict[str, Any] = yaml.safe_load(path.read_text())
        for group in document["groups"]:
            for rule in group["rules"]:
                rule.pop("for", None)
        copy = directory / f"immediate-{path.name}"
        copy.write_text(yaml.safe_dump(document))
        copies.append(copy)
    return copies


async def firing(client: httpx.AsyncClient, prometheus: str, alert: str) -> list[dict[str, str]]:
    series = await query(client, prometheus, f'ALERTS{{alertname="{alert}", alertstate="firing"}}')
    return [s["metric"] for s in series]


async def evaluated_since(client: httpx.AsyncClient, prometheus: str, moment: float) -> bool:
    """Every rule group has been evaluated since ``moment`` (a Unix time)."""
    response = await client.get(f"{prometheus}/api/v1/rules")
    response.raise_for_status()
    groups = response.json()["data"]["groups"]
    return bool(groups) and all(
        datetime.fromisoformat(group["lastEvaluation"]).timestamp() > moment for group in groups
    )


async def test_dead_man_queue_stuck_and_fail_open_alerts_fire_when_their_target_stops(
    postgres_url: str, redis_server: RedisServer, redis_url: str, tmp_path: Path
) -> None:
    executable = binary("prometheus")
    async with run_otlp_sink() as sink:
        with deployment(tmp_path, service_env(postgres_url, redis_url, sink)) as running:
            await start_services(running)
            prometheus = start_prometheus(running, executable, immediate_rules(tmp_path))
            async with httpx.AsyncClient(timeout=5) as client:

                async def all_up() -> bool:
                    try:
                        up = await query(client, prometheus, "regatta_up == 1")
                    except (httpx.TransportError, AssertionError):
                        return False  # Prometheus answers 503 until its storage is ready
                    return len(up) == len(PROCESSES)

                await wait_until(all_up, what="every process up", within=READY_SECONDS, children=[])
                # An evaluation from before the last process was first scraped (the API up, its
                # worker not yet) may have left an alert firing: judge only evaluations that
                # saw every process (one interval of margin past the moment they all were up).
                seen_up = time.time() + 1.0
                await wait_until(
                    lambda: evaluated_since(client, prometheus, seen_up),
                    what="the rules evaluated with every process up",
                    within=ALERT_SECONDS,
                    children=[],
                )

                async def fires(alert: str, **labels: str) -> None:
                    async def check() -> bool:
                        return any(
                            labels.items() <= metric.items()
                            for metric in await firing(client, prometheus, alert)
                        )

                    await wait_until(
                        check, what=f"{alert} {labels} firing", within=ALERT_SECONDS, children=[]
                    )

                # A notification is accepted; with the worker alive nothing is stuck or down.
                notifications = f"{running.child('notifications').url}/notifications"
                accepted = await client.post(
                    notifications,
                    json={"channel": "email", "to": "a@example.com", "subject": "s", "body": "b"},
                )
                assert accepted.status_code == 202, accepted.text
                for alert in (
                    "RegattaWorkloadDown",
                    "RegattaNotificationsWorkersDown",
                    "RegattaDeliveryQueueStuck",
                    "RegattaRateLimiterFailingOpen",
                ):
                    assert await firing(client, prometheus, alert) == [], alert

                # Every worker killed: the worker tier is down and the queue is stuck.
                running.child(WORKER).process.send_signal(signal.SIGKILL)
                await fires("RegattaWorkloadDown", service_name=WORKER)
                await fires("RegattaNotificationsWorkersDown")
                await fires("RegattaDeliveryQueueStuck")

                # A service stopped: its dead-man alert.
                running.child("items").process.send_signal(signal.SIGTERM)
                await fires("RegattaWorkloadDown", service_name="items")

                # Redis stopped: the rate limiter lets requests through unchecked.
                redis_server.stop()
                heroes = f"{running.child('heroes').url}/heroes"
                for _ in range(20):
                    await client.get(heroes)
                await fires("RegattaRateLimiterFailingOpen", service_name="heroes")
