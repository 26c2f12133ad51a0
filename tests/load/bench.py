"""The benchmark suite: ``make bench``. Prints figures; asserts nothing.

One server process on CPU 0, wrk on CPU 1 (`taskset`), Postgres and Redis private to the run.
Every figure is measured in the same run as the two baselines with the same wrk flags:
**B**, a bare Starlette JSON route, and **F**, a minimal FastAPI route with a response model
(``baselines.py``), and against the same endpoints written the common way (``naive.py``).
Each endpoint is measured back to back with F and the naive implementation, in BENCH_ROUNDS
rounds; each ratio compares figures of one such triple, and the table gives medians.

    make bench      # BENCH_SECONDS=5 per figure, BENCH_ROUNDS=3, BENCH_SOAK_SECONDS=60

Then the scale section (``scale.py``; ``BENCH_SCALE=0`` leaves it out).
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from daemons import (
    PostgresServer,
    RedisServer,
    find_postgres_bindir,
    find_redis,
    free_port,
    postgres_os_user,
    spawn_child,
    stop_child,
)

HERE = Path(__file__).parent
SECONDS = int(os.environ.get("BENCH_SECONDS", "5"))
SOAK_SECONDS = int(os.environ.get("BENCH_SOAK_SECONDS", "60"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "32"))
SCALE = os.environ.get("BENCH_SCALE", "1") != "0"
API_KEY = "bench-key"
SEED_ITEMS = 200

GET_SCRIPT = """
local n = 0
request = function()
  n = n % {items} + 1
  return wrk.format("GET", "/items/" .. n, {{["If-None-Match"] = {etag}}})
end
"""
# Every key is new (a run token from post_script() and a counter): these are creates, never
# replays. Lua's math.random is not seeded, so it cannot tell runs apart.
POST_SCRIPT = """
local n = 0
request = function()
  n = n + 1
  return wrk.format("POST", "/items", {{
    ["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer {key}",
    ["Idempotency-Key"] = "bench-{run}-" .. n,
  }}, '{{"name": "Bench item", "price": 9.99, "tax": 0.5}}')
end
"""


def post_script() -> str:
    """The POST script with keys no other run uses."""
    return POST_SCRIPT.format(key=API_KEY, run=uuid.uuid4().hex)


# Each connection waits delay_ms between a response and its next request. The first wait is
# drawn from [0, delay_ms]: connections that all started at once would stay in step and send
# their requests in bursts of CONNECTIONS, which measures the burst, not the load.
# Paced runs: within this share of the maximum of 60 %, after at most this many corrections.
PACED_BAND = 0.05
PACED_ATTEMPTS = 3
PACED_SUFFIX = """
local started = 0
delay = function()
  started = started + 1
  if started <= {connections} then return math.random(0, {delay_ms}) end
  return {delay_ms}
end
"""


def paced(name: str, url: str, script: Callable[[], str], maximum_rps: float) -> Figure:
    """wrk sending ``script`` at about 60 % of ``maximum_rps`` over CONNECTIONS connections.

    A connection's period is its wait plus the response time, which is not known beforehand:
    a run at wait = CONNECTIONS / rate measures it, and the next run waits that much less.
    The first run whose rate is within PACED_BAND of 60 % is the figure; when PACED_ATTEMPTS
    runs missed it, one more with the last correction is (the output shows its share).
    """
    target_ms = CONNECTIONS * 1000 / (0.6 * maximum_rps)  # the period that makes 60 %
    delay_ms = round(target_ms)  # wrk waits whole milliseconds
    for _ in range(PACED_ATTEMPTS):
        run = wrk(
            name, url, script() + PACED_SUFFIX.format(connections=CONNECTIONS, delay_ms=delay_ms)
        )
        if abs(run.rps / maximum_rps - 0.6) <= PACED_BAND:
            return run
        response_ms = max(CONNECTIONS * 1000 / run.rps - delay_ms, 0.0)
        delay_ms = max(round(target_ms - response_ms), 0)
    return wrk(
        name, url, script() + PACED_SUFFIX.format(connections=CONNECTIONS, delay_ms=delay_ms)
    )


@dataclass
class Figure:
    """One wrk run."""

    name: str
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


def _ms(text: str) -> float:
    found = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if found is None:
        msg = f"unexpected wrk latency {text!r}"
        raise ValueError(msg)
    value, unit = found.groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}[unit]


def wrk(name: str, url: str, script: str, *, seconds: int = SECONDS) -> Figure:
    """Run wrk on CPU 1 and parse requests/s, p50, p99 and non-2xx/3xx answers."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as handle:
        handle.write(script)
    argv = ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency", "-s", handle.name, url]
    if shutil.which("taskset"):
        argv = ["taskset", "-c", "1", *argv]
    output = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    if "Requests/sec" not in output or "50%" not in output:
        msg = f"wrk said:\n{output}"
        raise RuntimeError(msg)
    Path(handle.name).unlink()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"^\s*50%\s+(\S+)", output, re.MULTILINE).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s*99%\s+(\S+)", output, re.MULTILINE).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    socket_errors = re.search(r"Socket errors: (.*)", output)
    if socket_errors:
        print(f"  {name}: socket errors: {socket_errors.group(1)}")
    return Figure(name, rps, p50, p99, int(errors.group(1)) if errors else 0)


