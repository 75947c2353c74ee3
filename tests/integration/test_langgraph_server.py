"""The graph served by the LangGraph dev server, driven over HTTP with langgraph-sdk."""

from __future__ import annotations

from langgraph_sdk import get_client


async def test_router_runs_through_the_graph_api(langgraph_dev: str):
    client = get_client(url=langgraph_dev)
    result = await client.runs.wait(
        None,
        "router",
        input={"messages": [{"role": "user", "content": "Hello!"}], "user": "studio"},
    )
    assert "emulator" in result["response"]["content"]
    assert result["routing"]["model"] == "llama3.1-8b-instruct"
    assert result["routing"]["complexity"]["level"] == "low"
    assert result["usage"]["total_tokens"] > 0
    # the output schema keeps internals out of the caller's view
    assert "candidates" not in result
    assert "budget" not in result


async def test_server_graph_shows_the_seven_steps_and_every_fallback_edge(langgraph_dev: str):
    client = get_client(url=langgraph_dev)
    assistants = await client.assistants.search(graph_id="router")
    drawn = await client.assistants.get_graph(assistants[0]["assistant_id"])
    nodes = {n["id"] for n in drawn["nodes"]}
    assert nodes == {
        "__start__",
        "analyze_complexity",
        "select_model",
        "choose_backend",
        "check_budget",
        "generate_serverless",
        "generate_gpu",
        "track_usage",
        "__end__",
    }
    edges = {(e["source"], e["target"], bool(e.get("conditional"))) for e in drawn["edges"]}
    assert edges == {
        ("__start__", "analyze_complexity", False),
        ("analyze_complexity", "select_model", False),
        ("select_model", "choose_backend", False),
        ("choose_backend", "check_budget", True),
        ("choose_backend", "generate_gpu", True),
        ("choose_backend", "track_usage", True),  # an answer from the response cache
        ("check_budget", "generate_serverless", True),
        ("check_budget", "generate_gpu", True),
        ("check_budget", "track_usage", True),  # refused: recorded, then the 402
        # the fallback edges, both ways
        ("generate_serverless", "generate_gpu", True),
        ("generate_gpu", "generate_serverless", True),
        # the next serverless provider, the next GPU endpoint
        ("generate_serverless", "generate_serverless", True),
        ("generate_gpu", "generate_gpu", True),
        ("generate_serverless", "track_usage", True),
        ("generate_gpu", "track_usage", True),
        ("track_usage", "__end__", False),
    }


async def test_bad_request_through_the_server_names_the_problem(langgraph_dev: str):
    client = get_client(url=langgraph_dev)
    thread = await client.threads.create()
    run = await client.runs.create(
        thread["thread_id"], "router", input={"messages": [], "user": "studio"}
    )
    await client.runs.join(thread["thread_id"], run["run_id"])
    status = await client.runs.get(thread["thread_id"], run["run_id"])
    assert status["status"] == "error"
    state = await client.threads.get(thread["thread_id"])
    assert "non-empty list" in str(state.get("error") or state)


async def test_the_chat_graph_keeps_a_thread_and_answers_usage_from_the_ledger(langgraph_dev: str):
    client = get_client(url=langgraph_dev)
    thread = await client.threads.create()
    turns = ["Hello!", "Show Lambda Labs usage for this week", "Thanks, and one more question?"]
    intents = []
    for turn in turns:
        result = await client.runs.wait(
            thread["thread_id"], "chat", input={"messages": [{"role": "user", "content": turn}]}
        )
        assert isinstance(result, dict), result
        assert "__error__" not in result, result
        intents.append(result["intent"])
    assert intents == ["chat", "usage_report", "chat"]
    state = await client.threads.get_state(thread["thread_id"])
    messages = state["values"]["messages"]
    assert [m["type"] for m in messages] == ["human", "ai"] * 3
    report = messages[3]["content"]
    assert "Usage for this week" in report
    assert "requests" in report
