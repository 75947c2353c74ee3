"""No key ever shows: not in responses, headers, logs, the ledger or the alerts, on any error path.

The gateway runs with router API keys on, a serverless key and a GPU key, and
every error path is exercised: missing and unknown keys, bad JSON, a refused
field, a budget refusal, a backend's client error, a backend rejecting the
router's own key, every backend down, an unknown route. Then everything the
outside can see is scanned for the keys.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from state.ledger import Alert, UsageRecord
from tests.conftest import TEST_KEY, Harness, StartGateway

ROUTER_KEY = "rk-router-secret-0123456789abcdef"
ADMIN_KEY = "rk-admin-secret-fedcba9876543210"
GPU_KEY = "gk-gpu-secret-00112233445566778899"
SECRETS = (ROUTER_KEY, ADMIN_KEY, TEST_KEY, GPU_KEY)
ASK = {"model": "auto", "messages": [{"role": "user", "content": "Hello!"}]}


async def test_no_key_appears_anywhere_after_every_error_path(
    harness: Harness, start_gateway: StartGateway, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.DEBUG)
    await harness.start("serverless", api_key=TEST_KEY)
    await harness.start("gpu", api_key=GPU_KEY)
    services = await harness.services(
        router_api_keys=f"{ROUTER_KEY}:alice,{ADMIN_KEY}:root",
        router_admin_users=["root"],
        gpu_api_key=GPU_KEY,
        lambda_daily_budget=0.0000001,
        over_budget_policy="reject",
    )
    gateway = await start_gateway(services)
    seen: list[str] = []

    async def call(method: str, path: str, key: str | None = ROUTER_KEY, **kwargs: Any) -> None:
        headers = {"authorization": f"Bearer {key}"} if key else {}
        async with httpx.AsyncClient(base_url=gateway.url.removesuffix("/v1")) as http:
            response = await http.request(method, path, headers=headers, **kwargs)
        seen.append(f"{response.status_code} {dict(response.headers)} {response.text}")

    await call("POST", "/v1/chat/completions", key=None, json=ASK)  # 401, no key
    await call("POST", "/v1/chat/completions", key="rk-wrong", json=ASK)  # 401, unknown key
    await call("POST", "/v1/chat/completions", content=b"{not json")  # 400
    await call("POST", "/v1/chat/completions", json={**ASK, "audio": {"voice": "x"}})  # 400 field
    await call("POST", "/v1/chat/completions", json={**ASK, "force_backend": "serverless"})  # 402
    bad_tool = {
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
        "tool_choice": {"type": "function", "function": {"name": "nope"}},
    }
    await call("POST", "/v1/chat/completions", json={**ASK, **bad_tool})  # backend 400
    await call("POST", "/v1/chat/completions", json=ASK)  # ok on the GPU
    await call("POST", "/v1/chat/completions", json={**ASK, "stream": True})  # streamed
    await call("GET", "/v1/embeddings")  # 404
    await call("GET", "/stats")
    await call("GET", "/health", key=None)
    await call("PUT", "/budget/user/alice", json={"daily_usd": 1})  # not an admin
    # the router's own key for a backend is wrong: the backend's 401 is the router's problem
    await harness.stop("gpu")
    await harness.start("gpu", api_key="a-different-key")
    await call("POST", "/v1/chat/completions", json=ASK)  # every backend fails: 502
    statuses = [int(line.split(" ", 1)[0]) for line in seen]
    assert statuses[:6] == [401, 401, 400, 400, 402, 400]
    assert statuses[6:8] == [200, 200]
    assert statuses[-1] == 502

    async with services.ledger.engine.connect() as conn:
        rows = [dict(r._mapping) for r in await conn.execute(select(UsageRecord.__table__))]
        alerts = [dict(r._mapping) for r in await conn.execute(select(Alert.__table__))]
    assert len(rows) >= 3
    everything = "\n".join([*seen, repr(rows), repr(alerts), caplog.text])
    for secret in SECRETS:
        assert secret not in everything
        assert secret[-12:] not in everything  # not even a tail of it
