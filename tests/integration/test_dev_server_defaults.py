"""``langgraph dev`` on the default configuration, from a copy of the repository.

No settings at all: the ledger is the default relative SQLite path
(``sqlite:///./data/router.db``) and both backends are the built-in emulators.
A LangGraph Studio or langgraph-sdk user runs several turns on one thread.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from langgraph_sdk import get_client

from tests.conftest import ROOT, free_port, langgraph_dev_command, running_server

PLANNING = ("analyze_complexity", "select_model", "choose_backend")  # GPU first: no budget step


@pytest.fixture(scope="module")
def dev_on_defaults(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """Serve a copy of the repository with `langgraph dev` and no router settings."""
    copy = tmp_path_factory.mktemp("clone") / "repo"
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, copy / name)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DATABASE_", "GPU_", "LAMBDA_", "ROUTER_", "EMULATOR_"))
    }
    env.update(
        LANGGRAPH_CLI_NO_ANALYTICS="1",
        LANGGRAPH_NO_VERSION_CHECK="true",
        LANGSMITH_TRACING="false",
    )
    port = free_port()
    log = copy.parent / "server.log"
    with running_server(langgraph_dev_command(port), env, port, log, cwd=copy) as url:
        yield url, copy


async def test_three_runs_on_one_thread_on_the_default_configuration(
    dev_on_defaults: tuple[str, Path],
):
    url, copy = dev_on_defaults
    client = get_client(url=url)
    thread = await client.threads.create()
    answers = []
    for turn in ("Hello!", "And then?", "Thanks!"):
        result = await client.runs.wait(
            thread["thread_id"], "router", input={"messages": [{"role": "user", "content": turn}]}
        )
        assert isinstance(result, dict), result
        assert "error" not in result, result
        answers.append(result)
    state = await client.threads.get_state(thread["thread_id"])
    messages = state["values"]["messages"]
    assert [m["type"] for m in messages] == ["human", "ai"] * 3
    assert [m["content"] for m in messages[::2]] == ["Hello!", "And then?", "Thanks!"]
    assert [m["content"] for m in messages[1::2]] == [a["response"]["content"] for a in answers]
    ids = {a["request_id"] for a in answers}
    assert len(ids) == 3
    # the relative default ledger path resolved against the server's directory
    with sqlite3.connect(copy / "data" / "router.db") as db:
        rows = db.execute("SELECT request_id, status FROM usage_records").fetchall()
    assert {r[0] for r in rows} == ids
    assert {r[1] for r in rows} == {"ok"}


async def test_streams_carry_tokens_and_every_decision(dev_on_defaults: tuple[str, Path]):
    url, _ = dev_on_defaults
    client = get_client(url=url)
    thread = await client.threads.create()
    tokens = []
    updates: dict[str, dict] = {}
    async for part in client.runs.stream(
        thread["thread_id"],
        "router",
        input={"messages": [{"role": "user", "content": "Explain how a router works"}]},
        stream_mode=["messages-tuple", "updates"],
    ):
        if part.event == "messages":
            chunk, metadata = part.data
            if metadata.get("langgraph_node", "").startswith("generate_"):
                tokens.append(chunk["content"])
        elif part.event == "updates":
            updates.update(part.data)
    assert len(tokens) > 1
    state = await client.threads.get_state(thread["thread_id"])
    assert "".join(tokens) == state["values"]["messages"][-1]["content"]
    for step in PLANNING:
        assert step in updates, step
        assert step in updates[step]["decisions"], step
    assert updates["choose_backend"]["decisions"]["choose_backend"]["backend"] in (
        "gpu",
        "serverless",
    )
    assert updates["select_model"]["decisions"]["select_model"]["candidates"]
