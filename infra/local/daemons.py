"""Private Postgres and Redis servers on free loopback ports, owned by the process that starts them.

Used by the test fixtures (tests/servers.py) and by the local stack (stack.py).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import ctypes.util
import fcntl
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Final, NoReturn, Self, TypedDict

if TYPE_CHECKING:
    import io
    from collections.abc import Callable
    from types import TracebackType

HOST: Final = "127.0.0.1"
INSTALL_HINT: Final = "install with: apt-get install postgresql redis-server"

_POSTGRES_ROOT: Final = Path("/usr/lib/postgresql")
_POSTGRES_OS_USER: Final = "postgres"
_STARTUP_TIMEOUT: Final = 30.0
_SHUTDOWN_TIMEOUT: Final = 10.0
_POLL_INTERVAL: Final = 0.05
_PORT_ATTEMPTS: Final = 3
_LOG_TAIL_CHARS: Final = 4000
_PR_SET_PDEATHSIG: Final = 1
# CREATE DATABASE is ~10x faster on tmpfs than on a disk, even with fsync off. Docker
# gives containers a 64 MiB /dev/shm by default, too small for a cluster.
_RAM_DIR: Final = Path("/dev/shm")  # noqa: S108 - only ever a parent for mkdtemp
_RAM_DIR_MIN_FREE: Final = 1 << 30
_OWNER_LOCK: Final = ".owner.lock"
_UNCLAIMED_MAX_AGE: Final = 3600.0


_live_servers: set[_Server] = set()


class _Credentials(TypedDict):
    user: int | None
    group: int | None
    extra_groups: list[int] | None


def _load_libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name, use_errno=True)
    except OSError:
        return None


_LIBC: Final = _load_libc()


class DaemonUnavailableError(RuntimeError):
    """A server binary or the means to run it is missing; ``hint`` says what to install."""

    def __init__(self, reason: str, hint: str | None = INSTALL_HINT) -> None:
        super().__init__(f"{reason}; {hint}" if hint else reason)
        self.reason = reason
        self.hint = hint


def _unavailable(reason: str, hint: str | None = INSTALL_HINT) -> NoReturn:
    raise DaemonUnavailableError(reason, hint)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _clean_env() -> dict[str, str]:
    # PGHOST, PGOPTIONS, PGSERVICE and friends would silently redirect our clients.
    return {key: value for key, value in os.environ.items() if not key.startswith("PG")}


def _die_with_parent(death_signal: signal.Signals) -> Callable[[], None]:
    """Build a pre-exec hook making the kernel signal the child when we die."""
    parent = os.getpid()

    def hook() -> None:
        # Runs after the uid switch, which would otherwise clear the setting.
        if _LIBC is not None:
            _LIBC.prctl(_PR_SET_PDEATHSIG, int(death_signal), 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return hook


def _credentials(user: pwd.struct_passwd | None) -> _Credentials:
    # Supplementary groups are dropped too, or the child would keep root's.
    if user is None:
        return {"user": None, "group": None, "extra_groups": None}
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


def _run(
    argv: list[str], *, run_as: pwd.struct_passwd | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=_clean_env(),
        check=False,
        **_credentials(run_as),
    )


def _spawn(
    argv: list[str],
    *,
    log_path: Path,
    run_as: pwd.struct_passwd | None,
    death_signal: signal.Signals,
    env: dict[str, str],
    cwd: Path | None,
) -> subprocess.Popen[bytes]:
    # The server is a direct child (no runuser or pg_ctl in between) so our signals
    # reach it unchanged; a new session keeps a terminal's Ctrl-C away from it so
    # that the fixture teardown shuts it down in order.
    with log_path.open("ab") as log:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent(death_signal),  # noqa: PLW1509 - only calls prctl
            **_credentials(run_as),
        )


def _stop(process: subprocess.Popen[bytes] | None, stop_signal: signal.Signals) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(stop_signal)
    try:
        process.wait(_SHUTDOWN_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _log_tail(log_path: Path) -> str:
    try:
        return log_path.read_text(errors="replace")[-_LOG_TAIL_CHARS:]
    except OSError:
        return "<no log>"


class _StartupError(RuntimeError):
    """A server process exited before it became ready."""

    def __init__(self, what: str, code: int, log: str) -> None:
        super().__init__(f"{what} exited with code {code} during startup:\n{log}")
        self.port_in_use = "address already in use" in log.lower()


def _wait_until_ready(
    process: subprocess.Popen[bytes],
    ready: Callable[[], bool],
    *,
    what: str,
    log_path: Path,
    within: float = _STARTUP_TIMEOUT,
) -> None:
    deadline = time.monotonic() + within
    while True:
        code = process.poll()
        if code is not None:
            raise _StartupError(what, code, _log_tail(log_path))
        if ready():
            return
        if time.monotonic() > deadline:
            waited = f"{within:.0f}s"
            msg = f"{what} not ready after {waited}:\n{_log_tail(log_path)}"
            raise TimeoutError(msg)
        time.sleep(_POLL_INTERVAL)


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _find_postgres_bindir() -> Path | None:
    def version(bindir: Path) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", bindir.parent.name))

    candidates = [
        bindir
        for bindir in _POSTGRES_ROOT.glob("*/bin")
        if (bindir / "postgres").is_file() and (bindir / "initdb").is_file()
    ]
    return max(candidates, key=version, default=None)


def _traversable_by(directory: Path, user: pwd.struct_passwd) -> bool:
    """Tell whether user can reach entries below directory."""
    for path in (directory, *directory.parents):
        info = path.stat()
        if info.st_uid == user.pw_uid:
            bit = stat.S_IXUSR
        elif info.st_gid == user.pw_gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not info.st_mode & bit:
            return False
    return True


def _postgres_scratch_dir(user: pwd.struct_passwd | None) -> Path:
    """Pick the parent of the cluster directory: RAM-backed unless TMPDIR is set."""
    temp_dir = Path(tempfile.gettempdir())
    candidates = [temp_dir] if "TMPDIR" in os.environ else [_RAM_DIR, temp_dir]
    for candidate in candidates:
        usable = candidate.is_dir() and os.access(candidate, os.W_OK | os.X_OK)
        if not usable or (user is not None and not _traversable_by(candidate, user)):
            continue
        if candidate == _RAM_DIR:
            info = os.statvfs(candidate)
            if info.f_bavail * info.f_frsize < _RAM_DIR_MIN_FREE:
                continue
        return candidate
    owner = "us" if user is None else f"the {user.pw_name!r} user"
    _unavailable(
        f"temp dir {temp_dir} is not usable by {owner}",
        "point TMPDIR at a world-traversable directory such as /tmp",
    )


def _postgres_os_user() -> pwd.struct_passwd | None:
    """Return the account to run Postgres as if we are root, which it refuses."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(_POSTGRES_OS_USER)
    except KeyError:
        _unavailable(f"running as root and no {_POSTGRES_OS_USER!r} system user")


