"""API keys for writes: stored as SHA-256 digests, compared in constant time, never logged.

Keys come from ``API_KEYS`` and/or ``API_KEYS_FILE`` (one key per line, either the key itself or
``sha256:<hex digest>``; ``#`` starts a comment). The file is re-read when it changes, so keys
rotate without a restart: add the new key, roll clients over, remove the old one.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from pathlib import Path
from typing import Annotated

from fastapi import Depends, Request

from regatta.common.errors import ProblemError
from regatta.common.settings import ServiceSettings

logger = logging.getLogger("regatta.auth")

ANONYMOUS = "anonymous"
_DIGEST_PREFIX = "sha256:"


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def _parse_line(line: str) -> bytes | None:
    entry = line.split("#", 1)[0].strip()
    if not entry:
        return None
    if entry.startswith(_DIGEST_PREFIX):
        return bytes.fromhex(entry.removeprefix(_DIGEST_PREFIX))
    return _digest(entry)


class ApiKeys:
    """The set of accepted key digests."""

    def __init__(self, keys: list[str], path: Path | None = None) -> None:
        self._static = [_digest(key) for key in keys]
        self._path = path
        self._file_digests: list[bytes] = []
        self._file_mtime: float | None = None
        self._reload()

    @classmethod
    def from_settings(cls, settings: ServiceSettings) -> ApiKeys:
        """Keys named by the settings."""
        return cls([k.get_secret_value() for k in settings.api_keys], settings.api_keys_file)

    @property
    def enabled(self) -> bool:
        """Whether writes need a key at all (not in the open local default)."""
        self._reload()
        return bool(self._static or self._file_digests or self._path)

    def _reload(self) -> None:
        if self._path is None:
            return
        try:
            mtime = self._path.stat().st_mtime
            if mtime == self._file_mtime:
                return
            digests = [d for d in map(_parse_line, self._path.read_text().splitlines()) if d]
        except (OSError, ValueError):
            logger.exception("cannot read API_KEYS_FILE; keeping the keys already loaded")
            return
        self._file_digests, self._file_mtime = digests, mtime
        logger.info("loaded %d API key(s) from file", len(digests))

    def principal(self, presented: str) -> str | None:
        """A stable, non-secret id for a valid key, or None."""
        candidate = _digest(presented)
        found = False
        # Compare against every key so the time taken says nothing about which one matched.
        for digest in (*self._static, *self._file_digests):
            found |= hmac.compare_digest(candidate, digest)
        return "key-" + candidate.hex()[:16] if found else None


def _api_keys(request: Request) -> ApiKeys:
    keys: ApiKeys = request.app.state.api_keys
    return keys


async def require_writer(request: Request) -> str:
    """Authorize a write: 401 without a bearer key, 403 for an unknown one (dependency)."""
    keys = _api_keys(request)
    if not keys.enabled:
        return ANONYMOUS
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ProblemError(
            401,
            "Writes need an API key: send Authorization: Bearer <key>.",
            slug="unauthenticated",
            headers={"WWW-Authenticate": 'Bearer realm="regatta"'},
        )
    principal = keys.principal(token.strip())
    if principal is None:
        raise ProblemError(403, "This API key is not allowed to write.", slug="forbidden")
    return principal


WriterDep = Annotated[str, Depends(require_writer)]
