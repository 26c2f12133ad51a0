"""The two baselines every figure is measured against, in the same run, with the same flags.

B — a bare Starlette JSON route; F — a minimal FastAPI route with a response model.
"""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import FastAPI
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

_NOW = datetime(2026, 1, 1, tzinfo=UTC)
ITEM = {
    "id": 1,
    "name": "Widget",
    "description": None,
    "price": 19.99,
    "tax": 1.5,
    "version": 1,
    "created_at": _NOW.isoformat(),
    "updated_at": _NOW.isoformat(),
}


async def _item(_request: Request) -> JSONResponse:
    return JSONResponse(ITEM)


bare = Starlette(routes=[Route("/items/{item_id}", _item)])


class ItemRead(BaseModel):
    """The same shape the items service returns."""

    id: int
    name: str
    description: str | None
    price: float
    tax: float | None
    version: int
    created_at: datetime
    updated_at: datetime


minimal = FastAPI()


@minimal.get("/items/{item_id}", response_model=ItemRead)
async def read_item(item_id: int) -> ItemRead:
    """Return a constant item."""
    return ItemRead.model_validate({**ITEM, "id": item_id})
