"""The scale section of ``make bench``: the list and search endpoints at 10 k and 1 M rows.

For each size: a fresh database, migrated, seeded by SQL through the public columns (items,
heroes and notifications, ``SCALE_SEED`` shows the vocabulary), analysed; then each endpoint is
called sequentially over one keep-alive connection and its p50 printed, beside the figure of
the smaller size. The plan trap: many runs of one search, then a rare value, on a pool small
enough that every connection has run the statement more than five times. The claim: the
worker's claim query with 100 k notifications due (half the rows at a size below 200 k), in a
transaction rolled back each time.

    PYTHONPATH=infra/local:tests/load uv run --frozen python tests/load/scale.py
    SCALE_SIZES=10000,1000000 SCALE_REQUESTS=101 (the defaults)
"""

from __future__ import annotations

import asyncio
import http.client
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import timedelta
from pathlib import Path

from daemons import (
    PostgresServer,
    find_postgres_bindir,
    free_port,
    postgres_os_user,
    spawn_child,
    stop_child,
    wait_answering,
)

SIZES = [int(size) for size in os.environ.get("SCALE_SIZES", "10000,1000000").split(",")]
REQUESTS = int(os.environ.get("SCALE_REQUESTS", "101"))
DUE = int(os.environ.get("SCALE_DUE", "100000"))
# Runs of one search before the rare value: over a pool of two connections, each runs the
# statement well past the five executions after which Postgres may keep a generic plan.
TRAP_RUNS = 30

