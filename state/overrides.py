"""Routing overrides: standing instructions every router process obeys.

"Route the next 10 queries to GPU", "route complex queries to GPU", "go back to
normal routing". They live in the ledger (``routing_overrides``), so every
router process sharing it obeys them, and this module is their one owner.

A count-limited override is claimed one request at a time by an atomic
``UPDATE ... SET remaining = remaining - 1 WHERE remaining > 0``, so across any
number of processes it applies to exactly that many requests. The newest
active override that matches a request wins.

The request path must not pay a database round trip when no override is
active (almost always): each process keeps the list of active overrides and
reads it again at most every ``refresh_s`` seconds (1 s), and at once after
it set or cleared one itself. Another process's new override is therefore
obeyed within a second.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any, get_args

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection

from state.ledger import Ledger, RoutingOverride
from state.schemas import BACKENDS, ComplexityLevel

LEVELS: tuple[str, ...] = get_args(ComplexityLevel)


@dataclass(frozen=True, slots=True)
class Override:
    """An active routing override."""

    id: int
    backend: str
    remaining: int | None
    condition: str | None
    user: str | None
    note: str
    created_at: datetime

    def applies_to(self, level: str) -> bool:
        """Say whether a request of complexity ``level`` falls under this override."""
        return self.condition is None or self.condition == level

    def describe(self) -> str:
        """Say what the override does, in one line."""
        what = f"{self.condition}-complexity requests" if self.condition else "every request"
        if self.remaining is not None:
            what = f"the next {self.remaining} {what.replace('every request', 'requests')}"
        return f"{what} go to {self.backend} (override #{self.id})"


@dataclass(frozen=True, slots=True)
class Claim:
    """What an override decided for one request."""

    backend: str
    reason: str


class RoutingOverrides:
    """Set, clear, list and claim routing overrides."""

    def __init__(
        self, ledger: Ledger, clock: Callable[[], datetime], refresh_s: float = 1.0
    ) -> None:
        """Keep the ledger and how often to look for other processes' changes."""
        self.ledger = ledger
        self.clock = clock
        self.refresh_s = refresh_s
        self._active: list[Override] = []
        self._read_at = float("-inf")
        self._lock = asyncio.Lock()

    async def active(self, *, fresh: bool = False) -> list[Override]:
        """Return the active overrides, newest first (re-read at most every ``refresh_s``)."""
        if fresh or time.monotonic() - self._read_at >= self.refresh_s:
            async with self._lock:
                if fresh or time.monotonic() - self._read_at >= self.refresh_s:
                    await self.ledger.ensure_schema()
                    async with self.ledger.engine.connect() as conn:
                        rows = await conn.execute(
                            select(RoutingOverride.__table__)
                            .where(RoutingOverride.cleared_at.is_(None))
                            .where(
                                (RoutingOverride.remaining.is_(None))
                                | (RoutingOverride.remaining > 0)
                            )
                            .order_by(RoutingOverride.id.desc())
                        )
                        self._active = [
                            Override(
                                r.id,
                                r.backend,
                                r.remaining,
                                r.condition,
                                r.user,
                                r.note,
                                r.created_at,
                            )
                            for r in rows
                        ]
                    self._read_at = time.monotonic()
        return self._active

    async def set(
        self,
        backend: str,
        *,
        count: int | None = None,
        condition: str | None = None,
        user: str | None = None,
        note: str = "",
    ) -> Override:
        """Add an override: ``count`` requests (None: until cleared), of ``condition`` level."""
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        if count is not None and count < 1:
            raise ValueError(f"count must be a positive number of requests, got {count}")
        if condition is not None and condition not in LEVELS:
            raise ValueError(f"condition must be one of {', '.join(LEVELS)}, got {condition!r}")
        values: dict[str, Any] = {
            "created_at": self.clock(),
            "backend": backend,
            "remaining": count,
            "condition": condition,
            "user": user,
            "note": note[:500],
        }

        def insert_row(conn: Connection) -> int:
            result = conn.execute(insert(RoutingOverride).values(**values))
            return int(result.inserted_primary_key[0])  # type: ignore[index]

        new_id = await self.ledger.write(insert_row)
        await self.active(fresh=True)
        return Override(
            new_id, backend, count, condition, user, values["note"], values["created_at"]
        )

    async def clear(self) -> int:
        """End every active override ("back to normal routing"); return how many ended."""
        now = self.clock()

        def end_all(conn: Connection) -> int:
            return conn.execute(
                update(RoutingOverride)
                .where(RoutingOverride.cleared_at.is_(None))
                .values(cleared_at=now)
            ).rowcount

        ended = await self.ledger.write(end_all)
        await self.active(fresh=True)
        return ended

    async def claim(self, level: str, allowed: Collection[str]) -> Claim | None:
        """Return the backend an override sends this request to, counting it, or None.

        An override whose backend may not serve the request (not configured,
        or no model of the request's needs there) is passed over, uncounted.
        """
        for override in await self.active():
            if not override.applies_to(level) or override.backend not in allowed:
                continue
            if override.remaining is None:
                return Claim(override.backend, f"routing override: {override.describe()}")
            left = await self._take_one(override.id)
            if left is not None:
                if left == 0:
                    self._read_at = float("-inf")  # used up: read the list again next time
                return Claim(
                    override.backend,
                    f"routing override #{override.id}: {left} more request(s) go to "
                    f"{override.backend} after this one",
                )
            self._read_at = float("-inf")  # another process used it up
        return None

    async def _take_one(self, override_id: int) -> int | None:
        """Count one request against a count-limited override; None if none is left."""

        def take(conn: Connection) -> int | None:
            row = conn.execute(
                update(RoutingOverride)
                .where(RoutingOverride.id == override_id)
                .where(RoutingOverride.remaining > 0)
                .where(RoutingOverride.cleared_at.is_(None))
                .values(remaining=RoutingOverride.remaining - 1)
                .returning(RoutingOverride.remaining)
            ).first()
            return None if row is None or row[0] is None else int(row[0])

        return await self.ledger.write(take)
