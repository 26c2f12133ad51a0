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

import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
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
    wait_answering,
)

HERE = Path(__file__).parent
SECONDS = int(os.environ.get("BENCH_SECONDS", "5"))
SOAK_SECONDS = int(os.environ.get("BENCH_SOAK_SECONDS", "60"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "32"))
SCALE = os.environ.get("BENCH_SCALE", "1") != "0"
# Which client carries the items servers' per-request Redis commands: the service's own
# (redis/pipelined.py), or redis-py for comparison (redis_py_serve.py).
REDIS_CLIENTS = {"pipelined": "regatta.items", "redis-py": "redis_py_serve"}
REDIS_CLIENT = os.environ.get("BENCH_REDIS_CLIENT", "pipelined")
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


def serve(
    argv: list[str], env: dict[str, str], port: int, log: Path, ready: str
) -> subprocess.Popen[bytes]:
    """Start a server process on CPU 0 and wait until it answers."""
    if shutil.which("taskset"):
        argv = ["taskset", "-c", "0", *argv]
    process = spawn_child(argv, log_path=log, env=env)
    wait_answering(process, f"http://127.0.0.1:{port}{ready}", log_path=log)
    return process


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
    cost: Cost


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


@dataclass(frozen=True)
class Counters:
    """What the platform has spent so far: server CPU, Postgres statements, Redis commands."""

    cpu_seconds: float
    statements: int
    commands: int