def _claim(directory: Path) -> io.BufferedWriter:
    """Mark directory as in use for as long as this process lives."""
    # Locked before it gets its final name, so a sweeper never sees it unlocked.
    pending = directory / f"{_OWNER_LOCK}.new"
    lock = pending.open("wb")
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    pending.rename(directory / _OWNER_LOCK)
    return lock


def _sweep_stale(parent: Path, prefix: str) -> None:
    """Delete scratch dirs left by sessions killed outright (SIGKILL, OOM killer)."""
    for candidate in parent.glob(f"{prefix}*"):
        try:
            with (candidate / _OWNER_LOCK).open("rb") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                shutil.rmtree(candidate, ignore_errors=True)
        except FileNotFoundError:
            # Either a session between mkdtemp and _claim, or one killed right there.
            with contextlib.suppress(OSError):
                if time.time() - candidate.stat().st_mtime > _UNCLAIMED_MAX_AGE:
                    shutil.rmtree(candidate, ignore_errors=True)
        except OSError:
            continue  # locked by a live session, or not ours to inspect


NO_SERVERS_VARIABLE = "REGATTA_NO_SERVERS"


class _Server:
    """Lifecycle shared by the servers: temp dir, child process, atexit backstop."""

    _what: str
    _stop_signal: signal.Signals
    _death_signal: signal.Signals

    def __init__(self, prefix: str, parent: Path | None = None) -> None:
        parent = Path(tempfile.gettempdir()) if parent is None else parent
        _sweep_stale(parent, prefix)
        self.host = HOST
        self.port = 0
        self._base = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
        self._owner_lock = _claim(self._base)
        self._log_path = self._base / "server.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._closed = False
        _live_servers.add(self)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def is_running(self) -> bool:
        """Whether the server process is alive."""
        return self._process is not None and self._process.poll() is None

    @property
    def log(self) -> str:
        """The tail of the server log, for diagnosing failures."""
        return _log_tail(self._log_path)

    def start(self) -> None:
        """Start the server (on its previous port if it ran before) unless running."""
        if os.environ.get(NO_SERVERS_VARIABLE):
            # `make check` promises a loop without servers: a test that starts one while
            # unmarked fails here, naming the marker it lacks.
            msg = (
                f"{NO_SERVERS_VARIABLE} is set (make check), but a test started {self._what}: "
                "mark it @pytest.mark.postgres"
            )
            raise RuntimeError(msg)
        if self._closed:
            msg = f"{self._what} server was closed"
            raise RuntimeError(msg)
        if self.is_running:
            return
        if self.port:
            self._launch()
            return
        for attempt in range(_PORT_ATTEMPTS):
            self.port = _free_port()
            try:
                self._launch()
            except _StartupError as error:
                # Another process can grab the free port between our probe and the bind.
                if not error.port_in_use or attempt == _PORT_ATTEMPTS - 1:
                    self.port = 0
                    raise
            else:
                return

    def stop(self) -> None:
        """Shut the server down, keeping its data and port for a later start()."""
        process, self._process = self._process, None
        _stop(process, self._stop_signal)

    def close(self) -> None:
        """Stop the server for good and delete its files."""
        if self._closed:
            return
        self._closed = True
        try:
            self.stop()
        finally:
            shutil.rmtree(self._base, ignore_errors=True)
            self._owner_lock.close()
            _live_servers.discard(self)

    def _argv(self) -> list[str]:
        raise NotImplementedError

    def _run_as(self) -> pwd.struct_passwd | None:
        return None

    def _ready(self) -> bool:
        raise NotImplementedError

    def _launch(self) -> None:
        process = _spawn(
            self._argv(),
            log_path=self._log_path,
            run_as=self._run_as(),
            death_signal=self._death_signal,
            env=_clean_env(),
            cwd=self._log_path.parent,
        )
        try:
            _wait_until_ready(process, self._ready, what=self._what, log_path=self._log_path)
        except BaseException:
            _stop(process, signal.SIGKILL)
            raise
        self._process = process


