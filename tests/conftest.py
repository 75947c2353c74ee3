"""Shared fixtures: emulators over real HTTP, and services wired to them."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import uvicorn
from langchain_openai import ChatOpenAI

os.environ.setdefault("LANGSMITH_TRACING", "false")
os.environ.setdefault("LANGSMITH_TEST_TRACKING", "false")

from backends.catalog import get_catalog
from emulator import EmulatorConfig, serve_emulator
from emulator.server import _EmbeddedServer
from gateway.app import create_app
from state.context import Context, Services, build_services, utc_now
from state.ledger import UsageRecord
from state.settings import Settings

# The real-vLLM tier runs on its own (make test-vllm: it installs vLLM and starts
# two servers); pytest still collects it when asked by path (tests/vllm).
collect_ignore = ["vllm"]

SERVERLESS_MODELS = [m.id for m in get_catalog().offered("serverless")]
GPU_MODELS = [m.served_name("gpu") for m in get_catalog().offered("gpu")]
TEST_KEY = "sk-test-serverless-key-0123456789"


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "lambda_api_key": TEST_KEY,
        "database_url": f"sqlite:///{tmp_path}/ledger.db",
        "gpu_health_interval_s": 60.0,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


class Harness:
    """Two emulators (serverless and GPU) and a way to build services on them."""

    def __init__(self, tmp_path: Path, stack: AsyncExitStack) -> None:
        self.tmp_path = tmp_path
        self.stack = stack
        self.serverless_url = ""
        self.gpu_url = ""
        self._emulators: dict[str, AsyncExitStack] = {}

    async def start(self, which: str, models: list[str] | None = None, **config: Any) -> str:
        """Start an emulator named ``which`` (others than the two: providers, GPU endpoints)."""
        if models is None:
            models = SERVERLESS_MODELS if which == "serverless" else GPU_MODELS
        emulator_stack = AsyncExitStack()
        url = await emulator_stack.enter_async_context(
            serve_emulator(EmulatorConfig(name=which, models=models, **config))
        )
        self._emulators[which] = emulator_stack
        self.stack.push_async_callback(emulator_stack.aclose)
        setattr(self, f"{which}_url", url)
        return url

    async def stop(self, which: str) -> None:
        await self._emulators.pop(which).aclose()

    async def services(
        self, clock: Callable[[], datetime] | None = None, **overrides: Any
    ) -> Services:
        values: dict[str, Any] = {
            "lambda_api_base": self.serverless_url or "http://127.0.0.1:9/v1",
            "gpu_endpoints": [self.gpu_url] if self.gpu_url else [],
        }
        values.update(overrides)
        settings = make_settings(self.tmp_path, **values)
        services = await build_services(settings, clock=clock or utc_now)
        self.stack.push_async_callback(services.aclose)
        return services

    async def context(self, **overrides: Any) -> Context:
        return Context(services=await self.services(**overrides))


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    async with AsyncExitStack() as stack:
        yield Harness(tmp_path, stack)


@pytest.fixture
async def both_up(harness: Harness) -> Harness:
    await harness.start("serverless", api_key=TEST_KEY)
    await harness.start("gpu")
    return harness


Invoke = Callable[..., Awaitable[dict[str, Any]]]


POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


@contextlib.contextmanager
def postgres_schema() -> Iterator[dict[str, Any]]:
    """Yield ledger settings on PostgreSQL in a schema of its own, dropped after."""
    import uuid

    import psycopg

    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield {"database_url": POSTGRES_URL, "database_schema": schema}
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Ledger settings on SQLite (a file) or PostgreSQL (a schema of its own, dropped after)."""
    if request.param == "sqlite":
        yield {"database_url": f"sqlite:///{tmp_path}/ledger.db"}
        return
    with postgres_schema() as settings:
        yield settings


@pytest.fixture
def postgres() -> Iterator[dict[str, Any]]:
    """Ledger settings on PostgreSQL only (a schema of its own, dropped after)."""
    with postgres_schema() as settings:
        yield settings


ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- the hybrid-router command in a subprocess ----------------------------------------

BIN = Path(sys.executable).parent / "hybrid-router"


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"LAMBDA_API_KEY", "GPU_ENDPOINTS", "DATABASE_URL", "LAMBDA_API_BASE"}
    }
    env.update(DATABASE_URL=f"sqlite:///{tmp_path}/ledger.db", EMULATOR_TTFT_MS="0", **extra)
    return env


def run_cli(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN), *args],
        env=clean_env(tmp_path, **env),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )


ROUTER_ENV_KEYS = {"LAMBDA_API_KEY", "GPU_ENDPOINTS", "DATABASE_URL", "ROUTER_API_KEYS"}


