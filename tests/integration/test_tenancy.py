"""Who may call what: admin routes closed by default, and each tenant sees only its own figures.

Two tenants (alice of team search, bob of team ads) and an admin (root) call every
reporting route of a gateway served in this loop; carol, alice's teammate without
a key, has requests in the ledger too. Every route is checked both ways: a key sees
its own user's and team's rows, asking for another tenant's is a 403, and the admin
sees everyone's. The README's route table is checked against the app's routes.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from langgraph_sdk import get_client
from starlette.routing import BaseRoute, Mount

from gateway.standalone import create_standalone_app
from graphs.chat import graph as chat_graph
from graphs.router import graph
from state.context import Context, Services
from tests.conftest import Harness
from tests.integration import test_ops_routes
from tests.integration.test_ops_routes import HELLO, Serve, Served

serve = test_ops_routes.serve  # the fixture: serve a gateway app in this loop

ROOT = Path(__file__).resolve().parents[2]
ALICE = "sk-router-alice-1f0e2d3c4b5a6978"
BOB = "sk-router-bob-8796a5b4c3d2e1f0"
ADMIN = "sk-router-root-0a1b2c3d4e5f6a7b"
KEYS = f"{ALICE}:alice:search,{BOB}:bob:ads,{ADMIN}:root"
REPORTS = ["/stats", "/usage", "/budget", "/dashboard/data"]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def chat(served: Served, key: str, backend: str) -> None:
    response = await served.http.post(
        "/v1/chat/completions",
        json={"messages": HELLO, "max_tokens": 8, "force_backend": backend},
        headers=bearer(key),
    )
    assert response.status_code == 200, response.text


async def ask_in_process(services: Services, **who: Any) -> None:
    """A request made in-process (no key): carol of team search, or nobody."""
    await graph.ainvoke(
        {"messages": HELLO, "max_tokens": 8, "force_backend": "gpu", **who},
        context=Context(services=services),
    )


@pytest.fixture
async def tenants(both_up: Harness, serve: Serve) -> Served:
    """A keyed gateway with traffic of alice (2), carol (1, team search), bob (2) and root (1).

    Bob's daily budget is set so that his second serverless request crosses 80 %: one
    alert of user bob.
    """
    services = await both_up.services(router_api_keys=KEYS, router_admin_users="root")
    served = await serve(services, key=None)
    await chat(served, ALICE, "serverless")
    await chat(served, ALICE, "gpu")
    await ask_in_process(services, user="carol", team="search")
    await chat(served, BOB, "serverless")
    (probe,) = [r for r in await served.rows() if r.user == "bob"]
    for user, daily in (("bob", probe.cost_usd * 1.1), ("alice", 40.0)):
        response = await served.http.put(
            f"/budget/user/{user}", json={"daily_usd": daily}, headers=bearer(ADMIN)
        )
        assert response.status_code == 200, response.text
    await chat(served, BOB, "serverless")
    await chat(served, ADMIN, "gpu")
    return served


def rows_of(rows: list[Any], *, user: str | None = None, team: str | None = None) -> list[Any]:
    return [r for r in rows if (user and r.user == user) or (team and r.team == team)]


async def get(served: Served, path: str, key: str, **params: str) -> httpx.Response:
    return await served.http.get(path, params=params, headers=bearer(key))


async def test_stats_and_usage_show_a_key_its_own_tenant_and_the_admin_everyone(
    tenants: Served,
):
    rows = await tenants.rows()
    assert len(rows) == 6
    mine = {
        ALICE: rows_of(rows, user="alice", team="search"),  # alice's and carol's
        BOB: rows_of(rows, user="bob", team="ads"),
        ADMIN: rows,
    }
    assert len(mine[ALICE]) == 3
    assert len(mine[BOB]) == 2
    for key, expected in mine.items():
        stats = (await get(tenants, "/stats", key)).json()["today"]
        assert stats["requests"] == len(expected)
        assert stats["cost_usd"] == pytest.approx(sum(r.cost_usd for r in expected))
        usage = (await get(tenants, "/usage", key, group_by="user")).json()
        assert usage["totals"]["requests"] == len(expected)
        by_user = {name: group["requests"] for name, group in usage["groups"].items()}
        assert by_user == {
            user: len([r for r in expected if r.user == user])
            for user in {r.user for r in expected}
        }
    # narrowing to one's own user or team, and the admin naming anyone
    only_alice = (await get(tenants, "/usage", ALICE, user="alice")).json()
    assert only_alice["totals"]["requests"] == 2
    team = (await get(tenants, "/stats", ALICE, team="search")).json()["today"]
    assert team["requests"] == 3
    assert (await get(tenants, "/stats", ADMIN, user="bob")).json()["today"]["requests"] == 2
    admin_team = (await get(tenants, "/usage", ADMIN, team="search")).json()
    assert admin_team["totals"]["requests"] == 3


@pytest.mark.parametrize("path", REPORTS)
async def test_asking_for_another_tenant_is_403(tenants: Served, path: str):
    for key, params in [
        (ALICE, {"user": "bob"}),
        (ALICE, {"team": "ads"}),
        (ALICE, {"user": "alice", "team": "ads"}),
        (BOB, {"user": "carol"}),
        (BOB, {"team": "search"}),
    ]:
        response = await get(tenants, path, key, **params)
        assert response.status_code == 403, (path, params)
        error = response.json()["error"]
        assert error["code"] == "permission_denied"
        assert "own user's" in error["message"]
        assert "ROUTER_ADMIN_USERS" in error["message"]
    assert (await get(tenants, path, ADMIN, user="bob")).status_code == 200


async def test_budget_shows_a_key_its_own_budgets_and_the_admin_every_budget(tenants: Served):
    def owners(body: dict[str, Any]) -> set[tuple[str, str]]:
        return {(b["scope"], b["key"]) for b in body["budgets"]}

    alice = (await get(tenants, "/budget", ALICE)).json()
    assert (alice["user"], alice["team"]) == ("alice", "search")
    assert owners(alice) == {("global", ""), ("user", "alice")}
    bob = (await get(tenants, "/budget", BOB)).json()
    assert owners(bob) == {("global", ""), ("user", "bob")}
    admin = (await get(tenants, "/budget", ADMIN)).json()
    assert owners(admin) == {("global", ""), ("user", "alice"), ("user", "bob")}
    assert owners((await get(tenants, "/budget", ADMIN, user="bob")).json()) == owners(bob)


async def test_dashboard_data_is_the_tenants_own(tenants: Served):
    rows = await tenants.rows()
    # the three in a row, inside the dashboard's 2 s cache: each gets its own figures
    figures = {key: (await get(tenants, "/dashboard/data", key)).json() for key in (ALICE, BOB)}
    figures[ADMIN] = (await get(tenants, "/dashboard/data", ADMIN)).json()
    expected = {
        ALICE: rows_of(rows, user="alice", team="search"),
        BOB: rows_of(rows, user="bob", team="ads"),
        ADMIN: rows,
    }
    for key, data in figures.items():
        assert data["totals"]["requests"] == len(expected[key])
        assert sum(data["spend"]["requests"]) == len(expected[key])
        assert sum(data["spend"]["serverless_usd"]) == pytest.approx(
            sum(r.cost_usd for r in expected[key] if r.backend == "serverless")
        )
    assert [(a["scope"], a["key"]) for a in figures[BOB]["alerts"]] == [("user", "bob")]
    assert figures[ALICE]["alerts"] == []
    assert [(a["scope"], a["key"]) for a in figures[ADMIN]["alerts"]] == [("user", "bob")]
    assert {b["key"] for b in figures[ALICE]["budgets"]} == {"", "alice"}
    assert {b["key"] for b in figures[BOB]["budgets"]} == {"", "bob"}
    page = await get(tenants, "/dashboard/", BOB)
    assert page.status_code == 200
    assert "<html" in page.text


async def test_admin_routes_need_an_admin_key(tenants: Served):
    for key in (ALICE, BOB):
        put = await tenants.http.put(
            "/budget/user/alice", json={"daily_usd": 1000}, headers=bearer(key)
        )
        assert put.status_code == 403
        assert "ROUTER_ADMIN_USERS" in put.json()["error"]["message"]
        metrics = await get(tenants, "/metrics", key)
        assert metrics.status_code == 403
        assert "bob" not in metrics.text
    limits = {
        b["key"]: b["limit_usd"] for b in (await get(tenants, "/budget", ADMIN)).json()["budgets"]
    }
    assert limits["alice"] == 40.0  # unchanged
    metrics = await get(tenants, "/metrics", ADMIN)
    assert metrics.status_code == 200
    assert 'key="bob"' in metrics.text


async def test_without_keys_chat_is_open_and_reports_and_admin_routes_are_closed(
    both_up: Harness, serve: Serve
):
    served = await serve(await both_up.services(), key=None)
    chat_response = await served.http.post("/v1/chat/completions", json={"messages": HELLO})
    assert chat_response.status_code == 200
    assert (await served.http.get("/v1/models")).status_code == 200
    assert (await served.http.get("/health")).status_code == 200
    closed = [("GET", path) for path in [*REPORTS, "/metrics", "/dashboard/"]]
    for method, path in [*closed, ("PUT", "/budget/user/alice")]:
        response = await served.http.request(method, path, json={"daily_usd": 1000})
        assert response.status_code == 403, path
        message = response.json()["error"]["message"]
        assert "no API keys" in message
        assert "ROUTER_API_KEYS=<key>:<user>" in message
        assert "ROUTER_ADMIN_USERS" in message
        assert "hybrid-router budget" in message
    assert (
        await served.services.budgets.status(user="alice") == await served.services.budgets.status()
    )  # no budget of alice's was set
    (row,) = await served.rows()  # the chat, recorded
    assert row.status == "ok"


async def test_the_chat_graph_answers_a_key_with_its_own_usage(both_up: Harness):
    services = await both_up.services(router_api_keys=KEYS, router_admin_users="root")
    for who in ({"user": "alice", "team": "search"}, {"user": "carol", "team": "search"}):
        await ask_in_process(services, **who)
    for _ in range(3):
        await ask_in_process(services, user="bob", team="ads")
    context = Context(services=services)

    async def usage_as(**who: Any) -> str:
        asked = {"messages": [{"role": "user", "content": "Analyze Lambda usage for today"}]}
        answer = await chat_graph.ainvoke({**asked, **who}, context=context)
        return str(answer["messages"][-1].content)

    # the user and team the graph API writes into a keyed run's input
    assert ": 2 requests," in await usage_as(user="alice", team="search")
    assert ": 3 requests," in await usage_as(user="bob", team="ads")
    assert ": 5 requests," in await usage_as(user="root")  # the admin: everyone's


async def test_without_keys_routing_cannot_be_changed_through_the_server(langgraph_dev: str):
    client = get_client(url=langgraph_dev)
    asked = {"messages": [{"role": "user", "content": "Route next 2 queries to GPU for testing"}]}
    result = await client.runs.wait(None, "chat", input=asked)
    said = result["messages"][-1]["content"]
    assert "this router has no API keys" in said
    assert "ROUTER_ADMIN_USERS=<user>" in said
    # in-process (the command line, a Python caller) it still may: test_chat_graph.py


def app_routes(routes: list[BaseRoute], prefix: str = "") -> set[str]:
    found = set()
    for route in routes:
        if isinstance(route, Mount):
            found |= app_routes(route.routes, prefix + route.path)
            continue
        methods = sorted(set(getattr(route, "methods", None) or {"ANY"}) - {"HEAD"})
        found |= {f"{method} {prefix}{getattr(route, 'path', '')}" for method in methods}
    return found


def readme_table() -> dict[str, tuple[str, str]]:
    text = (ROOT / "README.md").read_text()
    section = text.split("### Who may call what", 1)[1].split("\n#", 1)[0]
    rows = re.findall(r"^\| `([A-Z]+ [^`]+)` \| ([^|]+) \| ([^|]+) \|$", section, re.M)
    return {route: (no_keys.strip(), keys.strip()) for route, no_keys, keys in rows}


def test_the_readme_names_who_may_call_every_route():
    table = readme_table()
    assert set(table) == app_routes(create_standalone_app().routes)
    closed = {route for route, (no_keys, _) in table.items() if no_keys.startswith("closed")}
    assert closed == {
        *(f"GET {path}" for path in [*REPORTS, "/metrics", "/dashboard/"]),
        "PUT /budget/{scope}/{key}",
    }
    admin_only = {route for route, (_, keys) in table.items() if keys.startswith("admin")}
    assert admin_only == {"PUT /budget/{scope}/{key}", "GET /metrics"}
