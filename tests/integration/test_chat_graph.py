"""The unified chat: one thread that chats through the router and answers from the ledger."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage

from backends.tokens import count_message_tokens
from graphs.chat import builder
from state.checkpoints import open_checkpointer
from tests.conftest import Harness, received
from tests.integration.test_budgets import HARD

THREAD = {"configurable": {"thread_id": "c1"}}


def say(text: str, **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}], **extra}


async def test_a_thread_chats_and_answers_usage_from_the_ledger(both_up: Harness, tmp_path: Path):
    context = await both_up.context()
    services = context.services
    assert services is not None
    async with open_checkpointer(services.settings) as saver:
        chat = builder.compile(checkpointer=saver)
        first = await chat.ainvoke(say("Hello!"), THREAD, context=context)
        assert first["intent"] == "chat"
        assert first["routing"]["backend"] == "gpu"
        await chat.ainvoke(say("Explain caching step by step"), THREAD, context=context)
        report = await chat.ainvoke(
            say("Analyze Lambda usage for last 7 days"), THREAD, context=context
        )
        assert report["intent"] == "usage_report"
        assert report["params"] == {"days": 7}
        rows = await services.ledger.rows()
        text = str(report["messages"][-1].content)
        # the figures are the ledger's: computed here from its rows, independently
        assert f"{len(rows)} requests" in text
        tokens = sum(r.prompt_tokens + r.completion_tokens for r in rows)
        assert f"{tokens:,} tokens" in text
        assert "| gpu |" in text
        assert "p95 ms" in text
        last = await chat.ainvoke(
            say("And how does that compare to a queue?"), THREAD, context=context
        )
        assert last["intent"] == "chat"
    # the thread holds the whole conversation; the router saw it on the last turn
    messages = last["messages"]
    assert [type(m) for m in messages] == [HumanMessage, AIMessage] * 4
    assert len(await services.ledger.rows()) == 3  # ledger answers are not router requests
    # the last turn reached a backend with the whole conversation before it
    bodies = [*await received(both_up.gpu_url), *await received(both_up.serverless_url)]
    (sent,) = [b for b in bodies if b["messages"][-1]["content"].endswith("a queue?")]
    assert [m["content"] for m in sent["messages"]] == [m.content for m in messages[:-1]]


async def test_route_the_next_two_to_gpu_from_the_chat(both_up: Harness):
    context = await both_up.context(serverless_ratio=1.0)
    chat = builder.compile()
    answer = await chat.ainvoke(say("Route next 2 queries to GPU for testing"), context=context)
    assert answer["intent"] == "routing_override"
    assert answer["params"] == {"action": "set", "backend": "gpu", "count": 2}
    backends = []
    for _ in range(3):
        result = await chat.ainvoke({"messages": HARD}, context=context)
        backends.append(result["routing"]["backend"])
    assert backends == ["gpu", "gpu", "serverless"]
    done = await chat.ainvoke(say("Go back to normal routing"), context=context)
    assert "normal routing" in str(done["messages"][-1].content)


async def test_only_admins_change_routing_when_keys_are_on(both_up: Harness):
    context = await both_up.context(router_api_keys="k1:alice,k2:root", router_admin_users=["root"])
    overrides = context.services.overrides  # type: ignore[union-attr]
    chat = builder.compile()
    refused = await chat.ainvoke(
        say("route everything to the gpu pool", user="alice"), context=context
    )
    assert "Only an admin" in str(refused["messages"][-1].content)
    assert await overrides.active(fresh=True) == []
    allowed = await chat.ainvoke(
        say("route everything to the gpu pool", user="root"), context=context
    )
    assert "go to gpu" in str(allowed["messages"][-1].content)
    assert len(await overrides.active(fresh=True)) == 1
    # anyone may read the budgets
    status = await chat.ainvoke(
        say("What's my current Lambda Labs budget status?", user="alice"), context=context
    )
    assert status["intent"] == "budget_status"
    assert "| budget |" in str(status["messages"][-1].content)


async def test_a_cost_estimate_prices_the_previous_message_on_the_named_model(both_up: Harness):
    context = await both_up.context()
    services = context.services
    assert services is not None
    chat = builder.compile()
    prompt = "Summarize the quarterly report in five bullet points for the board"
    answer = await chat.ainvoke(
        {
            "messages": [
                {"role": "user", "content": prompt},
                {"role": "assistant", "content": "Sure."},
                {"role": "user", "content": "How much would this prompt cost on maverick?"},
            ]
        },
        context=context,
    )
    assert answer["params"]["model"] == "llama-4-maverick-17b-128e-instruct-fp8"
    text = str(answer["messages"][-1].content)
    maverick = services.catalog.by_id["llama-4-maverick-17b-128e-instruct-fp8"]
    tokens = count_message_tokens([{"role": "user", "content": prompt}])
    assert f"a {tokens}-token prompt" in text
    assert f"${maverick.cost_usd(tokens, 0):.6f}" in text
    priced = [line for line in text.splitlines() if line.startswith("| llama")]
    assert len(priced) == 1
    assert priced[0].startswith("| llama-4-maverick")


async def test_cost_comparison_says_how_it_was_computed(both_up: Harness):
    context = await both_up.context()
    chat = builder.compile()
    await chat.ainvoke(say("Hello!"), context=context)
    answer = await chat.ainvoke(say("Show cost savings compared to GPU baseline"), context=context)
    text = str(answer["messages"][-1].content)
    assert answer["intent"] == "cost_comparison"
    assert "How it was computed" in text
    assert "everything on dedicated GPUs" in text


@pytest.mark.parametrize("text", ["Optimize Lambda costs for daily reporting"])
async def test_optimize_answers_with_advice_from_the_ledger(both_up: Harness, text: str):
    context = await both_up.context()
    chat = builder.compile()
    await chat.ainvoke(say("Hello!"), context=context)
    answer = await chat.ainvoke(say(text), context=context)
    assert answer["intent"] == "optimize"
    assert answer["params"]["workload"] == "daily reporting"
    assert "Cost advice from the ledger" in str(answer["messages"][-1].content)


async def test_threads_survive_a_restart_on_sqlite_and_postgres(
    both_up: Harness, database: dict[str, Any]
):
    context = await both_up.context(**database)
    settings = context.services.settings  # type: ignore[union-attr]
    thread = {"configurable": {"thread_id": "restart"}}
    async with open_checkpointer(settings) as saver:
        await builder.compile(checkpointer=saver).ainvoke(say("Hello!"), thread, context=context)
    async with open_checkpointer(settings) as saver:  # a new process would open it anew
        again = await builder.compile(checkpointer=saver).ainvoke(
            say("budget status"), thread, context=context
        )
    assert [m.content for m in again["messages"][::2]] == ["Hello!", "budget status"]
