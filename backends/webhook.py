"""POST a JSON payload to a webhook (Slack-compatible), retried with backoff.

A backend client like the others: it talks to one server and knows nothing of
the ledger. What to send and what to record of it is :mod:`state.alerts`'s.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx
from pydantic import SecretStr

logger = logging.getLogger(__name__)

RETRY_DELAYS_S = (0.5, 2.0, 8.0)


async def post_with_retries(
    http: httpx.AsyncClient,
    url: SecretStr,
    body: dict[str, Any],
    delays: tuple[float, ...] = RETRY_DELAYS_S,
) -> bool:
    """POST ``body`` to ``url`` until it answers 2xx, waiting ``delays`` between tries.

    Returns:
        Whether the webhook accepted it. The URL (a secret: it holds the
        webhook's token) is never logged.
    """
    for attempt, delay in enumerate((0.0, *delays)):
        if delay:
            await asyncio.sleep(delay)
        try:
            response = await http.post(url.get_secret_value(), json=body, timeout=10.0)
        except httpx.HTTPError as exc:
            logger.warning("webhook attempt %d failed: %s", attempt + 1, type(exc).__name__)
            continue
        if response.status_code < 300:
            return True
        logger.warning("webhook attempt %d: HTTP %d", attempt + 1, response.status_code)
    return False