def server_env(ledger: Path, **extra: str) -> dict[str, str]:
    """Return this process's environment for a server on emulated backends and ``ledger``."""
    env = {k: v for k, v in os.environ.items() if k not in ROUTER_ENV_KEYS}
    env.update(
        DATABASE_URL=f"sqlite:///{ledger}",
        LANGGRAPH_CLI_NO_ANALYTICS="1",
        LANGGRAPH_NO_VERSION_CHECK="true",
        LANGSMITH_TRACING="false",
        EMULATOR_TTFT_MS="0",
        EMULATOR_TPOT_MS="0",
    )
    env.update(extra)  # may replace any of the above (DATABASE_URL for PostgreSQL)
    return env


@dataclass
class ServerProcess:
    """A server started by :func:`server_process`: its URL and its process (group)."""

    url: str
    process: subprocess.Popen[bytes]

    def pids(self) -> list[int]:
        """Return the ids of the server's process and all its descendants."""
        import psutil

        root = psutil.Process(self.process.pid)
        return [root.pid, *(child.pid for child in root.children(recursive=True))]

    def kill(self) -> None:
        """SIGKILL the whole process group: no shutdown code runs."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=20)


@contextlib.contextmanager
def server_process(
    command: list[str],
    env: dict[str, str],
    port: int,
    log_path: Path,
    cwd: Path = ROOT,
    ready_path: str = "/ok",
) -> Iterator[ServerProcess]:
    """Run a server command until its ``ready_path`` answers; yield it, stop it after."""
    with log_path.open("w") as log:
        process = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline and process.poll() is None:
                try:
                    if httpx.get(f"{url}{ready_path}", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.25)
            if process.poll() is not None or time.monotonic() >= deadline:
                pytest.fail(f"{command[1]} did not start:\n{log_path.read_text()[-3000:]}")
            yield ServerProcess(url, process)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGINT)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


@contextlib.contextmanager
def running_server(
    command: list[str], env: dict[str, str], port: int, log_path: Path, cwd: Path = ROOT
) -> Iterator[str]:
    """Run a server command until its ``/ok`` answers; yield its URL, stop it after."""
    with server_process(command, env, port, log_path, cwd) as server:
        yield server.url


@contextlib.contextmanager
def emulator_process(log_dir: Path, name: str, *options: str) -> Iterator[str]:
    """Run ``hybrid-router emulate`` as a process of its own; yield its base URL (``.../v1``).

    For load that the test's own event loop should not share with the backends.
    ``options`` are the command's (``--fail-rate``, ``--ttft-ms``, ...).
    """
    models = SERVERLESS_MODELS if name == "serverless" else GPU_MODELS
    port = free_port()
    command = [
        str(Path(sys.executable).parent / "hybrid-router"),
        "emulate",
        "--port",
        str(port),
        "--name",
        name,
        "--models",
        ",".join(models),
        *options,
    ]
    log = log_dir / f"emulator-{name}.log"
    with server_process(command, dict(os.environ), port, log, ready_path="/health") as server:
        yield f"{server.url}/v1"


def langgraph_dev_command(port: int) -> list[str]:
    langgraph = Path(sys.executable).parent / "langgraph"
    return [str(langgraph), "dev", "--no-browser", "--port", str(port), "--n-jobs-per-worker", "4"]


@pytest.fixture(scope="session")
def langgraph_dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Serve the project with `langgraph dev` on emulated backends; yield its URL."""
    tmp = tmp_path_factory.mktemp("langgraph-dev")
    port = free_port()
    env = server_env(tmp / "ledger.db")
    with running_server(langgraph_dev_command(port), env, port, tmp / "server.log") as url:
        yield url


# -- the gateway served in this event loop ----------------------------------------


@dataclass
class Gateway:
    url: str  # base URL, .../v1
    services: Services | None
    client: openai.AsyncOpenAI

    async def rows(self) -> list[Any]:
        assert self.services is not None
        return await self.services.ledger.rows()

    async def only_row(self) -> Any:
        (row,) = await self.rows()
        return row

    def chat(self, **kwargs: Any) -> ChatOpenAI:
        return ChatOpenAI(
            base_url=self.url,
            api_key="x",
            model="auto",
            stream_usage=True,
            max_retries=0,
            use_responses_api=False,
            **kwargs,
        )


StartGateway = Callable[..., Awaitable[Gateway]]


@pytest.fixture
async def start_gateway(harness: Harness) -> AsyncIterator[StartGateway]:
    """Start gateways in this loop; ``start(services)`` or ``start(provider=...)``."""
    servers: list[tuple[uvicorn.Server, asyncio.Task[None], socket.socket]] = []
    clients: list[openai.AsyncOpenAI] = []

    async def start(
        services: Services | None = None,
        provider: Callable[[], Awaitable[Services]] | None = None,
    ) -> Gateway:
        if provider is None:
            assert services is not None

            async def provider() -> Services:
                return services

        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        config = uvicorn.Config(
            create_app(services=provider), log_level="warning", lifespan="off", log_config=None
        )
        server = _EmbeddedServer(config)
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            assert not task.done(), task.result()
            await asyncio.sleep(0.002)
        servers.append((server, task, sock))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
        client = openai.AsyncOpenAI(base_url=url, api_key="x", max_retries=0)
        clients.append(client)
        return Gateway(url, services, client)

    try:
        yield start
    finally:
        for client in clients:
            await client.close()
        for server, task, sock in servers:
            server.should_exit = True
            await task
            sock.close()


