"""The local stack: the cluster's topology on one machine, from Debian's packages.

Postgres, Redis, two replicas of each API with production settings, the notifications worker,
nginx standing in for the ingress (path routing, upstream keep-alive, load balancing) and
Prometheus scraping everything (when installed) — all local processes on free ports.

    python infra/local/stack.py up      # start in the background; prints the gateway URL
    python infra/local/stack.py down    # stop everything
    python infra/local/stack.py run     # the same, in the foreground (Ctrl-C stops)

The end-to-end, reliability and benchmark suites start a :class:`Stack` themselves; the
reliability suite routes the services' database and Redis connections through fault-injecting
proxies (``dependency_port``).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

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

SERVICES = ("items", "heroes", "notifications")
READY_TIMEOUT_SECONDS = 90.0
# Longer than a replica's drain: SHUTDOWN_DELAY_SECONDS + GRACEFUL_SHUTDOWN_SECONDS + the
# background tasks' grace, with the defaults.
DRAIN_TIMEOUT_SECONDS = 45.0
STATE_DIR = Path(".stack")


@dataclass
class Child:
    """One process of the stack."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    port: int | None = None


@dataclass
class Stack:
    """Start and stop the whole local platform; ``gateway`` is nginx's base URL."""

    directory: Path
    replicas: int = 2
    api_key: str = field(default_factory=lambda: "stack-" + secrets.token_urlsafe(16))
    signing_secret: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    env: dict[str, str] = field(default_factory=dict)
    children: list[Child] = field(default_factory=list)
    upstreams: dict[str, list[int]] = field(default_factory=dict)
    gateway_port: int = 0
    worker_port: int = 0
    prometheus_port: int | None = None
    database_url: str = ""
    redis_url: str = ""
    # Given ("postgres" | "redis", the server's port), the port the services should connect
    # to instead: a proxy in front of the server. None: straight to the servers.
    dependency_port: Callable[[str, int], int] | None = None

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._postgres: PostgresServer | None = None
        self._redis: RedisServer | None = None
        # Children get SIGTERM when the *thread* that started them ends (PR_SET_PDEATHSIG is
        # per thread), so all of them are started from this one, which outlives them: the
        # stack may then be driven from any thread (asyncio.to_thread, say).
        self._spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stack-spawner")

    @property
    def postgres(self) -> PostgresServer:
        """The running Postgres server (for direct access, bypassing any proxy)."""
        if self._postgres is None:
            msg = "the stack is not running"
            raise RuntimeError(msg)
        return self._postgres

    @property
    def redis(self) -> RedisServer:
        """The running Redis server (for direct access, bypassing any proxy)."""
        if self._redis is None:
            msg = "the stack is not running"
            raise RuntimeError(msg)
        return self._redis

    @property
    def gateway(self) -> str:
        """The ingress URL everything is reached through."""
        return f"http://127.0.0.1:{self.gateway_port}"

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Bring everything up and wait until every replica is ready."""
        self._postgres = PostgresServer(find_postgres_bindir(), postgres_os_user())
        self._postgres.__enter__()
        self._postgres.start()
        self.database_url = self._postgres.url(
            self._postgres.create_database(), port=self._route("postgres", self._postgres.port)
        )
        self._redis = RedisServer(find_redis())
        self._redis.__enter__()
        self._redis.start()
        self.redis_url = self._redis.url(port=self._route("redis", self._redis.port))
        self._migrate()
        for service in SERVICES:
            self.upstreams[service] = [
                self._start_python(f"{service}-{n}", f"regatta.{service}", "PORT")
                for n in range(1, self.replicas + 1)
            ]
        self.worker_port = self._start_python(
            "worker", "regatta.notifications.worker", "WORKER_PORT"
        )
        for port in [p for ports in self.upstreams.values() for p in ports] + [self.worker_port]:
            self._wait_ready(port)
        self._start_nginx()
        self._start_prometheus()

    def stop(self) -> None:
        """Stop everything, newest first (draining side by side); servers last."""
        for child in reversed(self.children):
            if child.process.poll() is None:
                child.process.send_signal(_stop_signal(child.name))
        for child in reversed(self.children):
            stop_child(child.process, _stop_signal(child.name))
        self.children.clear()
        self._spawner.shutdown()
        self._spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stack-spawner")
        for server in (self._redis, self._postgres):
            if server is not None:
                server.close()
        self._redis = self._postgres = None

    def service_env(self) -> dict[str, str]:
        """The production settings every replica runs with."""
        return {
            **os.environ,
            "ENVIRONMENT": "production",
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis_url,
            "API_KEYS": self.api_key,
            "WEBHOOK_SIGNING_SECRET": self.signing_secret,
            "RUN_MIGRATIONS_ON_START": "false",
            "HOST": "127.0.0.1",
            "LOG_LEVEL": "WARNING",
            **self.env,
        }

    def child(self, name: str) -> Child:
        """A running child by name (``items-1``, ``worker``, ``nginx`` ...)."""
        # A copy (atomic): restarts in other threads may change the list meanwhile.
        return next(c for c in list(self.children) if c.name == name)

    def restart(self, name: str) -> None:
        """Stop one replica gracefully (SIGTERM: it drains) and start it again on its port."""
        child = self.child(name)
        if child.process.poll() is None:
            child.process.send_signal(signal.SIGTERM)
        try:
            child.process.wait(DRAIN_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            stop_child(child.process, signal.SIGKILL)
        self.children.remove(child)
        module = (
            "regatta.notifications.worker"
            if name == "worker"
            else f"regatta.{name.rsplit('-', 1)[0]}"
        )
        port_variable = "WORKER_PORT" if name == "worker" else "PORT"
        self._start_python(name, module, port_variable, port=child.port)
        assert child.port is not None  # noqa: S101 -- every Python child has a port
        self._wait_ready(child.port)

    def _spawn(
        self, argv: list[str], *, log_path: Path, env: dict[str, str]
    ) -> subprocess.Popen[bytes]:
        return self._spawner.submit(spawn_child, argv, log_path=log_path, env=env).result()

    def _route(self, dependency: str, port: int) -> int:
        return port if self.dependency_port is None else self.dependency_port(dependency, port)

    def _migrate(self) -> None:
        for service in SERVICES:
            result = subprocess.run(
                [sys.executable, "-m", f"regatta.{service}.migrate"],
                env=self.service_env(),
                capture_output=True,
                text=True,
                check=False,
                timeout=120,
            )
            if result.returncode != 0:
                msg = f"migrating {service} failed:\n{result.stderr[-3000:]}"
                raise RuntimeError(msg)

    def _start_python(
        self, name: str, module: str, port_variable: str, port: int | None = None
    ) -> int:
        port = port or free_port()
        log_path = self.directory / f"{name}.log"
        env = {**self.service_env(), port_variable: str(port)}
        process = self._spawn([sys.executable, "-m", module], log_path=log_path, env=env)
        self.children.append(Child(name, process, log_path, port))
        return port

    def _wait_ready(self, port: int) -> None:
        child = next(c for c in list(self.children) if c.port == port)
        wait_answering(
            child.process,
            f"http://127.0.0.1:{port}/readyz",
            log_path=child.log_path,
            within=READY_TIMEOUT_SECONDS,
        )

    def _start_nginx(self) -> None:
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        if not Path(nginx).exists():
            msg = "nginx is missing; install with: apt-get install nginx-light"
            raise RuntimeError(msg)
        self.gateway_port = free_port()
        temp = self.directory / "nginx-temp"
        temp.mkdir(exist_ok=True)
        config = self.directory / "nginx.conf"
        config.write_text(nginx_config(self.gateway_port, self.upstreams, self.directory))
        log_path = self.directory / "nginx.log"
        process = self._spawn(
            [
                nginx,
                "-c",
                str(config.resolve()),
                "-p",
                str(self.directory.resolve()),
                "-g",
                "daemon off;",
            ],
            log_path=log_path,
            env=dict(os.environ),
        )
        self.children.append(Child("nginx", process, log_path, self.gateway_port))
        wait_answering(process, f"{self.gateway}/gateway-health", log_path=log_path, within=10)

    def _start_prometheus(self) -> None:
        prometheus = shutil.which("prometheus")
        if prometheus is None:
            return  # optional here: the observability suite installs and checks it
        self.prometheus_port = free_port()
        targets = {
            service: [f"127.0.0.1:{port}" for port in ports]
            for service, ports in self.upstreams.items()
        } | {"notifications-worker": [f"127.0.0.1:{self.worker_port}"]}
        config = self.directory / "prometheus.yml"
        config.write_text(prometheus_config(targets))
        log_path = self.directory / "prometheus.log"
        process = self._spawn(
            [
                prometheus,
                f"--config.file={config.resolve()}",
                f"--storage.tsdb.path={(self.directory / 'prometheus-data').resolve()}",
                f"--web.listen-address=127.0.0.1:{self.prometheus_port}",
            ],
            log_path=log_path,
            env=dict(os.environ),
        )
        self.children.append(Child("prometheus", process, log_path, self.prometheus_port))

    def describe(self) -> dict[str, object]:
        """What a user needs to reach the stack."""
        return {
            "gateway": self.gateway,
            "api_key": self.api_key,
            "database_url": self.database_url,
            "redis_url": self.redis_url,
            "prometheus": f"http://127.0.0.1:{self.prometheus_port}"
            if self.prometheus_port
            else None,
            "replicas": self.upstreams,
            "worker": self.worker_port,
        }


def _stop_signal(name: str) -> signal.Signals:
    # nginx's graceful stop is SIGQUIT (its SIGTERM is a fast shutdown).
    return signal.SIGQUIT if name == "nginx" else signal.SIGTERM


def nginx_config(port: int, upstreams: dict[str, list[int]], directory: Path) -> str:
    """Nginx as the ingress: path routing, keep-alive to upstreams, /metrics never routed."""
    temp = (directory / "nginx-temp").resolve()
    blocks = "\n".join(
        f"""    upstream {service} {{
{"".join(f"        server 127.0.0.1:{p} max_fails=0;{chr(10)}" for p in ports)}        keepalive 32;
        keepalive_timeout 60s;
    }}"""
        for service, ports in upstreams.items()
    )
    # A request with an Idempotency-Key may be sent again after it reached a replica that then
    # failed it (a replica that closed the connection as it shut down): the key makes the
    # retry replay rather than repeat. Other POSTs and PATCHes are never resent once sent.
    route = (
        "{{ error_page 418 = @{service}_keyed; if ($http_idempotency_key) {{ return 418; }} "
        "proxy_pass http://{service}; }}"
    )
    routes = "\n".join(
        f"""        location = /{service} {route.format(service=service)}
        location /{service}/ {route.format(service=service)}
        location @{service}_keyed {{
            proxy_next_upstream error non_idempotent;
            proxy_pass http://{service};
        }}"""
        for service in upstreams
    )
    user = "user root;" if os.geteuid() == 0 else ""
    return f"""{user}
