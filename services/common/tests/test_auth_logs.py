"""API keys never reach the logs: not on success, not on refusal, not in a crash's traceback."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import httpx
import pytest
from fastapi import Depends, Request

from regatta.common.http.app import create_app
from regatta.common.http.context import ContextFactory, RequestContext
from regatta.common.settings import Environment, ServiceSettings
from regatta.common.telemetry.logs import configure_logging
from tests.lifespan import lifespan

# A route that needs a writer's key, as the services declare one (http/context.py).
Writer = Annotated[RequestContext, Depends(ContextFactory("things", "writer"))]

ENV_KEY = "rg_env_5b0e2a9d41f3c7"
FILE_KEY = "rg_file_0c7d3e19ab64f2"


@pytest.fixture
def json_logs() -> Iterator[io.StringIO]:
    """The services' own logging (JSON lines, everything from DEBUG) into a buffer; restored."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    configure_logging(level="DEBUG", log_format="json", service="things")
    buffer = io.StringIO()
    handler = root.handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(buffer)
    try:
        yield buffer
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


async def test_keys_are_never_logged(tmp_path: Path, json_logs: io.StringIO) -> None:
    keys_file = tmp_path / "api-keys"
    keys_file.write_text(f"{FILE_KEY}\n")
    settings = ServiceSettings(
        environment=Environment.TEST,
        database_url=f"sqlite+aiosqlite:///{tmp_path}/regatta.db",
        api_keys=ENV_KEY,
        api_keys_file=keys_file,
        rate_limit_enabled=True,
    )
    app = create_app(settings, [], title="guarded", service_name="things")

    async def write(context: Writer) -> dict[str, str]:
        logging.getLogger("regatta.things").info("written by %s", context.writer)
        return {"by": context.writer}

    async def careless(request: Request, _context: Writer) -> None:
        # A handler that puts a credential in an error: the formatter still masks it.
        raise RuntimeError("upstream refused " + request.headers["authorization"])

    app.add_api_route("/things", write, methods=["POST"])
    app.add_api_route("/careless", careless, methods=["POST"])
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with (
        lifespan(app),
        httpx.AsyncClient(transport=transport, base_url="http://things.test") as client,
    ):
        for key in (ENV_KEY, FILE_KEY):
            answer = await client.post("/things", headers={"Authorization": f"Bearer {key}"})
            assert answer.status_code == 200
        wrong = await client.post("/things", headers={"Authorization": f"Bearer x{ENV_KEY}"})
        assert wrong.status_code == 403
        basic = await client.post("/things", headers={"Authorization": f"Basic {ENV_KEY}"})
        assert basic.status_code == 401
        crashed = await client.post("/careless", headers={"Authorization": f"Bearer {ENV_KEY}"})
        assert crashed.status_code == 500
        assert ENV_KEY not in crashed.text

    output = json_logs.getvalue()
    lines = [json.loads(line) for line in output.splitlines()]
    # The logs did record these requests (so a key in them would have been seen) ...
    assert {line.get("status") for line in lines if line.get("event") == "request"} >= {
        200,
        401,
        403,
        500,
    }
    assert any(line["message"].startswith("written by key-") for line in lines)
    assert any("[redacted]" in line.get("exception", "") for line in lines)
    assert any(line["message"] == "loaded 1 API key(s) from file" for line in lines)
    # ... and no key appears anywhere in them.
    for key in (ENV_KEY, FILE_KEY):
        assert key not in output