@pytest.fixture
async def gateway(both_up: Harness, start_gateway: StartGateway) -> Gateway:
    return await start_gateway(await both_up.services())


# -- what the backends and the budgets saw ----------------------------------------------


async def received(url: str) -> list[dict[str, Any]]:
    """Return the request bodies an emulator at ``url`` received, oldest first."""
    async with httpx.AsyncClient(headers={"authorization": f"Bearer {TEST_KEY}"}) as http:
        return (await http.get(f"{url}/_received")).json()["data"]


async def budget_books(services: Services) -> dict[str, Any]:
    """Return the global day window's committed and reserved spend, and every hold's status."""
    from sqlalchemy import select

    from state.ledger import BudgetCounter, Reservation

    async with services.ledger.engine.connect() as conn:
        counters = (
            await conn.execute(
                select(BudgetCounter.committed_usd, BudgetCounter.reserved_usd).where(
                    BudgetCounter.scope == "global", BudgetCounter.period == "day"
                )
            )
        ).all()
        holds = [r[0] for r in await conn.execute(select(Reservation.status))]
    return {
        "committed": sum(c[0] for c in counters),
        "reserved": sum(c[1] for c in counters),
        "holds": holds,
    }


# -- load through a gateway over real HTTP --------------------------------------------


@dataclass
class Outcome:
    """How one request of :func:`send_load` ended."""

    status: int  # 0: no HTTP answer (connection refused, reset or timed out)
    request_id: str | None  # the gateway's x-request-id
    code: str | None  # an error answer's OpenAI error code
    error: str  # an error answer's message, or the transport error


async def send_load(
    url: str,
    bodies: Iterable[dict[str, Any]],
    concurrency: int,
    *,
    outcomes: list[Outcome] | None = None,
    timeout_s: float = 60.0,
    headers: dict[str, str] | None = None,
) -> list[Outcome]:
    """POST each of ``bodies`` to ``url``'s chat completions, ``concurrency`` at a time.

    Every answer is kept (appended to ``outcomes`` as it comes, for a caller watching
    progress); a failed connection is an outcome with status 0, not an exception.
    """
    outcomes = [] if outcomes is None else outcomes
    source = iter(bodies)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=url, limits=limits, timeout=timeout_s, headers=headers
    ) as http:

        async def worker() -> None:
            for body in source:
                try:
                    response = await http.post("/v1/chat/completions", json=body)
                except httpx.HTTPError as exc:
                    outcomes.append(Outcome(0, None, None, repr(exc)))
                    continue
                request_id = response.headers.get("x-request-id")
                if response.status_code == 200:
                    outcomes.append(Outcome(200, request_id, None, ""))
                    continue
                try:
                    error = response.json()["error"]
                except (ValueError, KeyError, TypeError):
                    error = {"code": None, "message": response.text[:300]}
                outcomes.append(
                    Outcome(response.status_code, request_id, error.get("code"), error["message"])
                )

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return outcomes


# -- the GPU pool's recorded hours -------------------------------------------------------


async def record_pool(
    services: Services,
    start: Any,
    end: Any,
    *,
    endpoint: str = "http://10.0.0.5:8000/v1",
    hourly_usd: float | None = None,
    process: str = "test-worker",
) -> None:
    """Record that ``endpoint`` was in the pool from ``start`` to ``end`` (closed interval).

    At its configured instance type and price unless ``hourly_usd`` is given.
    """
    from state.pool_membership import Member, record_interval

    instance_type, configured = services.settings.endpoint_price(endpoint)
    member = Member(endpoint, instance_type, configured if hourly_usd is None else hourly_usd)
    await services.ledger.write(lambda conn: record_interval(conn, member, start, end, process))


def ledger_row(request_id: str, created_at: datetime, **values: Any) -> UsageRecord:
    """Return a ledger row for tests that write the ledger directly.

    The defaults are an answered GPU request of 100 + 50 tokens on the 8B model
    that took 0.5 s; ``values`` replace any of them.
    """
    row: dict[str, Any] = {
        "created_at": created_at,
        "request_id": request_id,
        "user": None,
        "team": None,
        "backend": "gpu",
        "model": "llama3.1-8b-instruct",
        "prompt_tokens": 100,
        "completion_tokens": 50,
        "cost_usd": 0.0,
        "gpu_seconds": 0.5,
        "latency_ms": 500.0,
        "status": "ok",
        "routing_reason": "test",
        "complexity_score": 0.1,
        "complexity_level": "low",
        "fallbacks": 0,
        "error": None,
    }
    row.update(values)
    return UsageRecord(**row)
