"""API keys for writes and private reads: SHA-256 digests, compared in constant time, unlogged."""

from __future__ import annotations

import hashlib
import hmac
import logging
from pathlib import Path
from typing import Literal

from fastapi import Request

from regatta.common.http.problems import ProblemError

logger = logging.getLogger("regatta.auth")

ANONYMOUS = "anonymous"
# Who may call a route that needs a key.
KeyAccess = Literal["reader", "writer"]
# What a key is needed for: the 401's subject and the 403's action.
_NEEDED_FOR: dict[KeyAccess, tuple[str, str]] = {
    "writer": ("Writes", "write"),
    "reader": ("Reads of this resource", "read this resource"),
}


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def _parse_line(line: str) -> bytes | None:
    entry = line.split("#", 1)[0].strip()
    if not entry.startswith("sha256:"):
        return _digest(entry) if entry else None
    digest = bytes.fromhex(entry.removeprefix("sha256:"))
    if len(digest) != hashlib.sha256().digest_size:
        raise ValueError("a sha256: entry needs 64 hexadecimal digits")
    return digest


class ApiKeys:
    """The set of accepted key digests, the file's re-read when it changes."""

    def __init__(self, keys: list[str], path: Path | None = None) -> None:
        self._static = [_digest(key) for key in keys]
        self._path = path
        self._file_digests: list[bytes] = []
        # (inode, mtime, size): changed by a Secret volume's new symlink or an in-place rewrite.
        self._file_version: tuple[int, int, int] | None = None
        self._failure: str | None = None  # what went wrong last, logged once
        self._reload()

    @property
    def enabled(self) -> bool:
        """Whether writes need a key at all (not in the open local default)."""
        self._reload()
        return bool(self._static or self._file_digests or self._path)

    def _reload(self) -> None:
        # One stat() per look (of a tmpfs Secret volume, in a cluster); a read only on a change.
        if self._path is None:
            return
        try:
            stat = self._path.stat()
            version = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
            if version == self._file_version:
                return
            self._file_version = version  # a broken file is read once, not on every request
            digests = [d for d in map(_parse_line, self._path.read_text().splitlines()) if d]
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            # Once per failure, without a traceback: one of the parse could hold a key.
            if type(exc).__name__ != self._failure:
                self._failure = type(exc).__name__
                logger.error(  # noqa: TRY400
                    "cannot read API_KEYS_FILE (%s); keeping the %d key(s) already loaded",
                    self._failure,
                    len(self._file_digests),
                )
            return
        self._failure = None
        self._file_digests = digests
        logger.info("loaded %d API key(s) from file", len(digests))

    def principal(self, presented: str) -> str | None:
        """A stable, non-secret id for a valid key, or None."""
        self._reload()
        candidate = _digest(presented)
        found = False
        # Compare against every key so the time taken says nothing about which one matched.
        for digest in (*self._static, *self._file_digests):
            found |= hmac.compare_digest(candidate, digest)
        return "key-" + candidate.hex()[:16] if found else None


def authorize(request: Request, keys: ApiKeys, access: KeyAccess) -> str:
    """The principal of the request's bearer key: 401 without one, 403 for an unknown one."""
    if not keys.enabled:
        return ANONYMOUS
    what, action = _NEEDED_FOR[access]
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ProblemError(
            401,
            f"{what} need an API key: send Authorization: Bearer <key>.",
            slug="unauthenticated",
            headers={"WWW-Authenticate": 'Bearer realm="regatta"'},
        )
    principal = keys.principal(token.strip())
    if principal is None:
        raise ProblemError(403, f"This API key is not allowed to {action}.", slug="forbidden")
    return principal
