"""`hybrid-router serve` on a fresh machine: emulators, gateway and graph API in one server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from langgraph_sdk import get_client
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import free_port, running_server, server_env

BIN = Path(sys.executable).parent / "hybrid-router"
HELLO = {"messages": [{"role": "user", "content": "Hello!"}]}
# /metrics needs an admin key; every client here sends it
ADMIN_KEY = "sk-router-root-77aa88bb99cc00dd"
AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture(scope="module")
def metrics_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("metrics")
    # a previous run's file: serve must clear it (the collector cannot read it)
    (path / "counter_1.db").write_bytes(b"not a metrics file")
    return path


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, metrics_dir: Path
) -> Iterator[tuple[str, str]]:
    tmp = tmp_path_factory.mktemp("serve")
    port = free_port()
    command = [str(BIN), "serve", "--port", str(port), "--workers", "2"]
    log_path = tmp / "serve.log"
    env = server_env(
        tmp / "ledger.db",
        PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
        ROUTER_API_KEYS=f"{ADMIN_KEY}:root",
        ROUTER_ADMIN_USERS="root",
    )
    with running_server(command, env, port, log_path, cwd=tmp) as url:
        yield url, log_path.read_text()


def test_serve_says_it_is_emulated_and_prints_every_url(served):
    url, output = served
    assert "started two local emulators" in output
    assert "closed: no ROUTER_API_KEYS" not in output  # this server has keys
    for part in (f"{url}/v1", f"{url}/dashboard", "graph API", f"{url}/metrics"):
        assert part in output


async def test_gateway_and_graph_api_answer_from_one_server(served):
    url, _ = served
    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=ADMIN_KEY, max_retries=0) as client:
        completion = await client.chat.completions.create(model="auto", **HELLO)
        assert "emulator" in completion.choices[0].message.content
    graph_api = get_client(url=url, headers=AUTH)
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
    # the state holds the internals the caller's input and output leave out
    assert "candidates" in schemas["state_schema"]["properties"]
    assert "candidates" not in schemas["output_schema"]["properties"]


async def test_graph_api_streams_and_reports_errors(served):
    url, _ = served
    graph_api = get_client(url=url, headers=AUTH)
    events = [
        part
        async for part in graph_api.runs.stream(
            None, "router", input={**HELLO, "stream": True}, stream_mode=["custom", "values"]
        )
    ]
    kinds = [e.event for e in events]
    assert kinds[0] == "metadata"
    assert "custom" in kinds
    assert kinds[-1] == "end"
    tokens = "".join(e.data["delta"]["content"] for e in events if e.event == "custom")
    final = [e.data for e in events if e.event == "values"][-1]
    assert tokens == final["response"]["content"]
    with pytest.raises(Exception, match="non-empty list"):
        await graph_api.runs.wait(None, "router", input={"messages": []})
    async with httpx.AsyncClient(base_url=url, headers=AUTH) as http:
        missing = await http.post("/runs/wait", json={"assistant_id": "nope", "input": {}})
        assert missing.status_code == 404
        assert "router" in missing.json()["detail"]
        bad_mode = await http.post(
            "/runs/stream", json={"assistant_id": "router", "input": HELLO, "stream_mode": "debug"}
        )
        assert bad_mode.status_code == 422


def counted(text: str, name: str, **labels: str) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and set(labels.items()) <= set(sample.labels.items())
    )


async def scrape(url: str) -> str:
    # a new connection each time, so the scrapes reach both workers
    async with httpx.AsyncClient(
        base_url=url, headers=AUTH, limits=httpx.Limits(max_keepalive_connections=0)
    ) as h:
        response = await h.get("/metrics")
    assert response.status_code == 200
    return response.text


async def test_every_worker_answers_the_whole_servers_counts(served, metrics_dir: Path):
    url, _ = served
    before = await scrape(url)
    requests = counted(before, "router_requests_total", status="ok")
    on_gpu = counted(before, "router_gpu_endpoint_requests_total")
    n = 12

    async def one() -> None:
        async with openai.AsyncOpenAI(
            base_url=f"{url}/v1", api_key=ADMIN_KEY, max_retries=0
        ) as client:
            await client.chat.completions.create(
                model="auto", **HELLO, extra_body={"force_backend": "gpu"}
            )

    async def graph_run() -> None:  # the graph API's runs use the pool too
        await get_client(url=url, headers=AUTH).runs.wait(
            None, "router", input={**HELLO, "force_backend": "gpu"}
        )

    await asyncio.gather(*(one() for _ in range(n)), *(graph_run() for _ in range(4)))
    for _ in range(8):
        text = await scrape(url)
        assert counted(text, "router_requests_total", status="ok") == requests + n
        assert counted(text, "router_request_latency_seconds_count") >= requests + n
        assert counted(text, "router_gpu_endpoint_requests_total") == on_gpu + n + 4
        assert counted(text, "router_gpu_endpoint_in_flight") == 0
    # both workers counted some of them, each in its own file
    assert len(list(metrics_dir.glob("counter_*.db"))) == 2


def answer_to(url: str, head: bytes) -> bytes:
    """Send raw request bytes to the server; return all it answers before it closes."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            sock.sendall(head)
        chunks = []
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                chunks.append(chunk)
    return b"".join(chunks)


def assert_431(answer: bytes, names: str) -> None:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 "), answer[:300]
    assert b"connection: close" in head.lower()
    error = json.loads(body)["error"]
    assert error["code"] == "request_header_fields_too_large"
    assert names in error["message"]


@pytest.mark.parametrize(
    ("headers", "names"),
    [
        ({"x-big": "a" * 40_000}, "MAX_HEADER_BYTES"),  # one header past 32 KiB
        ({f"x-h{i}": "v" for i in range(150)}, "MAX_HEADER_COUNT"),  # past 100 headers
        ({f"x-h{i}": "v" * 400 for i in range(90)}, "MAX_HEADER_BYTES"),  # many, together
    ],
)
async def test_headers_past_a_limit_are_431_and_the_server_serves_on(served, headers, names):
    url, _ = served
    async with httpx.AsyncClient(base_url=url, timeout=10, headers=AUTH) as http:
        refused = await http.post("/v1/chat/completions", json=HELLO, headers=headers)
        assert refused.status_code == 431
        error = refused.json()["error"]
        assert error["code"] == "request_header_fields_too_large"
        assert names in error["message"]
        # just under the limits, the same request is served
        fine = {f"x-h{i}": "v" * 200 for i in range(80)}
        assert (
            await http.post("/v1/chat/completions", json=HELLO, headers=fine)
        ).status_code == 200


def test_a_header_that_never_ends_is_cut_off_at_the_limit(served):
    url, _ = served
    endless = b"GET /health HTTP/1.1\r\nhost: x\r\nx-endless: " + b"a" * 200_000
    assert_431(answer_to(url, endless), "MAX_HEADER_BYTES")


def test_an_idle_connection_outlives_a_clients_idle_timeout(served):
    # httpx keeps an idle connection 5 s, most proxies 60 s: the server must keep it
    # longer, or a request sent on it as the server closes it gets no answer at all
    url, _ = served
    host, port = url.removeprefix("http://").split(":")
    request = b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n"
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        reader = sock.makefile("rb")

        def ask() -> None:
            sock.sendall(request)
            assert reader.readline().startswith(b"HTTP/1.1 200")
            length = 0
            while (line := reader.readline()) != b"\r\n":
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            reader.read(length)

        ask()
        time.sleep(6)  # longer than uvicorn's default keep-alive of 5 s
        ask()  # the same connection still answers
