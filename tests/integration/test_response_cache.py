"""The response cache: an identical deterministic request is answered again for nothing."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from graphs.router import graph
from tests.conftest import Harness, received


def ask(text: str, **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}], "temperature": 0, **extra}


@pytest.fixture(params=["ledger", "redis"])
def store(request: pytest.FixtureRequest) -> dict[str, Any]:
    return {} if request.param == "ledger" else {"redis_url": "redis://127.0.0.1:6379/0"}


async def test_the_same_request_twice_is_answered_once_and_the_repeat_is_free(
    both_up: Harness, store: dict[str, Any]
):
    context = await both_up.context(**store)
    text = f"What is a hash map? {uuid.uuid4().hex}"
    first = await graph.ainvoke(ask(text, user="alice"), context=context)
    second = await graph.ainvoke(ask(text, user="alice"), context=context)
    assert len(await received(both_up.gpu_url)) == 1
    assert second["response"] == first["response"]
    assert second["usage"] == first["usage"]
    assert second["cost_usd"] == 0.0
    assert first["cost_usd"] > 0
    assert "response cache" in second["routing"]["reason"]
    assert second["routing"]["attempts"][0]["cache_hit"] is True
    rows = {r.request_id: r for r in await context.services.ledger.rows()}  # type: ignore[union-attr]
    assert rows[second["request_id"]].cache_hit
    assert rows[second["request_id"]].cost_usd == 0.0
    assert not rows[first["request_id"]].cache_hit


async def test_the_cache_never_crosses_users_unless_shared(both_up: Harness, store: dict[str, Any]):
    text = f"Explain TCP {uuid.uuid4().hex}"
    private = await both_up.context(**store)
    await graph.ainvoke(ask(text, user="alice"), context=private)
    bob = await graph.ainvoke(ask(text, user="bob"), context=private)
    assert bob["cost_usd"] > 0
    assert len(await received(both_up.gpu_url)) == 2
    shared = await both_up.context(response_cache_shared=True, **store)
    await graph.ainvoke(ask(text + " shared", user="alice"), context=shared)
    carol = await graph.ainvoke(ask(text + " shared", user="carol"), context=shared)
    assert carol["cost_usd"] == 0.0
    assert len(await received(both_up.gpu_url)) == 3


async def test_only_deterministic_requests_without_tools_are_cached(both_up: Harness):
    context = await both_up.context()
    text = f"Name a colour {uuid.uuid4().hex}"
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    for request in (
        {"messages": ask(text)["messages"]},  # no temperature given: not deterministic
        ask(text, temperature=0.7),
        ask(text, params={"tools": tools, "tool_choice": "none"}),
    ):
        await graph.ainvoke(request, context=context)
        await graph.ainvoke(request, context=context)
    assert len(await received(both_up.gpu_url)) == 6


async def test_an_entry_expires_after_its_ttl(both_up: Harness, store: dict[str, Any]):
    context = await both_up.context(response_cache_ttl_s=0.3, **store)
    text = f"Define latency {uuid.uuid4().hex}"
    await graph.ainvoke(ask(text), context=context)
    await graph.ainvoke(ask(text), context=context)
    assert len(await received(both_up.gpu_url)) == 1
    await asyncio.sleep(0.5)
    again = await graph.ainvoke(ask(text), context=context)
    assert again["cost_usd"] > 0
    assert len(await received(both_up.gpu_url)) == 2


async def test_a_streamed_hit_still_streams_the_answer(both_up: Harness):
    context = await both_up.context()
    text = f"Say hello {uuid.uuid4().hex}"
    first = await graph.ainvoke(ask(text), context=context)
    deltas = [
        event
        async for event in graph.astream(
            ask(text, stream=True), context=context, stream_mode="custom"
        )
    ]
    assert "".join(e["delta"].get("content", "") for e in deltas) == first["response"]["content"]
