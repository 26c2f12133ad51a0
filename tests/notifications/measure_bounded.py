"""Bounded deliveries, measured on ``make up``'s process.

Run ``uv run python -m tests.notifications.measure_bounded [huge,drip-body,drip-headers]``.

Starts the embedded server (infra/embedded.py: API and delivery worker in one process, SQLite,
development settings, so webhooks may reach loopback) and two hostile receivers, then prints:

- the process's peak RSS (VmHWM) before and after a webhook whose receiver answers 200 with a
  1 GiB body, and how much of that body the receiver managed to send;
- how long an e-mail queued behind a receiver that answers ``Content-Length: 12`` and then
  drips one byte every 8 s waits to be delivered (and the same behind a receiver that drips its
  headers, which only the attempt's deadline ends).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from tests.notifications.hostile import HostileReceiver, run_hostile
from tests.notifications.receiver import free_port

ROOT = Path(__file__).resolve().parents[2]
GIB = 1024**3
CASES = ["huge", "drip-body", "drip-headers"]  # or name some: ... measure_bounded huge,drip-body


def _memory_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise LookupError(field)


async def _settled(client: httpx.AsyncClient, location: str, *, within: float) -> dict[str, str]:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        shown = (await client.get(location)).json()
        if shown["status"] in {"delivered", "failed"}:
            return dict(shown)
        await asyncio.sleep(0.02)
    raise TimeoutError(location)


async def _webhook(client: httpx.AsyncClient, receiver: HostileReceiver) -> str:
    accepted = await client.post(
        "/notifications", json={"channel": "webhook", "url": receiver.url(), "payload": {"n": 1}}
    )
    accepted.raise_for_status()
    return str(accepted.headers["location"])


async def _email_wait_behind(client: httpx.AsyncClient, mode: str) -> dict[str, object]:
    async with run_hostile(mode, interval=8) as receiver:
        webhook = await _webhook(client, receiver)
        await receiver.connected.wait()  # the slow attempt is under way
        queued = time.monotonic()
        accepted = await client.post(
            "/notifications",
            json={"channel": "email", "to": "a@example.com", "subject": "s", "body": "b"},
        )
        accepted.raise_for_status()
        await _settled(client, accepted.headers["location"], within=600)
        waited = time.monotonic() - queued
        while True:  # until the webhook's first attempt has ended, one way or the other
            shown = (await client.get(webhook)).json()
            if shown["status"] != "sending":
                break
            await asyncio.sleep(0.02)
        return {
            "receiver": mode,
            "email_waited_seconds": round(waited, 3),
            "webhook_first_attempt": shown["status"],
            "webhook_error": shown["last_error"],
            "webhook_first_attempt_seconds": round(time.monotonic() - queued, 3),
        }


async def measure(base_url: str, pid: int, cases: list[str]) -> dict[str, object]:
    """Run the measurements named by ``cases`` against ``base_url`` (process ``pid``)."""
    results: dict[str, object] = {}
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        if "huge" in cases:
            results["huge_reply"] = await _huge_reply(client, pid)
        for mode in ("drip-body", "drip-headers"):
            if mode in cases:
                results[mode] = await _email_wait_behind(client, mode)
    return results


async def _huge_reply(client: httpx.AsyncClient, pid: int) -> dict[str, object]:
    before = _memory_kib(pid, "VmHWM")
    async with run_hostile("huge", size=GIB) as huge:
        started = time.monotonic()
        final = await _settled(client, await _webhook(client, huge), within=600)
        took = time.monotonic() - started
    peak = _memory_kib(pid, "VmHWM")
    return {
        "declared_bytes": GIB,
        "receiver_sent_bytes": huge.sent,
        "status": final["status"],
        "seconds": round(took, 3),
        "peak_rss_mib_before": round(before / 1024, 1),
        "peak_rss_mib_after": round(peak / 1024, 1),
    }


def main() -> None:
    """Start the embedded server, measure, print JSON, stop it."""
    port = free_port()
    with tempfile.TemporaryDirectory() as directory:
        env = {
            **os.environ,
            "ENVIRONMENT": "development",
            "DATABASE_URL": f"sqlite+aiosqlite:///{directory}/regatta.db",
            "PORT": str(port),
            "LOG_LEVEL": "WARNING",
        }
        server = subprocess.Popen([sys.executable, str(ROOT / "infra" / "embedded.py")], env=env)
        try:
            base = f"http://127.0.0.1:{port}"
            for _ in range(600):
                try:
                    if httpx.get(f"{base}/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
            cases = sys.argv[1].split(",") if len(sys.argv) > 1 else CASES
            results = asyncio.run(measure(base, server.pid, cases))
            print(json.dumps(results, indent=2))  # noqa: T201
        finally:
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    main()
