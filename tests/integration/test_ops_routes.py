"""The gateway's operational routes over real HTTP: health, stats, usage, budget, metrics.

Each app runs in this event loop (uvicorn on a free port) on services wired to
the emulators of ``tests/conftest.py``; the figures are checked against the
ledger's rows.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai
import pytest
import uvicorn
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette

from emulator import EmulatorConfig, serve_emulator
from emulator.server import _EmbeddedServer
from gateway.app import create_app
from gateway.health import public_url
from state.context import Services
from tests.conftest import GPU_MODELS, SERVERLESS_MODELS, TEST_KEY, Harness

HELLO = [{"role": "user", "content": "Hello!"}]
# a medium-complexity prompt: with cost_priority=performance it needs a tier-3 model,
# which only serverless has, so serverless goes first when the ratio allows
MEDIUM = [
    {
        "role": "user",
        "content": "Explain why the sky is blue, then compare it with sunsets step by step "
        "and prove it",
    }
]
PERFORMANCE = {"cost_priority": "performance"}

# The reports and the admin routes need keys: an admin (root) and a key per user.
ADMIN_KEY = "sk-router-root-5c0ffee0d15ea5e5"
USER_KEYS = {
    name: f"sk-router-{name}-{index:016d}" for index, name in enumerate(("alice", "bob", "carol"))
}
OPERATOR = {
    "router_api_keys": ",".join(
        [f"{ADMIN_KEY}:root", *(f"{key}:{user}" for user, key in USER_KEYS.items())]
    ),
    "router_admin_users": "root",
}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@dataclass
class Served:
    """One gateway app served in this loop, and clients for it."""

    base: str  # http://127.0.0.1:<port>
    services: Services
    app: Starlette
    http: httpx.AsyncClient
    clients: list[openai.AsyncOpenAI] = field(default_factory=list)

    def openai(self, api_key: str = ADMIN_KEY) -> openai.AsyncOpenAI:
        client = openai.AsyncOpenAI(base_url=f"{self.base}/v1", api_key=api_key, max_retries=0)
        self.clients.append(client)
        return client

    async def rows(self) -> list[Any]:
        return await self.services.ledger.rows()

    async def chat(self, **kwargs: Any) -> Any:
        """Chat as ``user`` (with that user's key when the gateway has keys; else as admin)."""
        kwargs.setdefault("messages", HELLO)
        kwargs.setdefault("model", "auto")
        key = USER_KEYS.get(kwargs.get("user") or "", ADMIN_KEY)
        return await self.openai(key).chat.completions.create(**kwargs)


Serve = Callable[..., Awaitable[Served]]


@pytest.fixture
async def serve(harness: Harness) -> AsyncIterator[Serve]:
    """``await serve(services)``: serve a gateway app on ``services``; stopped after the test.

    ``served.http`` sends ``key`` (the admin's by default; None: no key).
    """
    running: list[tuple[uvicorn.Server, asyncio.Task[None], socket.socket, Served]] = []

    async def start(
        services: Services, app: Starlette | None = None, key: str | None = ADMIN_KEY
    ) -> Served:
        async def provider() -> Services:
            return services

        app = app or create_app(services=provider)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        config = uvicorn.Config(app, log_level="warning", lifespan="off", log_config=None)
        server = _EmbeddedServer(config)
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            assert not task.done(), task.result()
            await asyncio.sleep(0.002)
        base = f"http://127.0.0.1:{sock.getsockname()[1]}"
        # a gateway without keys ignores the header
        http = httpx.AsyncClient(base_url=base, timeout=30, headers=bearer(key) if key else None)
        served = Served(base, services, app, http)
        running.append((server, task, sock, served))
        return served

    try:
        yield start
    finally:
        for server, task, sock, served in running:
            for client in served.clients:
                await client.close()
            await served.http.aclose()
            server.should_exit = True
            await task
            sock.close()


@pytest.fixture
async def served(both_up: Harness, serve: Serve) -> Served:
    return await serve(await both_up.services(**OPERATOR))


# --- /health ------------------------------------------------------------------------------


async def test_health_shows_each_backend_and_endpoint(served: Served):
    response = await served.http.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert set(body) == {"status", "checked_at", "backends"}
    serverless, gpu = body["backends"]["serverless"], body["backends"]["gpu"]
    assert serverless["status"] == "up"
    (provider,) = serverless["providers"]
    assert provider["name"] == "lambda"
    assert provider["status"] == "up"
    assert provider["latency_ms"] > 0
    assert provider["models"] == sorted(SERVERLESS_MODELS)
    assert provider["error"] is None
    assert "ends_on" not in provider  # an emulator at LAMBDA_API_BASE: not Lambda's own API
    assert provider["url"] == served.services.settings.lambda_api_base
    assert provider["host"] == "127.0.0.1"
    assert gpu["status"] == "up"
    assert gpu["endpoints_up"] == 1
    (endpoint,) = gpu["endpoints"]
    assert endpoint["status"] == "up"
    assert endpoint["latency_ms"] > 0
    assert endpoint["url"] == served.services.settings.gpu_endpoints[0]
    for name in ("running", "waiting", "in_flight", "load"):
        assert endpoint[name] == 0
    assert endpoint["capacity"] == served.services.settings.gpu_concurrency_per_endpoint
    assert endpoint["last_probe_age_s"] < 5
    assert TEST_KEY not in response.text


async def test_health_is_503_when_both_backends_are_down(both_up: Harness, serve: Serve):
    served = await serve(await both_up.services(**OPERATOR, gpu_health_interval_s=0.05))
    assert (await served.http.get("/health")).status_code == 200

    await both_up.stop("serverless")
    response = await served.http.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "degraded"
    assert body["backends"]["serverless"]["status"] == "down"
    (provider,) = body["backends"]["serverless"]["providers"]
    assert "ConnectError" in provider["error"]
    assert body["backends"]["gpu"]["status"] == "up"

    await both_up.stop("gpu")
    await asyncio.sleep(0.06)  # the pool's data is older than its probe interval: re-probed
    response = await served.http.get("/health")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "down"
    assert [e["status"] for e in body["backends"]["gpu"]["endpoints"]] == ["down"]
    assert body["backends"]["gpu"]["endpoints"][0]["error"].startswith("probe failed")


async def test_health_without_gpu_pool_says_disabled(harness: Harness, serve: Serve):
    await harness.start("serverless", api_key=TEST_KEY)
    served = await serve(await harness.services(**OPERATOR))
    body = (await served.http.get("/health")).json()
    assert body["status"] == "ok"
    assert body["backends"]["gpu"] == {
        "status": "disabled",
        "reason": "no GPU_ENDPOINTS are configured",
    }


async def test_health_says_why_each_endpoint_takes_traffic_or_not(harness: Harness, serve: Serve):
    await harness.start("serverless", api_key=TEST_KEY)
    failing = await harness.start("gpu_failing", fail_rate=1.0, fail_status=503)
    one_model = GPU_MODELS[:1]
    small = await harness.stack.enter_async_context(
        serve_emulator(EmulatorConfig(name="gpu-small", models=one_model))
    )
    with_secret = failing.replace("http://", "http://operator:hunter2@")
    services = await harness.services(
        **OPERATOR, gpu_endpoints=[with_secret, small], gpu_cooldown_s=600
    )
    served = await serve(services)
    body = (await served.http.get("/health")).json()
    first, second = body["backends"]["gpu"]["endpoints"]
    assert first["url"] == failing
    assert (first["status"], first["taking_traffic"], first["reason"]) == ("up", True, "up")
    assert first["models"] == sorted(GPU_MODELS)
    assert second["models"] == one_model
    missing = ", ".join(m for m in GPU_MODELS if m not in one_model)
    assert second["reason"] == f"up; serves {one_model[0]}, not {missing}"

    # two failures in a row on the failing endpoint (it is tried first, then alone)
    services.gpu_pool.endpoints.pop()
    await served.chat(extra_body={"force_backend": "gpu"})
    response = await served.http.get("/health")
    assert "hunter2" not in response.text
    cooling = response.json()["backends"]["gpu"]["endpoints"][0]
    assert cooling["status"] == "cooling"
    assert cooling["taking_traffic"] is False
    assert cooling["cooldowns"] == 1
    assert cooling["failed_requests"] == 2
    assert cooling["reason"].startswith(
        f"cooling off after 2 failures in a row until {cooling['cooling_until']}"
    )
    assert "503" in cooling["reason"]

    # the cool-down runs out (a long one, ended here, so a slow machine cannot end it
    # before the check above): one trial request may go there
    services.gpu_pool.endpoints[0].cooling_until = time.monotonic()
    on_trial = (await served.http.get("/health")).json()["backends"]["gpu"]["endpoints"][0]
    assert on_trial["status"] == "half_open"
    assert on_trial["taking_traffic"] is True
    assert on_trial["reason"].startswith("on trial after a cool-down")


# --- /stats and /usage --------------------------------------------------------------------


async def make_traffic(served: Served) -> None:
    await served.chat(extra_body={"force_backend": "gpu"}, user="alice")
    await served.chat(extra_body={"force_backend": "gpu"}, user="bob")
    await served.chat(extra_body={"force_backend": "serverless"}, user="alice")
    stream = await served.openai().chat.completions.create(
        model="auto", messages=HELLO, stream=True, extra_body={"force_backend": "serverless"}
    )
    async for _ in stream:
        pass
    with pytest.raises(openai.BadRequestError):  # refused before the graph: no ledger row
        await served.chat(messages=[])


async def test_stats_equal_the_ledger(served: Served):
    await make_traffic(served)
    rows = await served.rows()
    assert len(rows) == 4

    stats = (await served.http.get("/stats")).json()
    assert stats["timezone"] == "UTC"
    for period in ("today", "month"):
        figures = stats[period]
        assert figures["requests"] == len(rows)
        assert figures["by_status"] == {"ok": 4}
        assert figures["fallbacks"] == 0
        assert figures["fallback_rate"] == 0.0
        assert figures["cost_usd"] == pytest.approx(sum(r.cost_usd for r in rows))
        for backend in ("serverless", "gpu"):
            mine = [r for r in rows if r.backend == backend]
            entry = figures["by_backend"][backend]
            assert entry["requests"] == len(mine) == 2
            assert entry["share"] == 0.5
            assert entry["cost_usd"] == pytest.approx(sum(r.cost_usd for r in mine))
    assert stats["today"]["start"].endswith("T00:00:00+00:00")
    assert stats["month"]["start"][8:] == "01T00:00:00+00:00"


async def test_stats_count_fallbacks_and_failures(harness: Harness, serve: Serve):
    await harness.start("serverless", api_key=TEST_KEY)
    await harness.start("gpu", fail_rate=1.0, fail_status=503)
    served = await serve(await harness.services(**OPERATOR))
    await served.chat(extra_body={"cost_priority": "low_cost"})  # GPU fails: falls back
    # the same ledger, with serverless ruled out: every request fails
    no_serverless = await serve(await harness.services(**OPERATOR, serverless_ratio=0.0))
    for _ in range(2):
        with pytest.raises(openai.APIStatusError):
            await no_serverless.chat()
    rows = await served.rows()
    assert len(rows) == 3

    stats = (await served.http.get("/stats")).json()["today"]
    assert stats["requests"] == 3
    assert stats["by_status"] == {"ok": 1, "failed": 2}
    assert stats["fallbacks"] == sum(1 for r in rows if r.fallbacks) >= 1
    assert stats["fallback_rate"] == stats["fallbacks"] / 3
    assert stats["by_backend"]["serverless"]["requests"] == 1
    assert stats["by_backend"]["gpu"]["requests"] == 0
    assert stats["by_backend"]["none"]["requests"] == 2  # failed: no backend answered


async def test_usage_report_equals_the_ledger(served: Served):
    await make_traffic(served)
    rows = await served.rows()

    response = await served.http.get("/usage", params={"days": 1, "group_by": "backend"})
    assert response.status_code == 200
    usage = response.json()
    assert usage["days"] == 1
    assert usage["group_by"] == "backend"
    assert usage["totals"]["requests"] == len(rows)
    assert usage["totals"]["cost_usd"] == pytest.approx(sum(r.cost_usd for r in rows))
    assert usage["totals"]["prompt_tokens"] == sum(r.prompt_tokens for r in rows)
    for backend, figures in usage["groups"].items():
        mine = [r for r in rows if r.backend == backend]
        assert figures["requests"] == len(mine)
        assert figures["completion_tokens"] == sum(r.completion_tokens for r in mine)
    assert set(usage) >= {"start", "end", "totals", "groups", "savings"}

    by_user = (await served.http.get("/usage", params={"group_by": "user"})).json()
    assert by_user["days"] == 7
    assert {k: v["requests"] for k, v in by_user["groups"].items()} == {
        "alice": 2,
        "bob": 1,
        "root": 1,  # the stream, sent with the admin's key
    }
    by_day = (await served.http.get("/usage")).json()
    assert by_day["group_by"] == "day"
    assert len(by_day["groups"]) == 1


BAD_USAGE = [
    ({"days": "0"}, "days", "from 1 to 366"),
    ({"days": "367"}, "days", "from 1 to 366"),
    ({"days": "seven"}, "days", "whole number of days"),
    ({"days": "1.5"}, "days", "whole number of days"),
    ({"group_by": "team"}, "group_by", "day, model, backend, provider, user"),
]


async def test_usage_bad_parameters_are_400(served: Served):
    for params, param, message in BAD_USAGE:
        response = await served.http.get("/usage", params=params)
        assert response.status_code == 400, params
        error = response.json()["error"]
        assert message in error["message"]
        assert "/usage?days=7" in error["message"]
        assert error["param"] == param
        assert error["type"] == "invalid_request_error"


# --- /budget ------------------------------------------------------------------------------


def window(budgets: list[dict[str, Any]], scope: str, period: str) -> dict[str, Any]:
    (found,) = [b for b in budgets if b["scope"] == scope and b["period"] == period]
    return found


async def test_budget_shows_the_spend(served: Served):
    before = (await served.http.get("/budget")).json()
    assert before["user"] is None
    assert before["team"] is None
    assert window(before["budgets"], "global", "day")["spent_usd"] == 0.0

    await served.chat(extra_body={"force_backend": "serverless"}, user="alice")
    (row,) = await served.rows()
    after = (await served.http.get("/budget", params={"user": "alice"})).json()
    assert after["user"] == "alice"
    day = window(after["budgets"], "global", "day")
    assert day["spent_usd"] == pytest.approx(row.cost_usd)
    assert row.cost_usd > 0
    assert day["remaining_usd"] == pytest.approx(day["limit_usd"] - row.cost_usd)
    assert not [b for b in after["budgets"] if b["scope"] == "user"]  # alice has none yet


async def test_put_budget_sets_a_user_budget_that_the_router_enforces(
    both_up: Harness, serve: Serve
):
    # serverless may take every request, and a tier-3 model only it serves goes first
    served = await serve(await both_up.services(**OPERATOR, serverless_ratio=1.0))
    first = await served.chat(user="alice", messages=MEDIUM, extra_body=PERFORMANCE)
    assert first.routing["backend"] == "serverless"

    response = await served.http.put(
        "/budget/user/alice", json={"daily_usd": 0.0, "monthly_usd": 10}
    )
    assert response.status_code == 200
    body = response.json()
    assert body["scope"] == "user"
    assert body["key"] == "alice"
    assert body["daily_usd"] == 0.0
    assert body["monthly_usd"] == 10.0
    assert {(b["period"], b["limit_usd"]) for b in body["budgets"]} == {
        ("day", 0.0),
        ("month", 10.0),
    }
    shown = (await served.http.get("/budget", params={"user": "alice"})).json()
    assert window(shown["budgets"], "user", "day")["limit_usd"] == 0.0

    # over budget, the default policy (gpu) sends alice to the GPU pool...
    redirected = await served.chat(user="alice", messages=MEDIUM, extra_body=PERFORMANCE)
    assert redirected.routing["backend"] == "gpu"
    assert "budget" in redirected.routing["reason"]
    # ...and bob, without a budget of his own, still goes to serverless
    other = await served.chat(user="bob", messages=MEDIUM, extra_body=PERFORMANCE)
    assert other.routing["backend"] == "serverless"

    # with the reject policy the same budget refuses
    strict = await serve(
        await both_up.services(**OPERATOR, serverless_ratio=1.0, over_budget_policy="reject")
    )
    assert (await strict.http.put("/budget/user/carol", json={"daily_usd": 0.0})).status_code == 200
    with pytest.raises(openai.APIStatusError) as caught:
        await strict.chat(user="carol", messages=MEDIUM, extra_body=PERFORMANCE)
    assert caught.value.status_code == 402
    assert caught.value.body["code"] == "budget_exceeded"
    assert "carol" in caught.value.body["message"]


BAD_BUDGETS = [
    ("/budget/org/acme", {"daily_usd": 1}, "scope", "'user' or a 'team'"),
    ("/budget/user/" + "x" * 129, {"daily_usd": 1}, "key", "1 to 128 characters"),
    ("/budget/user/alice", {"daily_usd": -1}, "daily_usd", ">= 0"),
    ("/budget/user/alice", {"monthly_usd": "ten"}, "monthly_usd", ">= 0"),
    ("/budget/user/alice", {"monthly_usd": True}, "monthly_usd", ">= 0"),
    ("/budget/user/alice", {"daily": 5}, "daily", "unknown field"),
    ("/budget/team/search", {}, None, "give daily_usd, monthly_usd or both"),
    ("/budget/team/search", [1], None, "must be a JSON object"),
]


async def test_put_budget_bad_input_is_400(served: Served):
    for path, body, param, message in BAD_BUDGETS:
        response = await served.http.put(path, json=body)
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert message in error["message"]
        assert error["param"] == param
    response = await served.http.put("/budget/user/alice", content=b"{daily")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"
    assert (await served.http.get("/budget", params={"user": "alice"})).json()["budgets"] == [
        b for b in (await served.http.get("/budget")).json()["budgets"]
    ]  # nothing was set


# --- /metrics -----------------------------------------------------------------------------


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def delta(before: dict[Any, float], after: dict[Any, float], name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


def total(found: dict[Any, float], name: str, **labels: str) -> float:
    return sum(
        value
        for (sample, sample_labels), value in found.items()
        if sample == name and set(labels.items()) <= set(sample_labels)
    )


async def scrape(served: Served) -> dict[Any, float]:
    response = await served.http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return samples(response.text)


async def test_metrics_move_by_exactly_the_requests_made(served: Served):
    before = await scrape(served)
    await make_traffic(served)
    after = await scrape(served)
    rows = await served.rows()
    by_backend = {b: [r for r in rows if r.backend == b] for b in ("serverless", "gpu")}
    (gpu_model,) = {r.model for r in by_backend["gpu"]}
    (serverless_model,) = {r.model for r in by_backend["serverless"]}

    requests = "router_requests_total"
    assert delta(before, after, requests, backend="gpu", model=gpu_model, status="ok") == 2
    assert (
        delta(before, after, requests, backend="serverless", model=serverless_model, status="ok")
        == 2
    )
    assert (
        delta(before, after, requests, backend="none", model="none", status="invalid_request") == 1
    )
    assert total(after, requests) - total(before, requests) == 5
    for backend, model in (("gpu", gpu_model), ("serverless", serverless_model)):
        mine = by_backend[backend]
        labels = {"backend": backend, "model": model}
        assert delta(before, after, "router_cost_usd_total", **labels) == pytest.approx(
            sum(r.cost_usd for r in mine)
        )
        assert delta(before, after, "router_prompt_tokens_total", **labels) == sum(
            r.prompt_tokens for r in mine
        )
        assert delta(before, after, "router_completion_tokens_total", **labels) == sum(
            r.completion_tokens for r in mine
        )
        assert delta(before, after, "router_request_latency_seconds_count", backend=backend) == len(
            mine
        )
    # one stream, on serverless
    assert (
        delta(before, after, "router_time_to_first_token_seconds_count", backend="serverless") == 1
    )
    assert total(after, "router_time_to_first_token_seconds_count") == 1
    assert total(after, "router_fallbacks_total") == 0

    # budget gauges, read from the budget book at scrape time
    spent = sum(r.cost_usd for r in by_backend["serverless"])
    day = {"scope": "global", "key": "", "period": "day"}
    assert after[("router_budget_used_usd", tuple(sorted(day.items())))] == pytest.approx(spent)
    limit = served.services.settings.lambda_daily_budget
    assert after[("router_budget_used_fraction", tuple(sorted(day.items())))] == pytest.approx(
        spent / limit
    )


async def test_metrics_show_every_budget_and_failures(harness: Harness, serve: Serve):
    await harness.start("serverless", api_key=TEST_KEY)
    await harness.start("gpu", fail_rate=1.0, fail_status=503)
    served = await serve(
        await harness.services(**OPERATOR, team_budgets={"search": {"daily": 2.0}})
    )
    assert (
        await served.http.put("/budget/user/alice", json={"daily_usd": 1.0, "monthly_usd": 4})
    ).status_code == 200
    await served.chat(extra_body={"cost_priority": "low_cost"}, user="alice")  # falls back
    found = await scrape(served)
    (row,) = await served.rows()
    assert row.fallbacks >= 1
    assert row.backend == "serverless"
    assert (
        found[("router_fallbacks_total", (("from_backend", "gpu"), ("to_backend", "serverless")))]
        == 1
    )
    gauges = {
        labels: value
        for (name, labels), value in found.items()
        if name == "router_budget_limit_usd"
    }
    assert gauges == {
        (("key", ""), ("period", "day"), ("scope", "global")): 50.0,
        (("key", ""), ("period", "month"), ("scope", "global")): 1000.0,
        (("key", "alice"), ("period", "day"), ("scope", "user")): 1.0,
        (("key", "alice"), ("period", "month"), ("scope", "user")): 4.0,
        (("key", "search"), ("period", "day"), ("scope", "team")): 2.0,
    }
    alice_day = (("key", "alice"), ("period", "day"), ("scope", "user"))
    assert found[("router_budget_used_usd", alice_day)] == pytest.approx(row.cost_usd)


async def test_each_app_has_its_own_registry(both_up: Harness, serve: Serve):
    services = await both_up.services(**OPERATOR)
    one, two = await serve(services), await serve(services)
    await one.chat(extra_body={"force_backend": "gpu"})
    assert total(await scrape(one), "router_requests_total") == 1
    assert total(await scrape(two), "router_requests_total") == 0


async def test_openapi_docstrings_of_the_routes_are_yaml(served: Served):
    from starlette.schemas import SchemaGenerator

    schema = SchemaGenerator({"openapi": "3.0.0", "info": {"title": "t", "version": "1"}})
    paths = schema.get_schema(served.app.routes)["paths"]
    for path in ("/health", "/stats", "/usage", "/budget", "/budget/{scope}/{key}", "/metrics"):
        assert path in paths
        for operation in paths[path].values():
            assert operation["summary"]
            assert operation["responses"]


def test_public_url_drops_credentials_and_query():
    assert public_url("https://user:pw@gpu-1.internal:8000/v1?token=abc#x") == (
        "https://gpu-1.internal:8000/v1"
    )
    assert public_url("http://[::1]:9000/v1") == "http://[::1]:9000/v1"


async def test_metrics_per_gpu_endpoint_after_an_endpoint_fails(harness: Harness, serve: Serve):
    await harness.start("serverless", api_key=TEST_KEY)
    good = await harness.start("gpu")
    failing = await harness.start("gpu_failing", fail_rate=1.0, fail_status=503)
    with_secret = failing.replace("http://", "http://operator:hunter2@")
    served = await serve(await harness.services(**OPERATOR, gpu_endpoints=[with_secret, good]))
    gpu = {"force_backend": "gpu"}
    for _ in range(3):  # the first tries the failing endpoint once, then goes to the good one
        await served.chat(extra_body=gpu)
    found = await scrape(served)

    def of(name: str, url: str) -> float:
        return found[(name, (("endpoint", url),))]

    assert of("router_gpu_endpoint_requests_total", failing) == 1
    assert of("router_gpu_endpoint_failures_total", failing) == 1
    assert of("router_gpu_endpoint_up", failing) == 1  # one failure is a blip
    assert of("router_gpu_endpoint_requests_total", good) == 3
    assert of("router_gpu_endpoint_failures_total", good) == 0
    assert of("router_gpu_endpoint_peak_in_flight", good) == 1

    # the good one goes away: its connection error, then a second 503 cools the other off
    await harness.stop("gpu")
    answer = await served.chat(extra_body=gpu)
    assert answer.model_extra["routing"]["backend"] == "serverless"  # fell back
    response = await served.http.get("/metrics")
    assert "hunter2" not in response.text
    assert "operator" not in response.text
    found = samples(response.text)
    assert of("router_gpu_endpoint_requests_total", failing) == 2
    assert of("router_gpu_endpoint_failures_total", failing) == 2
    assert of("router_gpu_endpoint_cooldowns_total", failing) == 1
    assert of("router_gpu_endpoint_up", failing) == 0
    assert of("router_gpu_endpoint_requests_total", good) == 4
    assert of("router_gpu_endpoint_failures_total", good) == 1
    assert of("router_gpu_endpoint_cooldowns_total", good) == 0
    for url in (good, failing):
        assert of("router_gpu_endpoint_in_flight", url) == 0