@dataclass(frozen=True)
class Probe:
    """Reads :class:`Counters` of one server process and the run's Postgres and Redis."""

    pid: int
    postgres: PostgresServer
    database: str
    redis: RedisServer

    def read(self) -> Counters:
        """The counters now (each read costs one statement and one command: subtracted)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = int(fields[11]) + int(fields[12])  # utime + stime (fields 14 and 15)
        statements = int(
            self.postgres.psql(
                "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements", database=self.database
            ).strip()
        )
        info = self.redis.command("INFO", "stats").decode()
        commands = int(re.search(r"total_commands_processed:(\d+)", info).group(1))  # type: ignore[union-attr]
        return Counters(ticks / os.sysconf("SC_CLK_TCK"), statements, commands)


@dataclass(frozen=True)
class Cost:
    """Per request of one run: server CPU (µs), Postgres statements, Redis commands."""

    cpu_us: float
    statements: float
    commands: float


def costed(probe: Probe, run: Callable[[], Figure], seconds: int = SECONDS) -> tuple[Figure, Cost]:
    """``run``, with what each of its requests cost the server, Postgres and Redis.

    The counters include what runs beside the requests (the outbox relay's polls, a pool
    sample): a per-request share of it, as a replica pays it.
    """
    before = probe.read()
    figure = run()
    after = probe.read()
    requests = max(figure.rps * seconds, 1.0)
    return figure, Cost(
        cpu_us=(after.cpu_seconds - before.cpu_seconds) / requests * 1e6,
        statements=max(after.statements - before.statements - 1, 0) / requests,
        commands=max(after.commands - before.commands - 1, 0) / requests,
    )


def measure(endpoint: Endpoint, f_url: str, round_: int, probe: Probe) -> Triple:
    """F, ours and naive on ``endpoint``, back to back (seconds apart, not minutes)."""
    get = GET_SCRIPT.format(items=SEED_ITEMS, etag="nil")
    costs: list[Cost] = []

    def ours() -> Figure:
        figure, cost = costed(probe, lambda: wrk(endpoint.name, endpoint.ours, endpoint.script()))
        costs.append(cost)
        return figure

    runs: dict[str, Callable[[], Figure]] = {
        "f": lambda: wrk(f"F {endpoint.name}", f_url + "/", get),
        "ours": ours,
        "naive": lambda: wrk(f"naive {endpoint.name}", endpoint.naive, endpoint.naive_script()),
    }
    figures = {who: runs[who]() for who in _ORDERS[round_ % len(_ORDERS)]}
    return Triple(f=figures["f"], ours=figures["ours"], naive=figures["naive"], cost=costs[0])


def _items_module() -> str | None:
    """The module the items servers run, or None after saying what is missing."""
    if shutil.which("wrk") is None:
        print("wrk is missing: apt-get install wrk")
        return None
    module = REDIS_CLIENTS.get(REDIS_CLIENT)
    if module is None:
        print(f"BENCH_REDIS_CLIENT is one of {', '.join(REDIS_CLIENTS)}, not {REDIS_CLIENT!r}")
    return module


def main() -> int:
    """Run every figure and print the table."""
    module = _items_module()
    if module is None:
        return 1
    work = Path(tempfile.mkdtemp(prefix="regatta-bench-"))
    with ExitStack() as stack:
        # pg_stat_statements counts the statements each request costs (the Debian package has it).
        postgres = stack.enter_context(
            PostgresServer(
                find_postgres_bindir(),
                postgres_os_user(),
                settings={"shared_preload_libraries": "pg_stat_statements"},
            )
        )
        postgres.start()
        redis = stack.enter_context(RedisServer(find_redis()))
        redis.start()
        database = postgres.create_database()
        postgres.psql("CREATE EXTENSION pg_stat_statements", database=database)
        database_url = postgres.url(database)
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

        def start(
            name: str, argv: list[str], extra: dict[str, str] | None = None, ready: str = "/readyz"
        ) -> None:
            log = work / f"{name}.log"
            process = serve(argv, {**env, **(extra or {})}, ports[name], log, ready)
            processes[name] = process
            stack.callback(stop_child, process)

        items = [sys.executable, "-m", module]
        start("regatta", items, {"PORT": str(ports["regatta"])})
        seed(f"http://127.0.0.1:{ports['regatta']}")
        # The baselines and the naive implementation have no /readyz: the read they serve.
        start("B", uvicorn_argv("baselines:bare", ports["B"]), ready="/items/1")
        start("F", uvicorn_argv("baselines:minimal", ports["F"]), ready="/items/1")
        start("nocache", items, {"PORT": str(ports["nocache"]), "CACHE_ENABLED": "false"})
        start("naive", uvicorn_argv("naive:app", ports["naive"]), ready="/items/1")
        url = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}

        b = wrk("B", url["B"] + "/", GET_SCRIPT.format(items=SEED_ITEMS, etag="nil"))
        triples: dict[str, list[Triple]] = {endpoint.name: [] for endpoint in endpoints(url)}
        probes = {
            name: Probe(processes[name].pid, postgres, database, redis)
            for name in ("regatta", "nocache")
        }
        for round_ in range(ROUNDS):
            for endpoint in endpoints(url):
                probe = probes["nocache" if endpoint.ours == url["nocache"] + "/" else "regatta"]
                triples[endpoint.name].append(measure(endpoint, url["F"], round_, probe))
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
        # Stop the servers first: the backends' own figures want the machine to themselves.
        for process in processes.values():
            stop_child(process)
        capacity(triples, redis_gets_per_second(redis), postgres_reads_per_second(postgres))
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
    print(f"per-request Redis commands of the items servers through {REDIS_CLIENT}")
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
    print(
        "\ncost per request (medians): server CPU, Postgres statements, Redis commands; "
        "max req/s per server core = 1e6 / CPU µs"
    )
    for name, runs in triples.items():
        cpu = statistics.median(t.cost.cpu_us for t in runs)
        statements = statistics.median(t.cost.statements for t in runs)
        commands = statistics.median(t.cost.commands for t in runs)
        print(
            f"{name:20} {cpu:7.0f} µs CPU  {statements:5.2f} statements  "
            f"{commands:5.2f} commands  ({1e6 / cpu:6.0f} req/s per core)"
        )
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


# The request mix the capacity table is for: mostly reads served by the cache, as a read-heavy
# API sees them (a client revalidating, some misses, lists, a create in a hundred).
MIX = {
    "cached GET": 0.80,
    "304 revalidation": 0.10,
    "database point read": 0.05,
    "list page": 0.04,
    "POST /items": 0.01,
}
# The share of a core each component is planned to use (the HPA's CPU target for the pods).
PLANNED_UTILISATION = 0.6
RATES = (10_000, 100_000, 1_000_000)


def _pinned(argv: list[str]) -> list[str]:
    # Clients on CPU 1, as wrk: the server under test keeps CPU 0.
    return ["taskset", "-c", "1", *argv] if shutil.which("taskset") else argv


def redis_gets_per_second(redis: RedisServer) -> float:
    """GETs of a 200-byte value one Redis (one core) answers, 32 clients, no pipelining."""
    host, port = redis.url().split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
    argv = ["redis-benchmark", "-h", host, "-p", port, "-t", "get", "-d", "200", "-n", "300000"]
    output = subprocess.run(
        _pinned([*argv, "-c", "32", "-q"]), capture_output=True, text=True, check=True
    ).stdout
    return float(re.search(r"GET: ([\d.]+) requests per second", output).group(1))  # type: ignore[union-attr]


def postgres_reads_per_second(postgres: PostgresServer) -> float:
    """Point reads by primary key Postgres answers on this machine (pgbench -S, prepared)."""
    database = postgres.create_database()
    pgbench = str(find_postgres_bindir() / "pgbench")
    connection = ["-h", postgres.host, "-p", str(postgres.port), "-U", postgres.superuser]
    subprocess.run(
        [pgbench, *connection, "-i", "-q", "-s", "10", database], capture_output=True, check=True
    )
    output = subprocess.run(
        _pinned([pgbench, *connection, "-S", "-M", "prepared", "-c", "32", "-j", "1", "-T", "10",
                 database]),
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return float(re.search(r"tps = ([\d.]+)", output).group(1))  # type: ignore[union-attr]


def capacity(triples: dict[str, list[Triple]], redis_rate: float, postgres_rate: float) -> None:
    """What the measured costs ask of each component for 10 k, 100 k and 1 M requests/s."""
    cost = {
        name: Cost(
            cpu_us=statistics.median(t.cost.cpu_us for t in runs),
            statements=statistics.median(t.cost.statements for t in runs),
            commands=statistics.median(t.cost.commands for t in runs),
        )
        for name, runs in triples.items()
    }
    cpu_us = sum(share * cost[name].cpu_us for name, share in MIX.items())
    statements = sum(share * cost[name].statements for name, share in MIX.items())
    commands = sum(share * cost[name].commands for name, share in MIX.items())
    mix = ", ".join(f"{share:.0%} {name}" for name, share in MIX.items())
    print(f"\ncapacity for the mix {mix}:")
    print(
        f"per request {cpu_us:.0f} µs server CPU, {statements:.2f} Postgres statements, "
        f"{commands:.2f} Redis commands; one Redis core {redis_rate:.0f} GET/s (redis-benchmark), "
        f"Postgres here {postgres_rate:.0f} point reads/s (pgbench -S); "
        f"each planned at {PLANNED_UTILISATION:.0%}"
    )
    per_pod = PLANNED_UTILISATION * 1e6 / cpu_us
    per_redis = PLANNED_UTILISATION * redis_rate / commands if commands else float("inf")
    per_postgres = PLANNED_UTILISATION * postgres_rate / statements if statements else float("inf")
    print(
        f"one unit serves: a one-core pod {per_pod:.0f} req/s, a Redis core {per_redis:.0f} "
        f"req/s, this Postgres {per_postgres:.0f} req/s"
    )
    for rate in RATES:
        print(
            f"{rate:>9} req/s: {math.ceil(rate / per_pod):>5} pods (1 core each), "
            f"{math.ceil(rate / per_redis):>4} Redis cores, "
            f"{rate / per_postgres:6.1f} × this Postgres"
        )
    first = min(
        (("a pod", per_pod), ("Redis (one core)", per_redis), ("Postgres", per_postgres)),
        key=lambda unit: unit[1],
    )
    print(f"the first to saturate, unit for unit: {first[0]}")


if __name__ == "__main__":
    sys.exit(main())