class PostgresServer(_Server):
    """A private Postgres cluster owned by the test session."""

    _what = "postgres"
    # SIGINT is a fast shutdown: it does not wait for clients to disconnect.
    _stop_signal = signal.SIGINT
    _death_signal = signal.SIGQUIT

    def __init__(
        self,
        bindir: Path,
        os_user: pwd.struct_passwd | None,
        *,
        settings: dict[str, str] | None = None,
    ) -> None:
        """Prepare a cluster from the binaries in bindir, run as os_user when given.

        ``settings``: more server settings (``-c name=value``), e.g. a preloaded library.
        """
        parent = _postgres_scratch_dir(os_user)
        super().__init__("regatta-pg-", parent)
        self.superuser = "postgres"
        self._settings = dict(settings or {})
        self._bindir = bindir
        self._os_user = os_user
        self._data_dir = self._base / "data"
        if os_user is not None:
            os.chown(self._base, os_user.pw_uid, os_user.pw_gid)

    def url(
        self,
        database: str = "postgres",
        *,
        driver: str | None = "asyncpg",
        port: int | None = None,
    ) -> str:
        """Build a URL for database; driver=None gives a plain libpq/asyncpg DSN.

        ``port`` replaces the server's own port (to reach it through a proxy).
        """
        scheme = "postgresql" if driver is None else f"postgresql+{driver}"
        return f"{scheme}://{self.superuser}@{self.host}:{port or self.port}/{database}"

    def psql(self, sql: str, *, database: str = "postgres") -> str:
        """Run sql through psql as the superuser and return its unaligned output."""
        result = _run(
            [
                str(self._bindir / "psql"),
                *("-h", self.host, "-p", str(self.port), "-U", self.superuser),
                *("-d", database, "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"),
                *("-c", sql),
            ]
        )
        if result.returncode != 0:
            error = result.stderr.strip()
            msg = f"psql failed ({result.returncode}) on {sql!r}: {error}"
            raise RuntimeError(msg)
        return result.stdout

    def create_database(self) -> str:
        """Create a fresh empty database and return its name."""
        self.start()
        name = f"test_{uuid.uuid4().hex}"
        # FILE_COPY writes little WAL, unlike WAL_LOG which logs the whole template.
        self.psql(f"CREATE DATABASE {_quote_ident(name)} STRATEGY = FILE_COPY")
        return name

    def drop_database(self, name: str) -> None:
        """Drop database name, disconnecting any sessions still using it."""
        self.start()
        self.psql(f"DROP DATABASE IF EXISTS {_quote_ident(name)} WITH (FORCE)")

    def _run_as(self) -> pwd.struct_passwd | None:
        return self._os_user

    def _launch(self) -> None:
        if not (self._data_dir / "PG_VERSION").exists():
            self._initdb()
        super()._launch()

    def _initdb(self) -> None:
        result = _run(
            [
                str(self._bindir / "initdb"),
                *("-D", str(self._data_dir), "-A", "trust", "-U", self.superuser),
                *("--no-sync", "-E", "UTF8", "--locale=C"),
            ],
            run_as=self._os_user,
        )
        if result.returncode != 0:
            output = result.stdout + result.stderr
            msg = f"initdb failed ({result.returncode}):\n{output}"
            raise RuntimeError(msg)

    def _argv(self) -> list[str]:
        settings = {
            "listen_addresses": self.host,
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "300",
            **self._settings,
        }
        return [
            str(self._bindir / "postgres"),
            *("-D", str(self._data_dir), "-p", str(self.port), "-k", str(self._base)),
            *(arg for item in settings.items() for arg in ("-c", "=".join(item))),
        ]

    def _ready(self) -> bool:
        # A bare TCP connect is not enough: the postmaster listens before it is ready.
        result = _run(
            [
                str(self._bindir / "pg_isready"),
                *("-q", "-t", "1", "-h", self.host, "-p", str(self.port)),
                *("-U", self.superuser, "-d", "postgres"),
            ]
        )
        return result.returncode == 0


