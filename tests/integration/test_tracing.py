"""LangSmith tracing: off by default, works when turned on, and never carries a key."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.conftest import TEST_KEY, Harness

SCRIPT = """
import asyncio
from graphs.router import graph
from langchain_core.tracers.langchain import wait_for_all_tracers
from state.context import close_default_services

async def main():
    try:
        result = await graph.ainvoke(
            {"messages": [{"role": "user", "content": "Hello!"}], "force_backend": "serverless"}
        )
        print(result["routing"]["backend"])
    finally:
        await close_default_services()

asyncio.run(main())
wait_for_all_tracers()
"""


@contextlib.asynccontextmanager
async def capture_server() -> AsyncIterator[tuple[str, list[bytes]]]:
    """Serve a stand-in LangSmith endpoint that keeps every body it receives."""
    bodies: list[bytes] = []

    async def anything(request: Request) -> JSONResponse:
        body = await request.body()
        if request.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        elif request.headers.get("content-encoding") == "zstd":
            import zstandard

            body = zstandard.ZstdDecompressor().decompressobj().decompress(body)
        bodies.append(body)
        return JSONResponse({}, status_code=202 if request.method == "POST" else 200)

    methods = ["GET", "POST", "PATCH", "PUT"]
    app = Starlette(routes=[Route("/{path:path}", anything, methods=methods)])
    server = uvicorn.Server(uvicorn.Config(app, port=0, log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", bodies
    finally:
        server.should_exit = True
        await task


async def run_script(env: dict[str, str], cwd: Path) -> str:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        SCRIPT,
        env=env,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=90)
    assert process.returncode == 0, err.decode()[-3000:]
    return out.decode() + err.decode()


def script_env(harness: Harness, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LANGSMITH", "LANGCHAIN"))}
    env.update(
        LAMBDA_API_KEY=TEST_KEY,
        LAMBDA_API_BASE=harness.serverless_url,
        GPU_ENDPOINTS=harness.gpu_url,
        DATABASE_URL=f"sqlite:///{tmp_path}/ledger.db",
        PYTHONPATH=str(Path(__file__).resolve().parents[2]),
        **extra,
    )
    return env


async def test_tracing_sends_runs_without_keys(both_up: Harness, tmp_path: Path):
    tracing_key = "lsv2_pt_tracing-key-must-not-leak-0000"
    async with capture_server() as (url, bodies):
        env = script_env(
            both_up,
            tmp_path,
            LANGSMITH_TRACING="true",
            LANGSMITH_ENDPOINT=url,
            LANGSMITH_API_KEY=tracing_key,
        )
        output = await run_script(env, tmp_path)
    assert "serverless" in output
    traced = b"\n".join(bodies)
    # tracing is on: the nodes' runs arrived
    assert b"check_budget" in traced
    assert b"track_usage" in traced
    # the plan step's traced output carries the four decisions
    assert b"selection_reason" in traced
    assert b"backend_reason" in traced
    assert TEST_KEY.encode() not in traced
    assert tracing_key.encode() not in traced
    assert TEST_KEY not in output


async def test_tracing_is_off_by_default(both_up: Harness, tmp_path: Path):
    async with capture_server() as (url, bodies):
        env = script_env(both_up, tmp_path, LANGSMITH_ENDPOINT=url, LANGSMITH_API_KEY="lsv2_x")
        await run_script(env, tmp_path)
    assert bodies == []
