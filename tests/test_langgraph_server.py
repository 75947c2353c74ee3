"""The graph served by the LangGraph dev server, driven over HTTP with langgraph-sdk."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from langgraph_sdk import get_client

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    tmp = tmp_path_factory.mktemp("server")
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"LAMBDA_API_KEY", "GPU_ENDPOINTS", "DATABASE_URL"}
    }
    env.update(
        DATABASE_URL=f"sqlite:///{tmp}/ledger.db",
        LANGGRAPH_CLI_NO_ANALYTICS="1",
        LANGGRAPH_NO_VERSION_CHECK="true",
        LANGSMITH_TRACING="false",
        EMULATOR_TTFT_MS="0",
        EMULATOR_TPOT_MS="0",
    )
    langgraph = Path(sys.executable).parent / "langgraph"
    log = (tmp / "server.log").open("w")
    process = subprocess.Popen(
        [str(langgraph), "dev", "--no-browser", "--port", str(port), "--n-jobs-per-worker", "4"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if process.poll() is not None:
                break
            try:
                if httpx.get(f"{url}/ok", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            pass
        if process.poll() is not None or time.monotonic() >= deadline:
            pytest.fail(f"langgraph dev did not start:\n{(tmp / 'server.log').read_text()[-3000:]}")
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()


async def test_router_runs_through_the_graph_api(server_url: str):
    client = get_client(url=server_url)
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
    assert "candidates" not in result and "budget" not in result


async def test_server_graph_shows_both_backends_and_fallback_edges(server_url: str):
    client = get_client(url=server_url)
    assistants = await client.assistants.search(graph_id="router")
    drawn = await client.assistants.get_graph(assistants[0]["assistant_id"])
    edges = {(e["source"], e["target"], bool(e.get("conditional"))) for e in drawn["edges"]}
    assert ("choose_backend", "generate_serverless", True) in edges
    assert ("choose_backend", "generate_gpu", True) in edges
    assert ("generate_serverless", "generate_gpu", True) in edges
    assert ("generate_gpu", "generate_serverless", True) in edges
    assert ("generate_gpu", "track_usage", False) in edges


async def test_bad_request_through_the_server_names_the_problem(server_url: str):
    client = get_client(url=server_url)
    thread = await client.threads.create()
    run = await client.runs.create(
        thread["thread_id"], "router", input={"messages": [], "user": "studio"}
    )
    await client.runs.join(thread["thread_id"], run["run_id"])
    status = await client.runs.get(thread["thread_id"], run["run_id"])
    assert status["status"] == "error"
    state = await client.threads.get(thread["thread_id"])
    assert "non-empty list" in str(state.get("error") or state)
