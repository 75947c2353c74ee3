"""API keys (``ROUTER_API_KEYS``) on the gateway and on the LangGraph server's graph API.

The gateway runs in this loop (uvicorn, :mod:`tests.integration.test_ops_routes`); the graph
API runs in its own ``langgraph dev`` with keys set, driven with langgraph-sdk.
Every test also checks that no key leaks into responses, the ledger or the logs.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from langgraph_sdk import Auth, get_client
from pydantic import ValidationError
from sqlalchemy import text
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway import auth as gateway_auth
from gateway.app import create_app
from gateway.auth import authenticate, caller
from state.api_keys import ApiKeyIdentity, RouterApiKeys
from state.context import Services
from state.settings import Settings
from tests.conftest import (
    Harness,
    free_port,
    langgraph_dev_command,
    running_server,
    server_env,
)
from tests.integration import test_ops_routes
from tests.integration.test_ops_routes import HELLO, Serve, Served

serve = test_ops_routes.serve  # the fixture: serve a gateway app in this loop

ALICE_KEY = "sk-router-alice-6f1d0c9e7b2a4f58"
BOB_KEY = "sk-router-bob-93ab71c2d4e5f607"
WRONG_KEY = "sk-router-nobody-0000000000000000"
KEYS = f"{ALICE_KEY}:alice:search, {BOB_KEY}:bob"
SECRETS = (ALICE_KEY, BOB_KEY, WRONG_KEY)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def assert_no_key_in(*texts: str) -> None:
    for blob in texts:
        for secret in SECRETS:
            assert secret not in blob


def response_text(response: httpx.Response) -> str:
    return response.text + "\n" + "\n".join(f"{k}: {v}" for k, v in response.headers.items())


async def ledger_dump(services: Services) -> str:
    """Every row of every ledger table, as text."""
    dumped = []
    async with services.ledger.engine.connect() as conn:
        for table in ("usage_records", "budget_counters", "reservations", "budgets", "alerts"):
            rows = (await conn.execute(text(f"SELECT * FROM {table}"))).all()
            dumped.extend(repr(tuple(row)) for row in rows)
    return "\n".join(dumped)


# --- the setting --------------------------------------------------------------------------


def test_router_api_keys_parse_and_never_show_a_key(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("ROUTER_API_KEYS", KEYS + ",")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    keys = settings.router_api_keys
    assert len(keys) == 2
    assert keys
    assert keys.identify(ALICE_KEY) == ApiKeyIdentity("alice", "search")
    assert keys.identify(BOB_KEY) == ApiKeyIdentity("bob", None)
    assert keys.identify(WRONG_KEY) is None
    assert keys.identify("") is None
    assert repr(keys) == "RouterApiKeys(2 keys)"
    assert_no_key_in(repr(settings), str(settings), str(settings.model_dump()))
    assert_no_key_in(settings.model_dump_json())
    assert settings.model_dump()["router_api_keys"] == "**********"

    monkeypatch.delenv("ROUTER_API_KEYS")
    assert not Settings(_env_file=None).router_api_keys  # type: ignore[call-arg]
    assert RouterApiKeys.parse(" ") == RouterApiKeys()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (ALICE_KEY, "entry 1 of 1 has 1 ':'-separated parts instead of 2 or 3"),
        (f"{ALICE_KEY}:alice:search:x", "has 4 ':'-separated parts"),
        (f"{BOB_KEY}:bob,:alice", "entry 2 of 2 has an empty key"),
        (f"{ALICE_KEY}:", "has an empty or over-long user name"),
        (f"{ALICE_KEY}:alice:", "has an empty or over-long team name"),
        (f"{ALICE_KEY}:{'a' * 129}", "over-long user name"),
        (f"{ALICE_KEY}:alice,{ALICE_KEY}:bob", "entry 2 of 2 repeats the key of entry 1"),
    ],
)
def test_malformed_router_api_keys_say_what_is_wrong_without_the_key(value, message):
    with pytest.raises(ValidationError) as caught:
        Settings(_env_file=None, router_api_keys=value)  # type: ignore[call-arg]
    shown = str(caught.value)
    assert message in shown
    assert_no_key_in(shown, repr(caught.value.errors()))


# --- the gateway --------------------------------------------------------------------------


@pytest.fixture
async def guarded(both_up: Harness, serve: Serve) -> Served:
    services = await both_up.services(router_api_keys=KEYS, user_budgets={"alice": {"daily": 5.0}})
    return await serve(services, key=None)


async def test_no_key_and_a_wrong_key_are_401_with_an_openai_error(guarded: Served):
    cases = [
        ({}, "missing_api_key", "Authorization: Bearer <key>"),
        ({"Authorization": "Basic YWxpY2U6cHc="}, "missing_api_key", "Bearer"),
        (bearer(WRONG_KEY), "invalid_api_key", "not one of this router's keys"),
    ]
    for headers, code, message in cases:
        response = await guarded.http.post(
            "/v1/chat/completions", json={"messages": HELLO}, headers=headers
        )
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith("Bearer")
        error = response.json()["error"]
        assert error["code"] == code
        assert message in error["message"]
        assert error["type"] == "invalid_request_error"
        assert "param" in error
        assert_no_key_in(response_text(response))
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
    with pytest.raises(openai.AuthenticationError):
        await guarded.openai(WRONG_KEY).chat.completions.create(model="auto", messages=HELLO)
    assert await guarded.rows() == []  # nothing ran


async def test_every_route_but_health_needs_a_key(guarded: Served):
    for method, path, expected in [
        ("GET", "/v1/models", 200),
        ("GET", "/stats", 200),
        ("GET", "/usage", 200),
        ("GET", "/budget", 200),
        ("PUT", "/budget/user/alice", 403),  # bob is no admin
        ("GET", "/metrics", 403),  # every tenant's budgets: admins only
        ("GET", "/nowhere", 404),
    ]:
        body = {"daily_usd": 100}
        response = await guarded.http.request(method, path, json=body)
        assert response.status_code == 401, path
        keyed = await guarded.http.request(method, path, json={}, headers=bearer(BOB_KEY))
        assert keyed.status_code == expected, path
    # the budget was never raised by the unauthenticated PUT
    status = (await guarded.http.get("/budget", headers=bearer(ALICE_KEY))).json()
    (day,) = [b for b in status["budgets"] if b["scope"] == "user" and b["period"] == "day"]
    assert day["limit_usd"] == 5.0

    health = await guarded.http.get("/health")
    assert health.status_code == 200
    assert health.json()["status"] == "ok"
    # endpoint addresses only for callers with a key
    assert "url" not in health.json()["backends"]["gpu"]["endpoints"][0]
    with_key = (await guarded.http.get("/health", headers=bearer(ALICE_KEY))).json()
    assert with_key["backends"]["gpu"]["endpoints"][0]["url"].startswith("http://127.0.0.1:")


async def test_the_keys_user_and_team_reach_the_ledger(guarded: Served):
    client = guarded.openai(ALICE_KEY)
    completion = await client.chat.completions.create(
        model="auto", messages=HELLO, user="mallory", extra_body={"team": "other"}
    )
    assert "emulator" in completion.choices[0].message.content
    stream = await guarded.openai(BOB_KEY).chat.completions.create(
        model="auto", messages=HELLO, stream=True, extra_body={"team": "search"}
    )
    async for _ in stream:
        pass
    rows = sorted(await guarded.rows(), key=lambda r: r.id)
    assert [(r.user, r.team) for r in rows] == [("alice", "search"), ("bob", None)]

    budget = (await guarded.http.get("/budget", headers=bearer(ALICE_KEY))).json()
    assert budget["user"] == "alice"
    assert budget["team"] == "search"
    assert {b["scope"] for b in budget["budgets"]} == {"global", "user"}
    refused = await guarded.http.get("/budget?user=bob", headers=bearer(ALICE_KEY))
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "permission_denied"


async def test_routes_mounted_later_are_guarded_too(both_up: Harness, serve: Serve):
    services = await both_up.services(router_api_keys=KEYS)

    async def provider() -> Services:
        return services

    app = create_app(services=provider)

    async def whoami(request: Request) -> Response:
        who = caller(request)
        return JSONResponse({"user": who.user if who else None})

    app.mount("/extra", Starlette(routes=[Route("/whoami", whoami)]))
    served = await serve(services, app, key=None)
    assert (await served.http.get("/extra/whoami")).status_code == 401
    response = await served.http.get("/extra/whoami", headers=bearer(BOB_KEY))
    assert response.status_code == 200
    assert response.json() == {"user": "bob"}


async def test_keys_never_reach_logs_ledger_or_responses(
    guarded: Served, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []
    async with httpx.AsyncClient(base_url=guarded.base, timeout=30) as http:
        for key in (ALICE_KEY, BOB_KEY, WRONG_KEY):
            for method, path, body in [
                ("POST", "/v1/chat/completions", {"messages": HELLO, "user": key}),
                ("POST", "/v1/chat/completions", {"messages": HELLO, "stream": True}),
                ("POST", "/v1/chat/completions", {"messages": []}),
                ("PUT", "/budget/team/search", {"daily_usd": 3}),
                ("GET", "/budget", None),
                ("GET", "/stats", None),
                ("GET", "/usage?group_by=user", None),
                ("GET", "/health", None),
                ("GET", "/metrics", None),
                ("GET", "/v1/models", None),
            ]:
                response = await http.request(method, path, json=body, headers=bearer(key))
                seen.append(response_text(response))
    assert len(await guarded.rows()) == 4  # two keys x (one answer + one stream)
    assert_no_key_in(*seen, await ledger_dump(guarded.services), caplog.text)
    assert_no_key_in(*(repr(record.__dict__) for record in caplog.records))


@pytest.fixture
async def open_gateway(both_up: Harness, serve: Serve) -> Served:
    """A gateway without keys."""
    return await serve(await both_up.services())


async def test_without_keys_the_body_names_the_user_and_team(open_gateway: Served):
    await open_gateway.chat(user="carol", extra_body={"team": "search"})
    (row,) = await open_gateway.rows()
    assert (row.user, row.team) == ("carol", "search")


async def test_a_team_that_is_not_a_string_is_400(open_gateway: Served):
    response = await open_gateway.http.post(
        "/v1/chat/completions", json={"messages": HELLO, "team": ["a"]}
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "team"


# --- the graph API in ``langgraph dev`` ---------------------------------------------------


async def test_langgraph_authenticate_maps_a_key_to_its_identity(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(gateway_auth, "_server_keys", RouterApiKeys.parse(KEYS))
    user = await authenticate(f"Bearer {ALICE_KEY}")
    assert user["identity"] == "alice"
    assert user["metadata"]["team"] == "search"
    assert (await authenticate(f"bearer  {BOB_KEY} "))["metadata"]["team"] is None
    for header in (None, "", f"Bearer {WRONG_KEY}", ALICE_KEY, f"Basic {ALICE_KEY}"):
        with pytest.raises(Auth.exceptions.HTTPException) as caught:
            await authenticate(header)
        assert caught.value.status_code == 401
        assert_no_key_in(str(caught.value.detail))
    monkeypatch.setattr(gateway_auth, "_server_keys", RouterApiKeys())
    assert (await authenticate(None))["identity"] == "anonymous"  # no keys: everyone


@pytest.fixture(scope="module")
def guarded_langgraph(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """``langgraph dev`` with ROUTER_API_KEYS set; yield its URL and its ledger file."""
    tmp = tmp_path_factory.mktemp("langgraph-auth")
    port = free_port()
    ledger = tmp / "ledger.db"
    env = server_env(ledger, ROUTER_API_KEYS=KEYS)
    log_path = tmp / "server.log"
    with running_server(langgraph_dev_command(port), env, port, log_path) as url:
        yield url, ledger
    assert_no_key_in(log_path.read_text())


def ledger_rows(ledger: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(ledger) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM usage_records ORDER BY id")]


async def test_graph_api_runs_with_a_key_and_refuses_without(
    guarded_langgraph: tuple[str, Path],
):
    url, ledger = guarded_langgraph
    client = get_client(url=url, headers=bearer(ALICE_KEY))
    result = await client.runs.wait(
        None,
        "router",
        input={"messages": HELLO, "user": "mallory", "team": "other"},
    )
    assert "emulator" in result["response"]["content"]
    rows = [r for r in ledger_rows(ledger) if r["request_id"] == result["request_id"]]
    assert [(r["user"], r["team"]) for r in rows] == [("alice", "search")]

    bob = await get_client(url=url, headers=bearer(BOB_KEY)).runs.wait(
        None, "router", input={"messages": HELLO, "team": "search"}
    )
    (row,) = [r for r in ledger_rows(ledger) if r["request_id"] == bob["request_id"]]
    assert (row["user"], row["team"]) == ("bob", None)

    for headers in ({}, bearer(WRONG_KEY), {"x-auth-scheme": "langsmith"}):
        anonymous = get_client(url=url, headers=headers)
        with pytest.raises(httpx.HTTPStatusError) as caught:
            await anonymous.runs.wait(None, "router", input={"messages": HELLO})
        assert caught.value.response.status_code in (401, 403)
        assert_no_key_in(response_text(caught.value.response))
        with pytest.raises(httpx.HTTPStatusError) as caught:
            await anonymous.assistants.search(graph_id="router")
        assert caught.value.response.status_code in (401, 403)

    # the server's OpenAPI document (behind the key too) parsed our routes' YAML
    async with httpx.AsyncClient(base_url=url, headers=bearer(BOB_KEY)) as http:
        paths = (await http.get("/openapi.json")).json()["paths"]
    for path in ("/health", "/stats", "/usage", "/budget", "/budget/{scope}/{key}"):
        assert path in paths
        assert all(op.get("summary") for op in paths[path].values())


async def test_gateway_in_langgraph_dev_needs_the_key_too(guarded_langgraph: tuple[str, Path]):
    url, _ = guarded_langgraph
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        assert (await http.get("/ok")).status_code == 200
        assert (await http.get("/health")).status_code == 200
        refused = await http.post("/v1/chat/completions", json={"messages": HELLO})
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "missing_api_key"
    async with openai.AsyncOpenAI(
        base_url=f"{url}/v1", api_key=BOB_KEY, max_retries=0, timeout=60
    ) as client:
        completion = await client.chat.completions.create(model="auto", messages=HELLO)
        assert "emulator" in completion.choices[0].message.content


# --- the dashboard in a browser, budget changes, the standalone graph API ------------------


async def test_dashboard_signs_in_with_a_form_and_a_cookie(guarded: Served):
    page = await guarded.http.get("/dashboard/")
    assert page.status_code == 401
    assert "<form" in page.text
    assert 'name="key"' in page.text
    wrong = await guarded.http.post("/dashboard/login", data={"key": WRONG_KEY})
    assert wrong.status_code == 401
    assert "not one of this router" in wrong.text
    signed_in = await guarded.http.post("/dashboard/login", data={"key": ALICE_KEY})
    assert signed_in.status_code == 303
    assert signed_in.headers["location"] == "/dashboard/"
    cookie = signed_in.headers["set-cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    assert "Path=/dashboard" in cookie
    jar = {"router_dashboard_key": ALICE_KEY}
    async with httpx.AsyncClient(base_url=guarded.base, cookies=jar) as browser:
        assert (await browser.get("/dashboard/")).status_code == 200
        data = await browser.get("/dashboard/data")
        assert data.status_code == 200
        assert "budgets" in data.json()
        # the cookie opens the dashboard only, never the API
        assert (await browser.get("/stats")).status_code == 401
    assert_no_key_in(page.text, wrong.text, signed_in.text)


async def test_only_admin_users_set_budgets(both_up: Harness, serve: Serve):
    services = await both_up.services(router_api_keys=KEYS, router_admin_users="alice")
    served = await serve(services, key=None)
    refused = await served.http.put(
        "/budget/user/bob", json={"daily_usd": 1000}, headers=bearer(BOB_KEY)
    )
    assert refused.status_code == 403
    assert "ROUTER_ADMIN_USERS" in refused.json()["error"]["message"]
    allowed = await served.http.put(
        "/budget/user/bob", json={"daily_usd": 2.5}, headers=bearer(ALICE_KEY)
    )
    assert allowed.status_code == 200
    status = (await served.http.get("/budget", headers=bearer(BOB_KEY))).json()
    (day,) = [b for b in status["budgets"] if b["scope"] == "user" and b["period"] == "day"]
    assert day["limit_usd"] == 2.5


async def test_standalone_graph_api_runs_as_the_keys_owner(both_up: Harness, serve: Serve):
    from langgraph_sdk import get_client

    from gateway.app import create_app
    from gateway.graph_api import graph_api_routes

    services = await both_up.services(router_api_keys=KEYS)

    async def provide() -> Services:
        return services

    app = create_app(provide)
    app.router.routes[0:0] = graph_api_routes(provide)
    served = await serve(services, app, key=None)
    anonymous = get_client(url=served.base, api_key=None)
    with pytest.raises(Exception, match="401"):
        await anonymous.runs.wait(None, "router", input={"messages": HELLO})
    keyed = get_client(url=served.base, headers=bearer(ALICE_KEY))
    result = await keyed.runs.wait(None, "router", input={"messages": HELLO, "user": "mallory"})
    assert "emulator" in result["response"]["content"]
    (row,) = await served.rows()
    assert (row.user, row.team) == ("alice", "search")
