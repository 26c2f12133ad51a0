"""The items API as people commonly write it: the comparison the benchmark's gains are against.

Sync SQLAlchemy session per request (FastAPI runs the handlers in its thread pool), no cache,
no ETags, ``BaseHTTPMiddleware`` for request ids. Same table, same JSON.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Request, Response
from pydantic import BaseModel, ConfigDict
from sqlalchemy import DateTime, Integer, Numeric, String, create_engine, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from starlette.middleware.base import BaseHTTPMiddleware

engine = create_engine(
    os.environ["DATABASE_URL"].replace("+asyncpg", "+psycopg"), pool_size=10, max_overflow=5
)
SessionLocal = sessionmaker(engine)


class Base(DeclarativeBase):
    """Declarative base."""


class Item(Base):
    """The items table, mapped the usual way."""

    __tablename__ = "items"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str | None] = mapped_column(String(2000))
    price: Mapped[Decimal] = mapped_column(Numeric(12, 2))
    tax: Mapped[Decimal | None] = mapped_column(Numeric(12, 2))
    version: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ItemIn(BaseModel):
    """A new item."""

    name: str
    description: str | None = None
    price: float
    tax: float | None = None


class ItemOut(BaseModel):
    """An item."""

    model_config = ConfigDict(from_attributes=True)
    id: int
    name: str
    description: str | None
    price: float
    tax: float | None
    version: int
    created_at: datetime
    updated_at: datetime


def get_db() -> Iterator[Session]:
    """A session per request."""
    with SessionLocal() as session:
        yield session


DbDep = Annotated[Session, Depends(get_db)]


class RequestId(BaseHTTPMiddleware):
    """The request-id middleware most tutorials show."""

    async def dispatch(
        self, request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        """Add an X-Request-ID header."""
        response = await call_next(request)
        response.headers["X-Request-ID"] = request.headers.get("x-request-id", uuid.uuid4().hex)
        return response


app = FastAPI()
app.add_middleware(RequestId)


@app.get("/items/{item_id}", response_model=ItemOut)
def read_item(item_id: int, db: DbDep) -> Item:
    """One item."""
    item = db.get(Item, item_id)
    if item is None:
        raise HTTPException(404)
    return item


@app.get("/items", response_model=list[ItemOut])
def list_items(db: DbDep, limit: int = 20, offset: int = 0) -> list[Item]:
    """A page of items."""
    return list(db.scalars(select(Item).order_by(Item.id).limit(limit).offset(offset)))


@app.post("/items", response_model=ItemOut, status_code=201)
def create_item(payload: ItemIn, db: DbDep) -> Item:
    """Create an item."""
    now = datetime.now(UTC)
    item = Item(**payload.model_dump(), version=1, created_at=now, updated_at=now)
    db.add(item)
    db.commit()
    db.refresh(item)
    return item