def serve(argv: list[str], env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    """Start a server process on CPU 0 and wait until it answers."""
    if shutil.which("taskset"):
        argv = ["taskset", "-c", "0", *argv]
    process = spawn_child(argv, log_path=log, env=env)
    deadline = time.monotonic() + 60
    last_error: OSError | None = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/items/1", timeout=2):
                return process
        except urllib.error.HTTPError:
            return process  # it answers (a 404 before seeding is an answer)
        except OSError as exc:
            last_error = exc
            if process.poll() is not None:
                msg = f"exited with {process.returncode}:\n{log.read_text()[-3000:]}"
                raise RuntimeError(msg) from None
            time.sleep(0.2)
    msg = f"no answer on port {port} ({last_error!r}):\n{log.read_text()[-3000:]}"
    raise RuntimeError(msg)


def rss_mib(pid: int) -> float:
    """Resident memory of a process (its children excluded)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def uvicorn_argv(app: str, port: int) -> list[str]:
    """One uvicorn process, the production loop and parser, no access log."""
    return [
        sys.executable, "-m", "uvicorn", app, "--port", str(port), "--loop", "uvloop",
        "--http", "httptools", "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip


@dataclass(frozen=True)
class Endpoint:
    """One figure: our URL and script, and the naive implementation's."""

    name: str
    ours: str
    naive: str
    script: Callable[[], str]
    naive_script: Callable[[], str]


@dataclass
class Triple:
    """F, ours and the naive implementation on one endpoint, measured back to back."""

    f: Figure
    ours: Figure
    naive: Figure


def endpoints(url: dict[str, str]) -> list[Endpoint]:
    """The five figures.

    The naive implementation has no cache and no ETags: its every GET is a database read,
    measured again beside each of ours.
    """
    get = GET_SCRIPT.format(items=SEED_ITEMS, etag="nil")
    revalidate = GET_SCRIPT.format(items=SEED_ITEMS, etag='"\\"1\\""')
    ours, naive = url["regatta"], url["naive"]
    return [
        Endpoint("cached GET", ours + "/", naive + "/", lambda: get, lambda: get),
        Endpoint("304 revalidation", ours + "/", naive + "/", lambda: revalidate, lambda: get),
        Endpoint(
            "database point read", url["nocache"] + "/", naive + "/", lambda: get, lambda: get
        ),
        Endpoint("list page", ours + "/items?limit=20", naive + "/items?limit=20", str, str),
        Endpoint("POST /items", ours + "/", naive + "/", post_script, post_script),
    ]


# The order of a triple rotates from round to round, so that no implementation is always the
# first (or last) to run after the machine changed its mind.
_ORDERS = (("f", "ours", "naive"), ("ours", "naive", "f"), ("naive", "f", "ours"))


def measure(endpoint: Endpoint, f_url: str, round_: int) -> Triple:
    """F, ours and naive on ``endpoint``, back to back (seconds apart, not minutes)."""
    get = GET_SCRIPT.format(items=SEED_ITEMS, etag="nil")
    runs = {
        "f": lambda: wrk(f"F {endpoint.name}", f_url + "/", get),
        "ours": lambda: wrk(endpoint.name, endpoint.ours, endpoint.script()),
        "naive": lambda: wrk(f"naive {endpoint.name}", endpoint.naive, endpoint.naive_script()),
    }
    figures = {who: runs[who]() for who in _ORDERS[round_ % len(_ORDERS)]}
    return Triple(**figures)


def main() -> int:
    """Run every figure and print the table."""
    if shutil.which("wrk") is None:
        print("wrk is missing: apt-get install wrk")
        return 1
    work = Path(tempfile.mkdtemp(prefix="regatta-bench-"))
    with ExitStack() as stack:
        postgres = stack.enter_context(PostgresServer(find_postgres_bindir(), postgres_os_user()))
        postgres.start()
        redis = stack.enter_context(RedisServer(find_redis()))
        redis.start()
        database_url = postgres.url(postgres.create_database())
        env = {
            **os.environ,
            "ENVIRONMENT": "production",
            "DATABASE_URL": database_url,
            "REDIS_URL": redis.url(),
            "API_KEYS": API_KEY,
            "RUN_MIGRATIONS_ON_START": "false",
            "LOG_LEVEL": "WARNING",
            # Rate limiting on, as the chart ships it, with quotas the benchmark never reaches:
            # every request pays for its Redis round trip.
            "RATE_LIMIT_ENABLED": "true",
            "RATE_LIMIT_READS": "1000000",
            "RATE_LIMIT_WRITES": "1000000",
            "PYTHONPATH": str(HERE),
        }
        subprocess.run([sys.executable, "-m", "regatta.items.migrate"], env=env, check=True)
        ports = {name: free_port() for name in ("B", "F", "regatta", "nocache", "naive")}
        processes = {}

        def start(name: str, argv: list[str], extra: dict[str, str] | None = None) -> None:
            process = serve(argv, {**env, **(extra or {})}, ports[name], work / f"{name}.log")
            processes[name] = process
            stack.callback(stop_child, process)

        start("regatta", [sys.executable, "-m", "regatta.items"], {"PORT": str(ports["regatta"])})
        seed(f"http://127.0.0.1:{ports['regatta']}")
        start("B", uvicorn_argv("baselines:bare", ports["B"]))
        start("F", uvicorn_argv("baselines:minimal", ports["F"]))
        start(
            "nocache",
            [sys.executable, "-m", "regatta.items"],
            {"PORT": str(ports["nocache"]), "CACHE_ENABLED": "false"},
        )
        start("naive", uvicorn_argv("naive:app", ports["naive"]))
        url = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}

        b = wrk("B", url["B"] + "/", GET_SCRIPT.format(items=SEED_ITEMS, etag="nil"))
        triples: dict[str, list[Triple]] = {endpoint.name: [] for endpoint in endpoints(url)}
        for round_ in range(ROUNDS):
            for endpoint in endpoints(url):
                triples[endpoint.name].append(measure(endpoint, url["F"], round_))
        get_script = GET_SCRIPT.format(items=SEED_ITEMS, etag="nil")
        maximum = {
            name: statistics.median(t.ours.rps for t in runs) for name, runs in triples.items()
        }
        f_maximum = statistics.median(t.f.rps for runs in triples.values() for t in runs)
        # Each paced figure with the maximum it is paced against; the same pacing against F
        # shows how much of the tail is the machine's and wrk's own.
        paced_runs = (
            ("cached GET", url["regatta"], lambda: get_script, maximum["cached GET"]),
            ("POST /items", url["regatta"], post_script, maximum["POST /items"]),
            ("F (baseline)", url["F"], lambda: get_script, f_maximum),
        )
        paced_figures = {
            name: (paced(f"{name} at 60%", base + "/", script, most), most)
            for name, base, script, most in paced_runs
        }
        regatta_pid = processes["regatta"].pid
        rss_after = rss_mib(regatta_pid)
        soak = wrk(
            "soak",
            url["regatta"] + "/",
            GET_SCRIPT.format(items=SEED_ITEMS, etag="nil"),
            seconds=SOAK_SECONDS,
        )
        rss_soaked = rss_mib(regatta_pid)
        report(b, triples, paced_figures, rss_after, rss_soaked, soak)
    shutil.rmtree(work, ignore_errors=True)
    if SCALE:
        # The scale section runs on its own Postgres (scale.py): lists and searches at 10 k
        # and 1 M rows, the plan trap, the worker's claim with 100 k due.
        subprocess.run([sys.executable, str(HERE / "scale.py")], check=True)
    return 0


