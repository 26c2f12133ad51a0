"""A Redis ACL user for each ApiService, confined to its own key prefix.

The operator connects with the platform's credentials (the default user) and keeps one user per
ApiService: its password, its keys (`~<prefix>*`) and channels (`&<prefix>*`), every command but
the dangerous ones (no FLUSHALL, KEYS, CONFIG, DEBUG...). Each call starts with `reset`, so the
user becomes exactly this: a rotated password takes effect at once and the old one stops
working. Where Redis keeps users in an ACL file (the chart's built-in Redis), `ACL SAVE` makes
them outlive a restart.
"""

from __future__ import annotations

import redis.asyncio as redis
from redis.exceptions import ResponseError

from regatta.operator.database import database_name


def user_name(namespace: str, name: str) -> str:
    """The ApiService's Redis user (the same readable, unique name as its database)."""
    return database_name(namespace, name)


async def _save(client: redis.Redis) -> None:
    try:
        await client.acl_save()
    except ResponseError as exc:
        # Users live in memory only where no ACL file is configured; the timer restores them.
        if "ACL file" not in str(exc):
            raise


async def provision(admin_url: str, *, user: str, password: str, prefix: str) -> None:
    """Create or replace the user (idempotent: the timer replays it)."""
    client = redis.Redis.from_url(admin_url, socket_timeout=10)
    try:
        # A prefix is `<platform prefix><namespace>.<name>:`, names Kubernetes keeps to
        # [a-z0-9.-]: no glob character or space reaches the patterns.
        await client.acl_setuser(
            user,
            reset=True,
            enabled=True,
            passwords=[f"+{password}"],
            keys=[f"{prefix}*"],
            channels=[f"{prefix}*"],
            categories=["+@all", "-@dangerous"],
        )
        await _save(client)
    finally:
        await client.aclose()


async def drop(admin_url: str, *, user: str) -> None:
    """Delete the user; nothing happens if it is absent."""
    client = redis.Redis.from_url(admin_url, socket_timeout=10)
    try:
        await client.acl_deluser(user)
        await _save(client)
    finally:
        await client.aclose()
