"""Every image builds from its Dockerfile and starts: the APIs answer /livez over HTTP, the
notifications worker and the operator start and stop cleanly. Services whose directory has no
pyproject.toml yet (notifications, operator) are skipped until they land."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.images.conftest import BUILDAH, REPO, ImageReport, buildah

# Building the images (buildah, debootstrap) takes minutes on a cold cache.
pytestmark = [pytest.mark.images, pytest.mark.timeout(1800)]

APIS = ("items", "heroes", "notifications")
STARTUP_TIMEOUT = 60.0
SHUTDOWN_TIMEOUT = 30.0


def _require(service: str) -> None:
    if not (REPO / "services" / service / "pyproject.toml").is_file():
        pytest.skip(f"services/{service} does not exist yet")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, queue = [], [root]
    while queue:
        pid = queue.pop()
        found.extend(children.get(pid, []))
        queue.extend(children.get(pid, []))
    return found


def _process_running(runner: subprocess.Popen[str], marker: str) -> int:
    """The pid of the container's main process (chroot isolation shares the host's pids)."""
    for pid in _descendants(runner.pid):
        with contextlib.suppress(OSError):
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if argv[0].endswith((b"/python", b"/kopf")) and marker.encode() in b" ".join(argv):
                return pid
    msg = f"no process running {marker}"
    raise AssertionError(msg)


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _wait_http(url: str, runner: subprocess.Popen[str]) -> dict[str, object]:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if runner.poll() is not None:
            break
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 (loopback)
                body: dict[str, object] = json.loads(response.read())
                return body
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.25)
    output = runner.stdout.read() if runner.poll() is not None and runner.stdout else ""
    msg = f"{url} never answered:\n{output[-3000:]}"
    raise AssertionError(msg)


@contextlib.contextmanager
def _container(image: str) -> Iterator[str]:
    """A working container from the image (its filesystem persists across runs); removed after."""
    container = buildah("from", "--quiet", image)
    try:
        yield container
    finally:
        subprocess.run([*BUILDAH, "rm", container], capture_output=True, check=False)


@contextlib.contextmanager
def _run(container: str, env: dict[str, str], *command: str) -> Iterator[subprocess.Popen[str]]:
    """Run one command in the container, killed if still running at the end."""
    args = [*BUILDAH, "run", "--isolation", "chroot", "--network", "host"]
    for key, value in env.items():
        args += ["--env", f"{key}={value}"]
    runner = subprocess.Popen(
        [*args, container, "--", *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        yield runner
    finally:
        if runner.poll() is None:
            os.killpg(runner.pid, signal.SIGKILL)
            runner.wait(timeout=SHUTDOWN_TIMEOUT)


def _complete(container: str, env: dict[str, str], *command: str) -> str:
    """Run a command to completion in the container; fail with its output unless it exits 0."""
    with _run(container, env, *command) as runner:
        output, _ = runner.communicate(timeout=STARTUP_TIMEOUT)
    assert runner.returncode == 0, output[-3000:]
    return output


def _stop(runner: subprocess.Popen[str], pid: int) -> str:
    """SIGTERM the service itself, as the kubelet does, and return everything it printed."""
    os.kill(pid, signal.SIGTERM)
    output, _ = runner.communicate(timeout=SHUTDOWN_TIMEOUT)
    return output


def _development_env(port: int) -> dict[str, str]:
    # SQLite under /tmp and the in-process cache: the image starts with nothing else around.
    return {
        "ENVIRONMENT": "development",
        "PORT": str(port),
        "DATABASE_URL": "sqlite+aiosqlite:////tmp/regatta.db",
    }


@pytest.mark.parametrize("service", APIS)
def test_the_api_image_serves_and_drains(
    service: str, build_image: Callable[[str], str], image_report: ImageReport
) -> None:
    _require(service)
    image = build_image(service)
    config = json.loads(buildah("inspect", "--type", "image", image))["Docker"]["config"]
    assert config["User"] == "10001:0"
    assert config["Cmd"] == ["python", "-m", f"regatta.{service}"]
    port = _free_port()
    started = time.monotonic()
    command = ("python", "-m", f"regatta.{service}")
    with (
        _container(image) as container,
        _run(container, _development_env(port), *command) as runner,
    ):
        assert _wait_http(f"http://127.0.0.1:{port}/livez", runner) == {"status": "ok"}
        ready_after = time.monotonic() - started
        ready = _wait_http(f"http://127.0.0.1:{port}/readyz", runner)
        assert ready["status"] == "ok"
        pid = _process_running(runner, f"regatta.{service}")
        rss = _rss_mib(pid)
        output = _stop(runner, pid)
    assert "Application shutdown complete" in output, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    image_report.add(f"regatta-{service}: /livez after {ready_after:.1f} s, idle RSS {rss:.0f} MiB")


def test_the_notifications_worker_starts_and_stops(
    build_image: Callable[[str], str], image_report: ImageReport
) -> None:
    _require("notifications")
    image = build_image("notifications")
    port = _free_port()
    env = {**_development_env(_free_port()), "WORKER_PORT": str(port)}
    module = "regatta.notifications.worker"
    with _container(image) as container:
        # The worker never migrates: the hook Job does, before it starts.
        _complete(container, env, "python", "-m", "regatta.notifications.migrate")
        with _run(container, env, "python", "-m", module) as runner:
            _wait_http(f"http://127.0.0.1:{port}/livez", runner)
            assert _wait_http(f"http://127.0.0.1:{port}/readyz", runner)["status"] == "ok"
            pid = _process_running(runner, module)
            rss = _rss_mib(pid)
            output = _stop(runner, pid)
    assert "Application shutdown complete" in output, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    image_report.add(f"regatta-notifications worker: idle RSS {rss:.0f} MiB")


def test_the_operator_image_loads_its_handlers(build_image: Callable[[str], str]) -> None:
    _require("operator")
    image = build_image("operator")
    config = json.loads(buildah("inspect", "--type", "image", image))["Docker"]["config"]
    assert config["Cmd"][:2] == ["kopf", "run"]
    assert "regatta.operator.handlers" in config["Cmd"]
    # Without a Kubernetes API to log in to, kopf cannot run its loop here: prove the image
    # holds kopf and imports the handlers, then that `kopf run` parses its command line.
    with _container(image) as container:
        _complete(container, {}, "python", "-c", "import kopf, regatta.operator.handlers")
        assert "--liveness" in _complete(container, {}, "kopf", "run", "--help")
