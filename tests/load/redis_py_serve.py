"""The items service with redis-py carrying the per-request Redis commands, for ``make bench``.

``BENCH_REDIS_CLIENT=redis-py`` starts the benchmark's items servers with this module instead of
``python -m regatta.items``: the cache's GET and store and the rate limit's EVALSHA go through
redis-py's asyncio client (a connection pool; hiredis parses when it is installed) instead of
``redis/pipelined.py``. Everything else is the service as it ships. It answers whether a
maintained client comes within 10 % of the small one on the cached read, in the benchmark's own
terms (README.md has the figures). Only the benchmark uses it: the generation the cache advances
on each new pipelined connection is not advanced here (one Redis, never flushed, in a run).

    BENCH_REDIS_CLIENT=redis-py PYTHONPATH=infra/local:tests/load \
        uv run --frozen --with hiredis python tests/load/bench.py
"""

from __future__ import annotations

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from regatta.common import runtime
from regatta.common.http.serve import serve
from regatta.common.redis.pipelined import Reply, Script
from regatta.common.settings import ServiceSettings
from regatta.items.main import create_app

# At most one connection per request in flight (wrk -c32) and some to spare.
MAX_CONNECTIONS = 64


class RedisPyCommands:
    """The calls the cache and the rate limiter make of ``PipelinedRedis``, through redis-py."""

    def __init__(self, url: str) -> None:
        self._client = Redis.from_url(url, max_connections=MAX_CONNECTIONS)
        self.on_connect = None  # set by the runtime, never awaited; see the module's docstring

    async def get(self, key: bytes) -> bytes | None:
        """GET ``key``."""
        value = await self._client.get(key)
        return value if value is None or isinstance(value, bytes) else value.encode()

    async def execute(self, *args: bytes) -> Reply:
        """Any command."""
        reply: Reply = await self._client.execute_command(*args)  # type: ignore[no-untyped-call]
        return reply

    async def run_script(self, script: Script, keys: list[bytes], args: list[bytes]) -> Reply:
        """EVALSHA, or EVAL once when Redis does not know the script yet."""
        try:
            reply: Reply = await self._client.evalsha(script.sha.decode(), len(keys), *keys, *args)
        except NoScriptError:
            reply = await self._client.eval(script.source.decode(), len(keys), *keys, *args)
        return reply

    async def aclose(self) -> None:
        """Close the pool."""
        await self._client.aclose()


def _redis_py(settings: ServiceSettings, _tracer: object) -> RedisPyCommands | None:
    if settings.redis_url is None:
        return None
    return RedisPyCommands(settings.redis_url.get_secret_value())


if __name__ == "__main__":
    runtime.create_pipelined = _redis_py  # type: ignore[assignment]
    serve(create_app)