class RedisServer(_Server):
    """A private Redis server owned by the test session."""

    _what = "redis-server"
    _stop_signal = signal.SIGTERM
    _death_signal = signal.SIGTERM

    def __init__(self, executable: Path) -> None:
        """Prepare a server run from executable, with a private working directory."""
        super().__init__("regatta-redis-")
        self._executable = executable

    def url(self, db: int = 0, *, port: int | None = None) -> str:
        """Build a redis:// URL for logical database db (``port``: through a proxy)."""
        return f"redis://{self.host}:{port or self.port}/{db}"

    def command(self, *args: str) -> bytes:
        """Send one command and return the raw RESP reply line."""
        parts = "".join(f"${len(arg.encode())}\r\n{arg}\r\n" for arg in args)
        payload = f"*{len(args)}\r\n{parts}"
        reply = b""
        with socket.create_connection((self.host, self.port), timeout=5) as sock:
            sock.sendall(payload.encode())
            while not reply.endswith(b"\r\n"):
                chunk = sock.recv(4096)
                if not chunk:
                    break
                reply += chunk
        return reply

    def flushall(self) -> None:
        """Delete every key in every logical database."""
        reply = self.command("FLUSHALL")
        if not reply.startswith(b"+OK"):
            msg = f"FLUSHALL failed: {reply!r}"
            raise RuntimeError(msg)

    def _argv(self) -> list[str]:
        return [
            str(self._executable),
            *("--port", str(self.port), "--bind", self.host, "--dir", str(self._base)),
            *("--save", "", "--appendonly", "no", "--daemonize", "no"),
        ]

    def _ready(self) -> bool:
        try:
            return self.command("PING").startswith(b"+PONG")
        except OSError:
            return False


@atexit.register
def _close_leftovers() -> None:
    """Backstop for a process that ended before it could close its servers."""
    for server in list(_live_servers):
        with contextlib.suppress(Exception):
            server.close()


def find_postgres_bindir() -> Path:
    """The newest Postgres server's bin directory (DaemonUnavailableError when none)."""
    bindir = _find_postgres_bindir()
    if bindir is None:
        _unavailable(f"no Postgres server binaries under {_POSTGRES_ROOT}/*/bin")
    return bindir


def postgres_os_user() -> pwd.struct_passwd | None:
    """The OS user Postgres runs as (None when not root)."""
    return _postgres_os_user()


def find_redis() -> Path:
    """The redis-server executable (DaemonUnavailableError when missing)."""
    executable = shutil.which("redis-server")
    if executable is None:
        _unavailable("redis-server is not on PATH")
    return Path(executable)


def spawn_child(
    argv: list[str], *, log_path: Path, env: dict[str, str], cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start a child that the kernel stops (SIGTERM) if this process dies first."""
    return _spawn(
        argv, log_path=log_path, run_as=None, death_signal=signal.SIGTERM, env=env, cwd=cwd
    )


def stop_child(
    process: subprocess.Popen[bytes] | None, stop_signal: signal.Signals = signal.SIGTERM
) -> None:
    """Signal a child, wait for it, and kill it if it does not stop in time."""
    _stop(process, stop_signal)


def free_port() -> int:
    """A port nothing listens on right now."""
    return _free_port()


def log_tail(log_path: Path) -> str:
    """The end of a log file, for error messages."""
    return _log_tail(log_path)


def answers(url: str) -> bool:
    """Whether a GET of ``url`` answers 200 now."""
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:  # noqa: S310 -- loopback only
            return bool(answer.status == 200)  # noqa: PLR2004
    except OSError:  # refused, reset, timed out, or an HTTP error status
        return False


def wait_answering(
    process: subprocess.Popen[bytes], url: str, *, log_path: Path, within: float = 60.0
) -> None:
    """Wait until a child serves ``url`` with a 200.

    Raises, with the end of its log, if the child exits first or ``within`` seconds pass.
    """
    _wait_until_ready(process, lambda: answers(url), what=url, log_path=log_path, within=within)
