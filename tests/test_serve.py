"""`hybrid-router serve` on a fresh machine: emulators, gateway and graph API in one server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from langgraph_sdk import get_client

from tests.conftest import free_port

BIN = Path(sys.executable).parent / "hybrid-router"
HELLO = {"messages": [{"role": "user", "content": "Hello!"}]}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    tmp = tmp_path_factory.mktemp("serve")
    port = free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"LAMBDA_API_KEY", "GPU_ENDPOINTS", "DATABASE_URL", "ROUTER_API_KEYS"}
    }
    env.update(
        DATABASE_URL=f"sqlite:///{tmp}/ledger.db", EMULATOR_TTFT_MS="0", EMULATOR_TPOT_MS="0"
    )
    log = (tmp / "serve.log").open("w+")
    process = subprocess.Popen(
        [str(BIN), "serve", "--port", str(port), "--workers", "2"],
        cwd=tmp,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if httpx.get(f"{url}/ok", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        if process.poll() is not None or time.monotonic() >= deadline:
            pytest.fail(f"serve did not start:\n{(tmp / 'serve.log').read_text()[-3000:]}")
        yield url, (tmp / "serve.log").read_text()
    finally:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()


def test_serve_says_it_is_emulated_and_prints_every_url(served):
    url, output = served
    assert "started two local emulators" in output
    for part in (f"{url}/v1", f"{url}/dashboard", "graph API", f"{url}/metrics"):
        assert part in output


async def test_gateway_and_graph_api_answer_from_one_server(served):
    url, _ = served
    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0) as client:
        completion = await client.chat.completions.create(model="auto", **HELLO)
        assert "emulator" in completion.choices[0].message.content
    graph_api = get_client(url=url)
    result = await graph_api.runs.wait(None, "router", input=HELLO)
    assert "emulator" in result["response"]["content"]
    assert result["routing"]["complexity"]["level"] == "low"
    assistants = await graph_api.assistants.search()
    assert [a["graph_id"] for a in assistants] == ["router"]
    drawn = await graph_api.assistants.get_graph(assistants[0]["assistant_id"])
    edges = {(e["source"], e["target"]) for e in drawn["edges"]}
    assert ("generate_serverless", "generate_gpu") in edges
    assert ("generate_gpu", "generate_serverless") in edges
    schemas = await graph_api.assistants.get_schemas(assistants[0]["assistant_id"])
    assert "messages" in schemas["input_schema"]["properties"]


async def test_graph_api_streams_and_reports_errors(served):
    url, _ = served
    graph_api = get_client(url=url)
    events = [
        part
        async for part in graph_api.runs.stream(
            None, "router", input={**HELLO, "stream": True}, stream_mode=["custom", "values"]
        )
    ]
    kinds = [e.event for e in events]
    assert kinds[0] == "metadata" and "custom" in kinds and kinds[-1] == "end"
    tokens = "".join(e.data["text"] for e in events if e.event == "custom")
    final = [e.data for e in events if e.event == "values"][-1]
    assert tokens == final["response"]["content"]
    with pytest.raises(Exception, match="non-empty list"):
        await graph_api.runs.wait(None, "router", input={"messages": []})
    async with httpx.AsyncClient(base_url=url) as http:
        missing = await http.post("/runs/wait", json={"assistant_id": "nope", "input": {}})
        assert missing.status_code == 404 and "router" in missing.json()["detail"]
        bad_mode = await http.post(
            "/runs/stream", json={"assistant_id": "router", "input": HELLO, "stream_mode": "debug"}
        )
        assert bad_mode.status_code == 422