worker_processes 1;
pid {directory.resolve()}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    # The services answer 413 themselves (problem+json) above 1 MiB: let them see the body.
    client_max_body_size 2m;
    keepalive_timeout 60s;
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_set_header Host $host;
    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    proxy_set_header X-Forwarded-Proto $scheme;
    # A replica that is restarting refuses connections: try the other one (safe for any
    # method, since nothing was sent). A request sent on a connection the replica closed as it
    # stopped is retried too, but only for methods nginx deems idempotent (not POST or PATCH).
    proxy_next_upstream error timeout;
    proxy_read_timeout 30s;
{blocks}
    server {{
        listen 127.0.0.1:{port};
        location = /gateway-health {{ return 200 "ok\\n"; }}
        location = /metrics {{ return 404; }}
{routes}
    }}
}}
"""


def prometheus_config(targets: dict[str, list[str]]) -> str:
    """Scrape every replica and the worker every second."""
    jobs = "\n".join(
        f"""  - job_name: {job}
    static_configs:
      - targets: {json.dumps(addresses)}"""
        for job, addresses in targets.items()
    )
    return f"""global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
{jobs}
"""


def _run_foreground(directory: Path) -> None:
    stop = False

    def request_stop(_signum: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    with Stack(directory) as stack:
        (directory / "stack.json").write_text(json.dumps(stack.describe(), indent=2))
        print(json.dumps(stack.describe(), indent=2), flush=True)  # noqa: T201
        while not stop:
            time.sleep(0.2)
    (directory / "stack.json").unlink(missing_ok=True)


def _up(directory: Path) -> int:
    pid_file = directory / "stack.pid"
    if pid_file.exists() and _alive(int(pid_file.read_text())):
        print(f"already running: {(directory / 'stack.json').read_text()}")  # noqa: T201
        return 0
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "stack.json").unlink(missing_ok=True)
    with (directory / "stack.out").open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, __file__, "run", "--dir", str(directory)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    pid_file.write_text(str(process.pid))
    deadline = time.monotonic() + 3 * READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if (directory / "stack.json").exists():
            print((directory / "stack.json").read_text())  # noqa: T201
            return 0
        if process.poll() is not None:
            print((directory / "stack.out").read_text()[-4000:], file=sys.stderr)  # noqa: T201
            return 1
        time.sleep(0.2)
    print("the stack did not come up in time", file=sys.stderr)  # noqa: T201
    return 1


def _down(directory: Path) -> int:
    pid_file = directory / "stack.pid"
    if not pid_file.exists():
        print("not running")  # noqa: T201
        return 0
    pid = int(pid_file.read_text())
    if _alive(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 60
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
    pid_file.unlink(missing_ok=True)
    print("stopped")  # noqa: T201
    return 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def main() -> int:
    """Command line: up, down or run."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("command", choices=["up", "down", "run"])
    parser.add_argument("--dir", type=Path, default=STATE_DIR)
    args = parser.parse_args()
    if args.command == "run":
        _run_foreground(args.dir)
        return 0
    return _up(args.dir) if args.command == "up" else _down(args.dir)


if __name__ == "__main__":
    sys.exit(main())
