"""Serverless providers and GPU endpoints in fallback order, against emulators over real HTTP.

Each provider is an emulator of its own that serves the catalog's models under
the provider's own names; prices differ per provider, so the cost recorded
says which one served the request.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
import pytest

from graphs.router import graph
from state.context import Context
from state.errors import BackendRejectedError
from state.reporting.usage import usage_report
from tests.conftest import TEST_KEY, Harness, StartGateway, budget_books, received

MODEL = "llama3.1-8b-instruct"
GREETING = {"messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 20}
# USD per million input / output tokens: beta costs several times alpha
ALPHA_PRICE = (1.0, 2.0)
BETA_PRICE = (7.0, 11.0)


def provider(name: str, url: str, price: tuple[float, float], priority: int) -> dict[str, Any]:
    return {
        "name": name,
        "base_url": url,
        "api_key": TEST_KEY,
        "priority": priority,
        "models": {
            MODEL: {
                "name": f"{name}/llama-8b",
                "input_usd_per_mtok": price[0],
                "output_usd_per_mtok": price[1],
            }
        },
    }


async def two_providers(harness: Harness, alpha: dict[str, Any], **overrides: Any) -> Context:
    """Start alpha (configured as given) and beta (healthy); return a context on both."""
    alpha_url = await harness.start("alpha", models=["alpha/llama-8b"], api_key=TEST_KEY, **alpha)
    beta_url = await harness.start("beta", models=["beta/llama-8b"], api_key=TEST_KEY)
    values: dict[str, Any] = {
        "lambda_api_key": None,
        # listed out of order: priority decides
        "serverless_providers": [
            provider("beta", beta_url, BETA_PRICE, priority=2),
            provider("alpha", alpha_url, ALPHA_PRICE, priority=1),
        ],
    }
    values.update(overrides)
    return await harness.context(**values)


def cost(price: tuple[float, float], usage: dict[str, int]) -> float:
    return (usage["prompt_tokens"] * price[0] + usage["completion_tokens"] * price[1]) / 1e6


async def test_a_failing_provider_hands_the_request_to_the_next_at_its_price(harness: Harness):
    context = await two_providers(harness, {"fail_rate": 1.0, "fail_status": 503})
    result = await graph.ainvoke(GREETING, context=context)

    attempts = result["routing"]["attempts"]
    assert [(a["backend"], a.get("provider"), a["status"]) for a in attempts] == [
        ("serverless", "alpha", "failed"),
        ("serverless", "beta", "ok"),
    ]
    assert attempts[0]["status_code"] == 503
    # each provider got the model under its own name; alpha once (beta was there to take it)
    assert [b["model"] for b in await received(harness.alpha_url)] == ["alpha/llama-8b"]
    assert [b["model"] for b in await received(harness.beta_url)] == ["beta/llama-8b"]
    assert result["cost_usd"] == pytest.approx(cost(BETA_PRICE, result["usage"]))
    assert (
        "serverless (alpha) failed, fell back to serverless (beta)" in result["routing"]["reason"]
    )

    assert context.services is not None
    (row,) = await context.services.ledger.rows()
    assert (row.backend, row.provider, row.status) == ("serverless", "beta", "ok")
    assert row.cost_usd == pytest.approx(cost(BETA_PRICE, result["usage"]))
    assert row.fallbacks == 1
    assert (row.error or "").startswith("serverless (alpha): HTTP 503")
    # the hold taken at alpha's price moved to beta's: one released, one settled at beta's cost
    books = await budget_books(context.services)
    assert books["committed"] == pytest.approx(row.cost_usd)
    assert books["reserved"] == pytest.approx(0.0)
    assert sorted(books["holds"]) == ["released", "settled"]


async def test_a_client_error_goes_back_to_the_caller_and_the_next_provider_is_not_called(
    harness: Harness,
):
    context = await two_providers(harness, {"fail_rate": 1.0, "fail_status": 400})
    with pytest.raises(BackendRejectedError) as caught:
        await graph.ainvoke(GREETING, context=context)

    assert caught.value.status_code == 400
    assert len(await received(harness.alpha_url)) == 1
    assert await received(harness.beta_url) == []
    assert context.services is not None
    (row,) = await context.services.ledger.rows()
    assert row.status == "failed"
    assert row.provider is None
    books = await budget_books(context.services)
    assert books["committed"] == pytest.approx(0.0)
    assert books["holds"] == ["released"]


async def test_the_first_provider_by_priority_serves_when_it_is_up(harness: Harness):
    context = await two_providers(harness, {})
    result = await graph.ainvoke(GREETING, context=context)

    (attempt,) = result["routing"]["attempts"]
    assert (attempt["provider"], attempt["status"]) == ("alpha", "ok")
    assert [b["model"] for b in await received(harness.alpha_url)] == ["alpha/llama-8b"]
    assert await received(harness.beta_url) == []
    assert result["cost_usd"] == pytest.approx(cost(ALPHA_PRICE, result["usage"]))


async def test_when_every_provider_fails_the_gpu_pool_serves(harness: Harness):
    gpu_url = await harness.start("gpu")
    context = await two_providers(
        harness, {"fail_rate": 1.0, "fail_status": 503}, gpu_endpoints=[gpu_url]
    )
    assert context.services is not None
    await harness.stop("beta")  # now down: a connection error
    result = await graph.ainvoke({**GREETING, "force_backend": "serverless"}, context=context)

    assert [
        (a["backend"], a.get("provider"), a["status"]) for a in result["routing"]["attempts"]
    ] == [
        ("serverless", "alpha", "failed"),
        ("serverless", "beta", "failed"),
        ("gpu", None, "ok"),
    ]
    (row,) = await context.services.ledger.rows()
    assert (row.backend, row.provider, row.fallbacks) == ("gpu", None, 2)
    assert (await budget_books(context.services))["committed"] == pytest.approx(0.0)


async def test_the_usage_report_says_which_provider_spent_what(harness: Harness):
    gpu_url = await harness.start("gpu")
    context = await two_providers(
        harness, {"fail_rate": 1.0, "fail_status": 503}, gpu_endpoints=[gpu_url]
    )
    assert context.services is not None
    services = context.services
    answers = [
        await graph.ainvoke({**GREETING, "force_backend": backend}, context=context)
        for backend in ("serverless", "serverless", "gpu")
    ]
    now = services.clock()
    report = await usage_report(
        services.ledger,
        services.settings,
        services.catalog,
        now - timedelta(hours=1),
        now + timedelta(hours=1),
        "provider",
    )
    groups = report["groups"]
    assert set(groups) == {"beta", "gpu"}
    assert groups["beta"]["requests"] == 2
    assert groups["beta"]["cost_usd"] == pytest.approx(
        sum(cost(BETA_PRICE, a["usage"]) for a in answers[:2])
    )
    assert groups["gpu"]["requests"] == 1


async def test_the_lambda_settings_still_make_a_provider(both_up: Harness):
    context = await both_up.context()
    assert context.services is not None
    assert [p.name for p in context.services.providers] == ["lambda"]
    result = await graph.ainvoke({**GREETING, "force_backend": "serverless"}, context=context)

    (attempt,) = result["routing"]["attempts"]
    assert (attempt["backend"], attempt["provider"]) == ("serverless", "lambda")
    (row,) = await context.services.ledger.rows()
    assert row.provider == "lambda"
    spec = context.services.catalog.providers["lambda"].models[MODEL]
    price = (spec.input_usd_per_mtok or 0.0, spec.output_usd_per_mtok or 0.0)
    assert price[0] > 0
    assert row.cost_usd == pytest.approx(cost(price, result["usage"]))
    # the served model name is the catalog's own: Lambda's names are the catalog ids
    assert (await received(both_up.serverless_url))[-1]["model"] == MODEL


async def test_health_lists_each_provider_without_its_key(
    harness: Harness, start_gateway: StartGateway
):
    alpha_url = await harness.start("alpha", models=["alpha/llama-8b"], api_key=TEST_KEY)
    disabled = {**provider("beta", "http://127.0.0.1:9/v1", BETA_PRICE, 2), "enabled": False}
    services = await harness.services(
        lambda_api_key=None,
        serverless_providers=[provider("alpha", alpha_url, ALPHA_PRICE, 1), disabled],
    )
    gateway = await start_gateway(services)
    async with httpx.AsyncClient() as http:
        response = await http.get(gateway.url.removesuffix("/v1") + "/health")
    assert response.status_code == 200
    serverless = response.json()["backends"]["serverless"]
    assert serverless["status"] == "up"
    alpha, beta = serverless["providers"]
    assert (alpha["name"], alpha["host"], alpha["models"], alpha["status"]) == (
        "alpha",
        "127.0.0.1",
        [MODEL],
        "up",
    )
    assert (beta["name"], beta["status"]) == ("beta", "disabled")
    assert TEST_KEY not in response.text


# -- the GPU pool: another endpoint before serverless ------------------------------


async def test_a_hanging_gpu_endpoint_hands_the_request_to_another_before_serverless(
    harness: Harness,
):
    serverless_url = await harness.start("serverless", api_key=TEST_KEY)
    hanging = await harness.start("gpu_a", fault="hang")
    healthy = await harness.start("gpu_b")
    with_secret = hanging.replace("http://", "http://operator:hunter2@")
    context = await harness.context(
        lambda_api_base=serverless_url, gpu_endpoints=[with_secret, healthy], request_timeout_s=0.5
    )
    result = await graph.ainvoke({**GREETING, "force_backend": "gpu"}, context=context)

    attempts = result["routing"]["attempts"]
    assert [(a["backend"], a.get("endpoint"), a["status"]) for a in attempts] == [
        ("gpu", hanging, "failed"),  # no credentials
        ("gpu", healthy, "ok"),
    ]
    assert "timed out" in (attempts[0]["error"] or "")
    assert await received(serverless_url) == []
    assert len(await received(healthy)) == 1
    assert context.services is not None
    (row,) = await context.services.ledger.rows()
    assert (row.backend, row.fallbacks) == ("gpu", 1)
    assert (row.error or "").startswith(f"gpu ({hanging}): timed out")
    assert "hunter2" not in str(result)


async def test_with_serverless_off_a_gpu_timeout_still_succeeds_on_another_endpoint(
    harness: Harness,
):
    hanging = await harness.start("gpu_a", fault="hang")
    healthy = await harness.start("gpu_b")
    context = await harness.context(
        disable_lambda_labs=True, gpu_endpoints=[hanging, healthy], request_timeout_s=0.5
    )
    result = await graph.ainvoke(GREETING, context=context)

    assert [a["status"] for a in result["routing"]["attempts"]] == ["failed", "ok"]
    assert result["routing"]["backend"] == "gpu"
    assert context.services is not None
    (row,) = await context.services.ledger.rows()
    assert (row.status, row.backend, row.fallbacks) == ("ok", "gpu", 1)


async def test_models_list_and_chat_through_the_gateway_with_providers(
    harness: Harness, start_gateway: StartGateway
):
    alpha_url = await harness.start("alpha", models=["alpha/llama-8b"], api_key=TEST_KEY)
    services = await harness.services(
        lambda_api_key=None, serverless_providers=[provider("alpha", alpha_url, ALPHA_PRICE, 1)]
    )
    gateway = await start_gateway(services)
    models = await gateway.client.models.list()
    assert MODEL in {m.id for m in models.data}
    answer = await gateway.client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hello!"}], max_tokens=20
    )
    assert answer.choices[0].message.content
    row = await gateway.only_row()
    assert (row.provider, row.model) == ("alpha", MODEL)
    assert TEST_KEY not in str(row.__dict__)
