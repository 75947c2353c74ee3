"""The response cache: an identical deterministic request is answered again for free.

Only requests that would get the same answer again are cached: temperature 0,
no tools, no logprobs (:func:`cache_key` returns None for any other). The key is a
digest of everything that shapes the answer (the conversation, the model asked
for, the output cap, every passed-through field) and, unless
``RESPONSE_CACHE_SHARED``, the user: one user's answer never serves another.

Entries live ``RESPONSE_CACHE_TTL_S`` seconds, in Redis when ``REDIS_URL`` is
set (its own expiry), else in the ledger's database (``response_cache``; an
expired row is ignored and replaced on the next store). A hit costs nothing,
is a ledger row marked ``cache_hit``, and says so in ``routing``.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import orjson
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection

from state.ledger import CachedResponse, Ledger
from state.settings import Settings


def cache_key(request: Mapping[str, Any], settings: Settings) -> str | None:
    """Return the request's cache key, or None when its answer must not be cached."""
    if settings.response_cache_ttl_s <= 0 or request.get("temperature") != 0:
        return None
    params = request.get("params") or {}
    if params.get("tools") or params.get("logprobs") or params.get("functions"):
        return None
    shaped = {
        "messages": request["prompt_messages"],
        "model": request.get("model") or "auto",
        "max_tokens": request.get("max_tokens"),
        "cost_priority": request.get("cost_priority"),
        "params": params,
        "user": None if settings.response_cache_shared else request.get("user"),
    }
    return hashlib.sha256(orjson.dumps(shaped, option=orjson.OPT_SORT_KEYS)).hexdigest()


@runtime_checkable
class ResponseCache(Protocol):
    """Where cached answers live."""

    async def get(self, key: str) -> dict[str, Any] | None:
        """Return the cached answer for ``key``, if fresh."""
        ...

    async def put(self, key: str, answer: dict[str, Any]) -> None:
        """Keep ``answer`` for ``key`` for the TTL."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


class LedgerCache:
    """The cache in the ledger's database (SQLite by default)."""

    def __init__(self, ledger: Ledger, ttl_s: float) -> None:
        """Keep the ledger and the TTL."""
        self.ledger = ledger
        self.ttl_s = ttl_s
        dialect_insert = pg_insert if ledger.dialect == "postgresql" else sqlite_insert
        self._upsert = dialect_insert(CachedResponse)

    async def get(self, key: str) -> dict[str, Any] | None:
        """Return the cached answer for ``key``, if fresh."""
        await self.ledger.ensure_schema()
        async with self.ledger.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(CachedResponse.value).where(
                        CachedResponse.key == key, CachedResponse.expires_at > time.time()
                    )
                )
            ).first()
        return None if row is None else orjson.loads(row[0])

    async def put(self, key: str, answer: dict[str, Any]) -> None:
        """Keep ``answer`` for ``key`` for the TTL (replacing an older one)."""
        values = {"key": key, "value": orjson.dumps(answer), "expires_at": time.time() + self.ttl_s}
        statement = self._upsert.values(**values).on_conflict_do_update(
            index_elements=["key"],
            set_={"value": values["value"], "expires_at": values["expires_at"]},
        )

        def store(conn: Connection) -> None:
            conn.execute(statement)

        await self.ledger.write(store)

    async def aclose(self) -> None:
        """Nothing to release: the ledger owns the engine."""


class RedisCache:
    """The cache in Redis (``REDIS_URL``), shared by every router process, with Redis's expiry."""

    def __init__(self, url: str, ttl_s: float, namespace: str = "hybrid-router:cache:") -> None:
        """Connect lazily to ``url``."""
        from redis.asyncio import Redis

        self.redis = Redis.from_url(url)
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self.namespace = namespace

    async def get(self, key: str) -> dict[str, Any] | None:
        """Return the cached answer for ``key``, if fresh."""
        value = await self.redis.get(self.namespace + key)
        return None if value is None else orjson.loads(value)

    async def put(self, key: str, answer: dict[str, Any]) -> None:
        """Keep ``answer`` for ``key`` for the TTL."""
        await self.redis.set(self.namespace + key, orjson.dumps(answer), px=self.ttl_ms)

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self.redis.aclose()


def build_cache(settings: Settings, ledger: Ledger) -> ResponseCache:
    """Return the cache ``settings`` ask for: Redis when ``REDIS_URL`` is set, else the ledger."""
    if settings.redis_url:
        return RedisCache(settings.redis_url, settings.response_cache_ttl_s)
    return LedgerCache(ledger, settings.response_cache_ttl_s)
