"""Budget alerts: said in the log, posted to ``ALERT_WEBHOOK_URL``, their delivery recorded.

Delivery runs in a background task: a slow or failing webhook never blocks or
fails a request. Each alert row records whether its message was delivered.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

import httpx
from pydantic import SecretStr
from sqlalchemy import update

from backends.webhook import RETRY_DELAYS_S, post_with_retries
from state.budgets import Crossing
from state.ledger import Alert, Ledger
from state.reporting.money import usd

logger = logging.getLogger(__name__)

__all__ = ["RETRY_DELAYS_S", "AlertNotifier", "alert_text"]


def alert_text(crossing: Crossing) -> str:
    """Say what was crossed, for people."""
    owner = "global" if crossing.scope == "global" else f"{crossing.scope} {crossing.scope_key}"
    period = "daily" if crossing.period == "day" else "monthly"
    return (
        f":warning: hybrid-router: {owner} {period} serverless budget at "
        f"{crossing.threshold:.0%} ({usd(crossing.spent_usd)} of {usd(crossing.limit_usd)}, "
        f"window {crossing.window_key})"
    )


class AlertNotifier:
    """Posts alerts to ``ALERT_WEBHOOK_URL`` in the background and records each delivery."""

    def __init__(self, http: httpx.AsyncClient, url: SecretStr | None, ledger: Ledger) -> None:
        """Keep the client, the (secret) URL and the ledger for delivery status."""
        self.http = http
        self._url = url
        self.ledger = ledger
        self._tasks: set[asyncio.Task[None]] = set()

    def notify(self, crossings: Iterable[Crossing]) -> None:
        """Start delivering each alert; return at once."""
        for crossing in crossings:
            logger.warning("%s", alert_text(crossing))
            task = asyncio.get_running_loop().create_task(self._deliver(crossing))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _deliver(self, crossing: Crossing) -> None:
        status = "no_webhook"
        if self._url is not None:
            body = {
                "text": alert_text(crossing),
                "scope": crossing.scope,
                "key": crossing.scope_key,
                "period": crossing.period,
                "window": crossing.window_key,
                "threshold": crossing.threshold,
                "spent_usd": round(crossing.spent_usd, 6),
                "limit_usd": crossing.limit_usd,
            }
            sent = await post_with_retries(self.http, self._url, body)
            status = "sent" if sent else "failed"
        try:
            mark = update(Alert).where(Alert.id == crossing.alert_id).values(delivered=status)
            await self.ledger.write(lambda conn: conn.execute(mark).rowcount)
        except Exception:
            logger.exception("could not record the delivery of alert %s", crossing.alert_id)

    async def drain(self) -> None:
        """Wait for deliveries in flight (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