ADJECTIVES = "ARRAY['red','blue','green','small','large','old','new','bright','dark','warm']"
# 150 made-up words of three syllables ("dilozu"): each in about 0.67 % of the names (the
# mid-frequency search of the issue), each of their trigrams in at most four words, as in
# names people write. (Until 2026-12-04 they were noun001-noun150: "nou" and "oun" in every
# name, so a search for one read two posting lists as long as the table; README, below.)
SYLLABLES = "ba ce di fo gu ha je ki lo mu na pe ri so tu va we xi yo zu".split()  # noqa: SIM905
WORDS = [
    SYLLABLES[n % 20] + SYLLABLES[(n // 20 + 3 * n) % 20] + SYLLABLES[(7 * n + 5) % 20]
    for n in range(150)
]
NOUNS = "ARRAY[" + ",".join(f"'{word}'" for word in WORDS) + "]"
MID = WORDS[42]  # dilozu
TRAP = WORDS[7]  # kicetu
SEED_ITEMS = """
INSERT INTO items (name, description, price, tax, version, created_at, updated_at)
SELECT a[1 + g % 10] || ' ' || w[1 + (g::bigint * 7919) % 150] || ' lamp' || g,
       CASE WHEN g % 3 = 0 THEN 'seeded item ' || g END,
       (1 + g % 100000) / 100.0, CASE WHEN g % 2 = 0 THEN 0.5 END,
       1, now(), now()
FROM generate_series(1, ROWS) g, (SELECT ADJECTIVES AS a, NOUNS AS w) v
"""
# First names: 100, each about 1 % of the heroes; "Ada" among them.
SEED_HEROES = """
INSERT INTO heroes (name, secret_name, age, version, created_at, updated_at)
SELECT f[1 + g % 100] || ' ' || 'Hero' || g, 'secret' || g, g % 120, 1, now(), now()
FROM generate_series(1, ROWS) g,
     (SELECT array_agg(CASE n WHEN 1 THEN 'Ada' ELSE 'First' || n END) AS f
      FROM generate_series(1, 100) n) v
"""
# Delivered notifications, the last DUE of them queued and due (when the size allows).
SEED_NOTIFICATIONS = """
INSERT INTO notifications (id, channel, recipient, subject, body, status, attempts,
                           next_attempt_at, created_at, updated_at, delivered_at)
SELECT ('0190' || lpad(to_hex(g), 28, '0'))::uuid, 'email', 'user' || g || '@example.com',
       'Hello', 'Body ' || g,
       CASE WHEN g > ROWS - DUE_ROWS THEN 'queued' ELSE 'delivered' END,
       CASE WHEN g > ROWS - DUE_ROWS THEN 0 ELSE 1 END,
       now() - interval '1 hour' + g * interval '1 millisecond', now(), now(),
       CASE WHEN g > ROWS - DUE_ROWS THEN NULL ELSE now() END
FROM generate_series(1, ROWS) g
"""


def endpoints(rows: int) -> dict[str, str]:
    """Name → path of every list and search measured."""
    return {
        "items: first page": "/items",
        "items: deep cursor": f"/items?cursor={_cursor(rows // 2)}",
        "items: price range": "/items?min_price=10&max_price=10.5",
        "items: q frequent (10 %)": "/items?q=green",
        "items: q mid (0.7 %)": f"/items?q={MID}",
        "items: q rare (1 row)": f"/items?q=lamp{rows // 3}x",
        "items: q absent": "/items?q=qqqzzz",
        "items: q + price": f"/items?q={MID}&max_price=50",
        "heroes: first page": "/heroes",
        "heroes: name": f"/heroes?name=Ada%20Hero{rows // 100 * 100}",
        "heroes: name_prefix (1 %)": "/heroes?name_prefix=Ada",
        "heroes: name_prefix absent": "/heroes?name_prefix=Zzz",
        "heroes: age range": "/heroes?min_age=30&max_age=31",
        "notifications: first page": "/notifications",
        "notifications: queued": "/notifications?status=queued",
    }


# The plan trap: (name, the search run TRAP_RUNS times, then the rare one measured).
TRAPS = (
    (f"items: q absent after 30 × q={TRAP}", f"/items?q={TRAP}", "/items?q=qqqzzz"),
    (
        f"items: q + price after 30 × q={TRAP}",
        f"/items?q={TRAP}",
        f"/items?q={MID}&max_price=50",
    ),
    ("heroes: prefix absent after 30 × Ada", "/heroes?name_prefix=Ada", "/heroes?name_prefix=Zzz"),
)


def _cursor(after: int) -> str:
    from regatta.common.http.pagination import encode_cursor  # noqa: PLC0415

    return encode_cursor(after)


def p50_ms(port: int, path: str, requests: int = REQUESTS) -> float:
    """Sequential GETs over one keep-alive connection; the median in milliseconds."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    times = []
    try:
        for _ in range(requests):
            start = time.perf_counter()
            connection.request("GET", path)
            response = connection.getresponse()
            response.read()
            times.append((time.perf_counter() - start) * 1000)
            if response.status != 200:
                msg = f"{path}: {response.status}"
                raise RuntimeError(msg)
    finally:
        connection.close()
    return statistics.median(times)


def seed(postgres: PostgresServer, database: str, rows: int) -> float:
    """Fill the three tables by SQL; the seconds it took."""
    start = time.monotonic()
    due = min(DUE, rows // 2)
    for template in (SEED_ITEMS, SEED_HEROES, SEED_NOTIFICATIONS):
        sql = template.replace("ADJECTIVES", ADJECTIVES).replace("NOUNS", NOUNS)
        sql = sql.replace("DUE_ROWS", str(due)).replace("ROWS", str(rows))
        postgres.psql(sql, database=database)
    postgres.psql("VACUUM ANALYZE", database=database)
    return time.monotonic() - start


async def claim_p50_ms(url: str) -> float:
    """The worker's claim of one batch, with DUE due, each in a transaction rolled back."""
    from regatta.common.data.db import Database, create_engine  # noqa: PLC0415
    from regatta.notifications import repository  # noqa: PLC0415
    from regatta.notifications.settings import NotificationsSettings  # noqa: PLC0415

    settings = NotificationsSettings(database_url=url, db_pool_size=1)
    database = Database(create_engine(settings))
    times = []
    try:
        for _ in range(REQUESTS):
            async with database.sessions() as session:
                start = time.perf_counter()
                async with session.begin():
                    claimed = await repository.claim_due(
                        session, worker="scale", batch=20, lease=timedelta(seconds=60)
                    )
                    times.append((time.perf_counter() - start) * 1000)
                    assert len(claimed) == 20  # a benchmark of nothing is no figure
                    await session.rollback()
    finally:
        await database.close()
    return statistics.median(times)


def serve(argv: list[str], env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    """Start a service process and wait until it answers."""
    process = spawn_child(argv, log_path=log, env=env)
    try:
        wait_answering(process, f"http://127.0.0.1:{port}/livez", log_path=log)
    except BaseException:
        stop_child(process)
        raise
    return process


def measure(
    rows: int, env: dict[str, str], postgres: PostgresServer, work: Path
) -> dict[str, float]:
    """Every figure at one size."""
    database = postgres.create_database()
    url = postgres.url(database)
    env = {**env, "DATABASE_URL": url}
    for service in ("items", "heroes", "notifications"):
        subprocess.run([sys.executable, "-m", f"regatta.{service}.migrate"], env=env, check=True)
    seconds = seed(postgres, database, rows)
    print(f"  {rows:>9,} rows seeded and analysed in {seconds:.0f} s")
    figures: dict[str, float] = {}
    with ExitStack() as stack:
        ports = {}
        for service in ("items", "heroes", "notifications"):
            port = ports[service] = free_port()
            process = serve(
                [sys.executable, "-m", f"regatta.{service}"],
                {**env, "PORT": str(port)},
                port,
                work / f"{service}-{rows}.log",
            )
            stack.callback(stop_child, process)
        for name, path in endpoints(rows).items():
            figures[name] = p50_ms(ports[name.split(":")[0]], path)
        for name, trap, rare in TRAPS:
            port = ports[name.split(":")[0]]
            p50_ms(port, trap, TRAP_RUNS)
            figures[name] = p50_ms(port, rare)
    figures["worker: claim of 20 (SCALE_DUE due)"] = asyncio.run(claim_p50_ms(url))
    postgres.drop_database(database)
    return figures


def report(results: dict[int, dict[str, float]]) -> None:
    """One row per figure, one column per size, and the ratio of the last to the first."""
    sizes = list(results)
    header = " | ".join(f"{size:,} rows p50 ms" for size in sizes)
    print(f"\n| endpoint | {header} | × |")
    print("|---|" + "---|" * (len(sizes) + 1))
    names = list(results[sizes[0]])
    for index, name in enumerate(names):
        cells = [list(results[size].values())[index] for size in sizes]
        ratio = cells[-1] / cells[0]
        print(f"| {name} | " + " | ".join(f"{cell:.2f}" for cell in cells) + f" | {ratio:.2f} |")


def run(env: dict[str, str], postgres: PostgresServer, work: Path) -> None:
    """The scale section: every size, then the table."""
    print(f"\nscale: {', '.join(f'{size:,}' for size in SIZES)} rows; p50 of {REQUESTS} requests")
    results = {rows: measure(rows, env, postgres, work) for rows in SIZES}
    report(results)


def main() -> int:
    """Run the scale section alone, on a private Postgres."""
    work = Path(tempfile.mkdtemp(prefix="regatta-scale-"))
    with ExitStack() as stack:
        postgres = stack.enter_context(PostgresServer(find_postgres_bindir(), postgres_os_user()))
        postgres.start()
        env = {
            **os.environ,
            "ENVIRONMENT": "development",
            "RUN_MIGRATIONS_ON_START": "false",
            "LOG_LEVEL": "WARNING",
            # Two connections: every one of them runs the trap's search many times.
            "DB_POOL_SIZE": "2",
        }
        run(env, postgres, work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