def seed(base: str) -> None:
    """Create the items every GET script cycles through."""
    import json  # noqa: PLC0415

    for n in range(SEED_ITEMS):
        request = urllib.request.Request(  # noqa: S310 -- loopback
            base + "/items",
            data=json.dumps({"name": f"Seed {n}", "price": n + 1}).encode(),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10):  # noqa: S310
            pass


def _spread(values: list[float], digits: int) -> str:
    """The median of ``values`` and, after it, their lowest and highest."""
    return (
        f"{statistics.median(values):.{digits}f} "
        f"({min(values):.{digits}f}-{max(values):.{digits}f})"
    )


def report(  # noqa: PLR0917
    b: Figure,
    triples: dict[str, list[Triple]],
    paced: dict[str, tuple[Figure, float]],
    rss_after: float,
    rss_soaked: float,
    soak: Figure,
) -> None:
    """Print the table: medians over the rounds; each ratio between figures of one triple."""
    rounds = len(next(iter(triples.values())))
    print(
        f"\nwrk -t1 -c{CONNECTIONS} -d{SECONDS}s, server on CPU 0, wrk on CPU 1; "
        f"{rounds} rounds, each endpoint measured back to back with F and the naive "
        "implementation; medians (lowest-highest)"
    )
    latency = f"p50 {b.p50_ms:6.2f} ms  p99 {b.p99_ms:6.2f} ms"
    print(f"{'B (bare Starlette)':22} {b.rps:8.0f} req/s  {latency}")
    f_rps = [t.f.rps for runs in triples.values() for t in runs]
    print(f"{'F (minimal FastAPI)':22} {_spread(f_rps, 0)} req/s over {len(f_rps)} runs")
    print()
    columns = ("req/s", "× F", "p50 ms", "p99 ms", "non-2xx", "naive req/s", "× naive")
    widths = (16, 16, 7, 7, 7, 11, 16)
    print(f"{'endpoint':20} " + " ".join(f"{c:>{w}}" for c, w in zip(columns, widths, strict=True)))
    for name, runs in triples.items():
        cells = (
            _spread([t.ours.rps for t in runs], 0),
            _spread([t.ours.rps / t.f.rps for t in runs], 2),
            f"{statistics.median(t.ours.p50_ms for t in runs):.2f}",
            f"{statistics.median(t.ours.p99_ms for t in runs):.2f}",
            str(sum(t.ours.errors for t in runs)),
            f"{statistics.median(t.naive.rps for t in runs):.0f}",
            _spread([t.ours.rps / t.naive.rps for t in runs], 2),
        )
        print(f"{name:20} " + " ".join(f"{c:>{w}}" for c, w in zip(cells, widths, strict=True)))
    print("\npaced at about 60 % of each endpoint's maximum (wrk delay(), staggered starts):")
    for name, (fig, maximum) in paced.items():
        print(
            f"{name:24} {fig.rps:8.0f} req/s ({fig.rps / maximum:4.0%} of max)  "
            f"p50 {fig.p50_ms:6.2f} ms  p99 {fig.p99_ms:6.2f} ms  "
            f"p99/p50 {fig.p99_ms / fig.p50_ms:4.1f}  non-2xx {fig.errors}"
        )
    print(
        f"\nRSS of one replica after the runs: {rss_after:.1f} MiB; after a {SOAK_SECONDS}s soak "
        f"({soak.rps * SOAK_SECONDS:.0f} more requests): {rss_soaked:.1f} MiB "
        f"({(rss_soaked - rss_after) / rss_after * 100:+.1f} %)"
    )


if __name__ == "__main__":
    sys.exit(main())
