"""The one owner of a serverless budget reservation, from hold to settlement.

A request that sends an attempt to the serverless API first holds its
worst-case cost against every budget that applies (:class:`BudgetBook` does
the atomic, all-or-nothing update). The hold is then:

- **moved** to a cheaper model when the over-budget policy downgrades, and to
  another provider's price when the next serverless provider takes the request;
- **released** when the request ends without a serverless answer (the
  serverless call failed, or the GPU pool answered): it is settled at $0;
- **settled** with the real serverless cost in the same transaction that
  writes the request's ledger row;
- **expired** when a crashed process (or a lost database connection) left it
  behind past ``RESERVATION_TTL_S``: by the sweep every process runs in the
  background (:meth:`Reservations.start_expiry`), and by the next reservation
  that would otherwise be refused.

Nodes ask this module for each of these; nothing else touches a reservation.
A GPU answer is never charged to a serverless budget: only the cost of the
serverless attempt that answered is settled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

from backends.catalog import ModelSpec, Priced
from state.budgets import BudgetBook, Crossing, Held, Refused
from state.ledger import Ledger, UsageRecord
from state.schemas import ReservationHeld

logger = logging.getLogger(__name__)

MAX_EXPIRY_INTERVAL_S = 60.0
"""Longest wait between two sweeps for stale holds, whatever ``RESERVATION_TTL_S``."""


def expiry_interval(ttl_s: float) -> float:
    """Return how often to sweep for holds past ``ttl_s``: half of it, within [0.5 s, 60 s]."""
    return min(max(ttl_s / 2, 0.5), MAX_EXPIRY_INTERVAL_S)


@dataclass(frozen=True, slots=True)
class SpendRequest:
    """What a request may spend: its prompt estimate, output cap and who pays."""

    prompt_tokens: int
    output_tokens: int
    user: str | None = None
    team: str | None = None


@dataclass(slots=True)
class Reservations:
    """Hold, move, release, settle and expire serverless budget reservations."""

    budgets: BudgetBook
    ledger: Ledger
    margin: float
    _sweeper: asyncio.Task[None] | None = field(default=None, init=False, repr=False)

    def worst_case_usd(
        self, model: ModelSpec, spend: SpendRequest, price: Priced | None = None
    ) -> float:
        """Return the most ``spend`` can cost on ``model``: an over-estimate, never under.

        ``price`` is the price of the provider that will serve it (the catalog's
        reference price when None).
        """
        prompt = math.ceil(spend.prompt_tokens * self.margin)
        return (price or model).cost_usd(prompt, spend.output_tokens)

    async def hold(
        self,
        model: ModelSpec,
        spend: SpendRequest,
        price: Priced | None = None,
        provider: str | None = None,
    ) -> ReservationHeld | Refused:
        """Hold the worst-case cost of ``spend`` on ``model`` at ``provider``'s ``price``.

        Returns the hold, or the budget that refuses it.
        """
        outcome = await self.budgets.reserve(
            uuid.uuid4().hex,
            self.worst_case_usd(model, spend, price),
            user=spend.user,
            team=spend.team,
        )
        if isinstance(outcome, Held):
            return {
                "id": outcome.reservation_id,
                "amount_usd": outcome.amount_usd,
                "model": model.id,
                "provider": provider,
            }
        return outcome

    async def hold_first(
        self, choices: Iterable[tuple[ModelSpec, Priced | None, str | None]], spend: SpendRequest
    ) -> ReservationHeld | None:
        """Hold the first of ``choices`` (model, price, provider) the budgets allow, or None."""
        for model, price, provider in choices:
            held = await self.hold(model, spend, price, provider)
            if not isinstance(held, Refused):
                return held
        return None

    async def move(
        self,
        held: ReservationHeld,
        model: ModelSpec,
        spend: SpendRequest,
        price: Priced | None = None,
        provider: str | None = None,
    ) -> ReservationHeld | Refused:
        """Move a hold to another model or provider's price.

        The new amount is held first, then the old one given back; a refused
        move leaves the old hold as it was.
        """
        moved = await self.hold(model, spend, price, provider)
        if not isinstance(moved, Refused):
            await self.release(held)
        return moved

    async def release(self, held: ReservationHeld) -> None:
        """Give a hold back in full (the request will not spend it)."""
        await self.budgets.settle(held["id"], 0.0)

    async def release_shielded(self, held: ReservationHeld) -> None:
        """Release a hold even while the calling task is being cancelled."""
        await asyncio.shield(self.release(held))

    async def settle(
        self, held: ReservationHeld | None, serverless_cost_usd: float, row: UsageRecord
    ) -> list[Crossing]:
        """Write the request's ledger row and settle its hold with the serverless cost.

        ``serverless_cost_usd`` is what the serverless answer cost, 0 when the
        serverless API did not answer (the hold is then released). Returns the
        alert thresholds the settlement crossed.
        """
        if held is None:
            await self.ledger.record(row)
            return []
        return await self.budgets.settle(held["id"], serverless_cost_usd, row)

    async def expire(self) -> int:
        """Release every hold past its expiry; return how many."""
        return await self.budgets.expire()

    def start_expiry(self, interval_s: float) -> None:
        """Sweep for holds past their expiry every ``interval_s``, in the running loop (once).

        Without it a crashed process's holds would wait for a request that the
        budget refuses; with it the budgets read right (``GET /budget``) within
        ``RESERVATION_TTL_S`` plus one interval of a crash.
        """
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(
                self._expire_forever(interval_s), name="reservation-expiry"
            )

    async def _expire_forever(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                expired = await self.expire()
            except Exception as exc:  # the sweep must outlive a database outage
                logger.warning("could not expire stale budget holds (%s)", type(exc).__name__)
                continue
            if expired:
                logger.warning(
                    "released %d budget hold(s) left past RESERVATION_TTL_S by a request "
                    "that never settled (a crashed process or a lost database connection)",
                    expired,
                )

    async def aclose(self) -> None:
        """Stop the expiry sweep."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
