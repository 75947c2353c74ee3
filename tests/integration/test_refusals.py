"""Budget refusals are ledger rows, and every report counts them.

A refused request (402) is one row with status ``refused``; a request a budget
sent to the GPU pool keeps its status and is marked ``budget_refused``. ``/stats``,
``/usage``, the dashboard's data, the chat graph's usage answer and the MCP tool
``get_usage_stats`` all count both, over real HTTP against the emulators.
"""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest
from langgraph.checkpoint.memory import InMemorySaver
from mcp.client import Client

from graphs.chat import graph as chat
from graphs.router import builder
from mcp_server.server import build_server
from state.context import Context, Services
from state.errors import BudgetExceededError
from tests.conftest import Harness
from tests.integration import test_ops_routes
from tests.integration.test_ops_routes import (
    HELLO,
    MEDIUM,
    OPERATOR,
    PERFORMANCE,
    USER_KEYS,
    Serve,
    Served,
)

serve = test_ops_routes.serve  # the fixture: serve a gateway app in this loop

ALICE = USER_KEYS["alice"]


async def refused_then_moved(both_up: Harness, serve: Serve) -> tuple[Served, list[str]]:
    """Alice: two 402s (one streamed) and one request sent to the GPU pool; bob: one answer.

    Returns the gateway (the reject policy's) and the 402s' request ids.
    """
    strict = await serve(
        await both_up.services(**OPERATOR, serverless_ratio=1.0, over_budget_policy="reject")
    )
    moving = await serve(await both_up.services(**OPERATOR, serverless_ratio=1.0))
    put = await strict.http.put("/budget/user/alice", json={"daily_usd": 0.0})
    assert put.status_code == 200
    refused_ids = []
    for stream in (False, True):
        response = await strict.http.post(
            "/v1/chat/completions",
            json={"messages": HELLO, "force_backend": "serverless", "stream": stream},
            headers={"Authorization": f"Bearer {ALICE}"},
        )
        assert response.status_code == 402
        assert int(response.headers["retry-after"]) > 0
        refused_ids.append(response.headers["x-request-id"])
    moved = await moving.chat(user="alice", messages=MEDIUM, extra_body=PERFORMANCE)
    assert moved.routing["backend"] == "gpu"
    answered = await moving.chat(user="bob", messages=MEDIUM, extra_body=PERFORMANCE)
    assert answered.routing["backend"] == "serverless"
    return strict, refused_ids


async def test_a_refused_request_is_exactly_one_row_and_every_report_counts_it(
    both_up: Harness, serve: Serve
):
    served, refused_ids = await refused_then_moved(both_up, serve)
    rows = await served.rows()
    assert len(rows) == 4  # one per request, the refused ones included
    refused = [r for r in rows if r.status == "refused"]
    assert sorted(r.request_id for r in refused) == sorted(refused_ids)
    assert all(r.budget_refused and r.backend is None and r.cost_usd == 0 for r in refused)
    (moved,) = [r for r in rows if r.status == "ok" and r.budget_refused]
    assert (moved.user, moved.backend) == ("alice", "gpu")

    stats = (await served.http.get("/stats")).json()["today"]
    assert stats["by_status"] == {"ok": 2, "refused": 2}
    assert (stats["refused"], stats["budget_refusals"]) == (2, 3)

    usage = (await served.http.get("/usage", params={"group_by": "user"})).json()
    totals = usage["totals"]
    assert (totals["refused"], totals["budget_refusals"], totals["failed"]) == (2, 3, 0)
    assert totals["error_rate"] == 0.0  # a refusal is not an error
    alice, bob = usage["groups"]["alice"], usage["groups"]["bob"]
    assert (alice["refused"], alice["budget_refusals"]) == (2, 3)
    assert (bob["refused"], bob["budget_refusals"]) == (0, 0)

    data = (await served.http.get("/dashboard/data")).json()
    assert (data["totals"]["refused"], data["totals"]["budget_refusals"]) == (2, 3)
    # alice's own view counts her refusals too
    mine = await served.http.get("/dashboard/data", headers={"Authorization": f"Bearer {ALICE}"})
    assert (mine.json()["totals"]["refused"], mine.json()["totals"]["budget_refusals"]) == (2, 3)

    said = "3 budget refusals (2 refused with a 402, 1 sent to the GPU pool or a cheaper model)"
    answer = await chat.ainvoke(
        {"messages": [{"role": "user", "content": "Analyze Lambda usage for today"}]},
        context=Context(services=served.services),
    )
    assert said in answer["messages"][-1].content

    async def factory() -> Services:
        return served.services

    async with Client(build_server(factory)) as client:
        stats_tool = await client.call_tool("get_usage_stats", {"days": 1})
    assert not stats_tool.is_error
    assert said in "\n".join(block.text for block in stats_tool.content)  # type: ignore[union-attr]
    structured: dict[str, Any] = stats_tool.structured_content or {}
    assert structured["totals"]["budget_refusals"] == 3


async def test_a_refusal_names_its_budget_and_holds_nothing(both_up: Harness, serve: Serve):
    services = await both_up.services(**OPERATOR, over_budget_policy="reject")
    served = await serve(services)
    await services.budgets.set_budget("user", "alice", daily_usd=0.0, monthly_usd=None)
    with pytest.raises(openai.APIStatusError) as caught:
        await served.chat(user="alice", extra_body={"force_backend": "serverless"})
    assert caught.value.status_code == 402
    budget = caught.value.body["budget"]
    assert (budget["scope"], budget["key"], budget["period"]) == ("user", "alice", "day")
    assert "PUT /budget/user/alice" in caught.value.body["message"]
    async with services.ledger.engine.connect() as conn:
        holds = (await conn.exec_driver_sql("SELECT count(*) FROM reservations")).scalar()
    assert holds == 0  # refused before holding anything
    await served.chat(user="bob", extra_body={"force_backend": "serverless"})
    rows = {r.user: r for r in await served.rows()}
    assert (rows["alice"].status, rows["alice"].budget_refused) == ("refused", True)
    assert (rows["bob"].status, rows["bob"].budget_refused) == ("ok", False)
    async with httpx.AsyncClient(base_url=served.base) as http:
        assert (await http.get("/stats")).status_code == 401  # keys on: no key, no report


async def test_on_a_thread_the_next_run_is_not_marked_by_the_last_refusal(both_up: Harness):
    context = await both_up.context(over_budget_policy="reject", lambda_daily_budget=0.0)
    router = builder.compile(checkpointer=InMemorySaver())
    thread = {"configurable": {"thread_id": "refused-then-gpu"}}
    with pytest.raises(BudgetExceededError):
        await router.ainvoke(
            {"messages": HELLO, "force_backend": "serverless"}, thread, context=context
        )
    result = await router.ainvoke(
        {"messages": HELLO, "force_backend": "gpu"}, thread, context=context
    )
    assert result["routing"]["backend"] == "gpu"
    rows = {r.status: r for r in await context.services.ledger.rows()}
    assert set(rows) == {"refused", "ok"}
    assert rows["refused"].budget_refused
    assert not rows["ok"].budget_refused
