"""LangGraph threads are conversations: history grows, each run is one request.

In-process with a checkpointer here; tests/integration/test_dev_server_defaults.py runs the
same through ``langgraph dev`` on the default configuration.
"""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.checkpoint.memory import InMemorySaver

from backends.catalog import Catalog, get_catalog
from graphs.router import builder
from state.errors import PromptTooLargeError
from tests.conftest import Harness, received


def thread(name: str) -> dict[str, Any]:
    return {"configurable": {"thread_id": name}}


def ask(text: str, **options: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}], **options}


async def test_three_runs_on_a_thread_are_one_conversation(both_up: Harness):
    context = await both_up.context()
    graph = builder.compile(checkpointer=InMemorySaver())
    ids = []
    for turn in ("Hello!", "Tell me more.", "Thanks, bye."):
        result = await graph.ainvoke(ask(turn), thread("t1"), context=context)
        ids.append(result["request_id"])
    state = (await graph.aget_state(thread("t1"))).values
    messages = state["messages"]
    assert [type(m) for m in messages] == [HumanMessage, AIMessage] * 3
    assert [m.content for m in messages[::2]] == ["Hello!", "Tell me more.", "Thanks, bye."]
    assert all("emulator" in str(m.content) for m in messages[1::2])
    # every run is its own request with its own ledger row
    assert len(set(ids)) == 3
    rows = await context.services.ledger.rows()  # type: ignore[union-attr]
    assert sorted(r.request_id for r in rows) == sorted(ids)
    # the third request carried the whole conversation to the backend
    last = (await received(both_up.gpu_url))[-1]
    assert [m["role"] for m in last["messages"]] == ["user", "assistant"] * 2 + ["user"]
    assert last["messages"][1]["content"] == messages[1].content


async def test_one_runs_options_do_not_leak_into_the_next(both_up: Harness):
    context = await both_up.context()
    graph = builder.compile(checkpointer=InMemorySaver())
    first = await graph.ainvoke(
        ask("Hello!", force_backend="serverless", request_id="mine-1", max_tokens=7),
        thread("t2"),
        context=context,
    )
    assert first["routing"]["backend"] == "serverless"
    assert first["request_id"] == "mine-1"
    second = await graph.ainvoke(ask("Again"), thread("t2"), context=context)
    assert second["routing"]["backend"] == "gpu"  # not forced any more
    assert second["request_id"] != "mine-1"
    body = (await received(both_up.gpu_url))[-1]
    assert body["max_tokens"] == context.services.settings.default_max_tokens  # type: ignore[union-attr]
    third = await graph.ainvoke(
        ask("Once more", request_id="mine-3"), thread("t2"), context=context
    )
    assert third["request_id"] == "mine-3"
    assert len(third["routing"]["attempts"]) == 1  # attempts start afresh each run


async def test_a_long_thread_drops_its_oldest_turns_to_fit(both_up: Harness):
    small = Catalog.model_validate(
        {
            **get_catalog().model_dump(),
            "models": [{**m.model_dump(), "context_window": 400} for m in get_catalog().models],
        }
    )
    context = await both_up.context()
    context.services.catalog = small  # type: ignore[union-attr]
    graph = builder.compile(checkpointer=InMemorySaver())
    system = {"role": "system", "content": "You are terse."}
    filler = "word " * 60
    await graph.ainvoke(
        {"messages": [system, {"role": "user", "content": filler}], "max_tokens": 50},
        thread("t3"),
        context=context,
    )
    for turn in range(3):
        await graph.ainvoke(ask(f"{turn} {filler}", max_tokens=50), thread("t3"), context=context)
    body = (await received(both_up.gpu_url))[-1]
    roles = [m["role"] for m in body["messages"]]
    assert roles[0] == "system"
    assert roles[-1] == "user"
    assert body["messages"][-1]["content"].startswith("2 ")
    assert len(roles) < 9  # older turns were dropped to fit 400 tokens
    assert roles[1] == "user"  # a kept turn starts with the user's message
    state = (await graph.aget_state(thread("t3"))).values
    assert len(state["messages"]) == 9  # the thread itself keeps everything
    with pytest.raises(PromptTooLargeError, match="latest message"):
        await graph.ainvoke(ask("word " * 500), thread("t3"), context=context)


async def test_messages_stream_mode_yields_the_answer_as_it_arrives(both_up: Harness):
    context = await both_up.context()
    graph = builder.compile(checkpointer=InMemorySaver())
    chunks = []
    async for message, metadata in graph.astream(
        ask("Explain streams"), thread("t4"), context=context, stream_mode="messages"
    ):
        if metadata["langgraph_node"].startswith("generate_"):
            chunks.append(message)
    assert len(chunks) > 3
    text = "".join(str(c.content) for c in chunks)
    state = (await graph.aget_state(thread("t4"))).values
    assert text == state["messages"][-1].content
    assert {c.id for c in chunks} == {state["messages"][-1].id}  # one message, no duplicate


async def test_abatch_runs_each_request_as_its_own_row(both_up: Harness):
    context = await both_up.context()
    graph = builder.compile()
    inputs = [ask(f"Question {i}") for i in range(4)]
    results = await graph.abatch(inputs, context=context)
    assert [r["messages"][0].content for r in results] == [f"Question {i}" for i in range(4)]
    rows = await context.services.ledger.rows()  # type: ignore[union-attr]
    assert sorted(r.request_id for r in rows) == sorted(r["request_id"] for r in results)
    assert len({r["request_id"] for r in results}) == 4
