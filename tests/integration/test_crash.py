"""Crash safety on PostgreSQL: a gateway killed under load, and its database connections cut.

``hybrid-router serve`` runs as a process on emulated backends with the ledger in
a PostgreSQL schema of its own. Half of the requests are forced to serverless,
so they hold budget reservations while they run. The promises:

- SIGKILL mid-load loses no settled row: every request whose client got a 200
  has its ledger row; the holds of the requests cut off expire after
  ``RESERVATION_TTL_S`` once the gateway is back, and the budget's committed
  spend then equals the cost of the serverless rows, with nothing held;
- database connections terminated mid-request (``pg_terminate_backend``): each
  request either succeeds with its row written on a new connection, or fails
  with a typed 503 ``ledger_unavailable``; the gateway keeps serving, and the
  books balance.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg
import pytest

from state.ledger import UsageRecord
from tests.conftest import (
    POSTGRES_URL,
    TEST_KEY,
    Harness,
    Outcome,
    ServerProcess,
    StartGateway,
    free_port,
    send_load,
    server_env,
    server_process,
)

BIN = Path(sys.executable).parent / "hybrid-router"
TTL_S = 2.0  # reservations left behind expire this long after they were taken


def ask(i: int) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "auto",
        "messages": [{"role": "user", "content": f"Name a prime number, please ({i})"}],
        "max_tokens": 16,
    }
    if i % 2 == 0:
        body["force_backend"] = "serverless"  # holds a budget reservation while it runs
    return body


async def start_backends(harness: Harness) -> dict[str, str]:
    # a slow first token keeps requests in flight (and their holds taken) when the cut comes
    serverless = await harness.start("serverless", api_key=TEST_KEY, ttft_ms=40)
    gpu = await harness.start("gpu", ttft_ms=40)
    return {"LAMBDA_API_KEY": TEST_KEY, "LAMBDA_API_BASE": serverless, "GPU_ENDPOINTS": gpu}


def gateway(tmp: Path, postgres: dict[str, Any], backends: dict[str, str], name: str):
    port = free_port()
    env = server_env(
        tmp / "unused.db",
        DATABASE_URL=postgres["database_url"],
        DATABASE_SCHEMA=postgres["database_schema"],
        RESERVATION_TTL_S=str(TTL_S),
        **backends,
    )
    command = [str(BIN), "serve", "--port", str(port), "--workers", "1"]
    return server_process(command, env, port, tmp / f"{name}.log")


class Books:
    """The ledger's tables as the database has them (read with a connection of the test's)."""

    def __init__(self, schema: str) -> None:
        self.schema = schema

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'SET search_path TO "{self.schema}"')
            return conn.execute(sql, params).fetchall()

    def rows(self) -> dict[str, tuple[str, str, float]]:
        found = self.query("SELECT request_id, status, backend, cost_usd FROM usage_records")
        return {r[0]: (r[1], r[2], r[3]) for r in found}

    def holds(self) -> dict[str, int]:
        return dict(self.query("SELECT status, count(*) FROM reservations GROUP BY status"))

    def counters(self) -> dict[str, tuple[float, float]]:
        found = self.query(
            "SELECT period, committed_usd, reserved_usd FROM budget_counters WHERE scope = 'global'"
        )
        return {r[0]: (r[1], r[2]) for r in found}

    def serverless_spend(self) -> float:
        return sum(cost for _, backend, cost in self.rows().values() if backend == "serverless")

    async def settle_down(self, timeout_s: float = 30.0) -> None:
        """Wait until no hold is active: the restarted gateway's sweep expired the leftovers."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while self.holds().get("active", 0) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.2)

    def assert_balanced(self) -> None:
        assert self.holds().get("active", 0) == 0, self.holds()
        spend = self.serverless_spend()
        assert spend > 0
        for period, (committed, reserved) in self.counters().items():
            assert committed == pytest.approx(spend, rel=1e-9), period
            assert reserved == pytest.approx(0.0, abs=1e-12), period


def oks(outcomes: list[Outcome]) -> list[str]:
    return [o.request_id for o in outcomes if o.status == 200 and o.request_id]


def endless(stop: asyncio.Event) -> Iterator[dict[str, Any]]:
    i = 0
    while not stop.is_set():
        yield ask(i)
        i += 1


async def load_until(url: str, cut, after_oks: int, concurrency: int = 16) -> list[Outcome]:
    """Send requests until ``cut()`` has run, which it does once ``after_oks`` were answered."""
    outcomes: list[Outcome] = []
    stop = asyncio.Event()

    async def cut_when_due() -> None:
        while len(oks(outcomes)) < after_oks:
            await asyncio.sleep(0.01)
        await cut()
        stop.set()

    await asyncio.gather(
        send_load(url, endless(stop), concurrency, outcomes=outcomes, timeout_s=30),
        cut_when_due(),
    )
    return outcomes


async def test_sigkill_under_load_loses_no_settled_row_and_leftover_holds_expire(
    harness: Harness, postgres: dict[str, Any], tmp_path: Path
):
    backends = await start_backends(harness)
    books = Books(postgres["database_schema"])
    with gateway(tmp_path, postgres, backends, "first") as first:

        async def kill() -> None:
            first.kill()

        outcomes = await load_until(first.url, kill, after_oks=60)

    answered = oks(outcomes)
    assert len(answered) >= 60
    assert any(o.status == 0 for o in outcomes)  # requests were in flight at the kill
    rows = books.rows()
    missing = [rid for rid in answered if rid not in rows]
    assert missing == []  # every 200 had its row committed before it was sent
    assert all(rows[rid][0] == "ok" for rid in answered)
    left = books.holds().get("active", 0)
    assert left > 0  # the cut-off requests left holds behind

    with gateway(tmp_path, postgres, backends, "second") as second:
        await books.settle_down()
        books.assert_balanced()
        assert books.holds().get("expired", 0) == left
        # and it serves on: more requests, each with its row, the books still balanced
        after = await send_load(second.url, (ask(i) for i in range(20)), 4)
        assert [o.status for o in after] == [200] * 20
        assert set(oks(after)) <= set(books.rows())
        books.assert_balanced()
    figures = {
        "answered_200_before_the_kill": len(answered),
        "cut_off_in_flight": sum(o.status == 0 for o in outcomes),
        "holds_left_then_expired": left,
    }
    print("\ncrash figures:", figures)


def terminate_connections(server: ServerProcess | None = None) -> int:
    """Terminate a server's PostgreSQL connections, or this process's (by their client ports)."""
    ports = set()
    for pid in server.pids() if server is not None else [os.getpid()]:
        for conn in psutil.Process(pid).net_connections(kind="tcp"):
            if conn.raddr and conn.raddr.port == 5432 and conn.status == "ESTABLISHED":
                ports.add(conn.laddr.port)
    if not ports:
        return 0
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        found = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE client_port = ANY(%s) AND pid <> pg_backend_pid()",
            (sorted(ports),),
        ).fetchall()
    return len(found)


async def test_database_connections_cut_mid_request_fail_typed_or_succeed_and_serving_goes_on(
    harness: Harness, postgres: dict[str, Any], tmp_path: Path
):
    backends = await start_backends(harness)
    books = Books(postgres["database_schema"])
    with gateway(tmp_path, postgres, backends, "gateway") as server:
        terminated: list[int] = []

        async def cut() -> None:
            for _ in range(3):  # three cuts, a moment apart, each while requests run
                terminated.append(terminate_connections(server))
                await asyncio.sleep(0.3)

        outcomes = await load_until(server.url, cut, after_oks=40)
        assert sum(terminated) > 0
        statuses = {o.status for o in outcomes}
        assert statuses <= {200, 503}, [o for o in outcomes if o.status not in (200, 503)][:3]
        refused = [o for o in outcomes if o.status == 503]
        for outcome in refused:
            assert outcome.code == "ledger_unavailable"
            assert "ledger database" in outcome.error
        rows = books.rows()
        answered = oks(outcomes)
        assert [rid for rid in answered if rid not in rows] == []
        assert len(answered) > len(refused)  # most requests rode the cuts out on new connections

        after = await send_load(server.url, (ask(i) for i in range(20)), 4)
        assert [o.status for o in after] == [200] * 20
        await books.settle_down()
        books.assert_balanced()
    figures = {
        "connections_terminated": terminated,
        "answered_200": len(answered),
        "answered_503_ledger_unavailable": len(refused),
    }
    print("\nconnection-cut figures:", figures)


async def test_a_write_whose_connection_was_dropped_runs_again_on_a_new_one(
    harness: Harness, postgres: dict[str, Any]
):
    services = await harness.services(**postgres)
    ledger = services.ledger

    def row(request_id: str) -> UsageRecord:
        return UsageRecord(
            created_at=datetime.now(UTC),
            request_id=request_id,
            status="ok",
            backend="gpu",
            prompt_tokens=1,
            completion_tokens=1,
            cost_usd=0.0,
            gpu_seconds=0.0,
            latency_ms=1.0,
            routing_reason="test",
            fallbacks=0,
        )

    await ledger.record(row("before"))  # the pool now holds an open connection
    assert terminate_connections() > 0
    await ledger.record(row("after"))  # its first try meets the dead connection
    assert {r.request_id for r in await ledger.rows()} == {"before", "after"}


async def test_a_read_on_a_dropped_connection_is_a_typed_503_then_serving_goes_on(
    harness: Harness, start_gateway: StartGateway, postgres: dict[str, Any]
):
    admin = "sk-router-root-3e3e3e3e3e3e3e3e"  # GET /budget needs a key
    services = await harness.services(
        **postgres, router_api_keys=f"{admin}:root", router_admin_users="root"
    )
    gateway = await start_gateway(services)
    base = gateway.url.removesuffix("/v1")
    headers = {"Authorization": f"Bearer {admin}"}
    async with httpx.AsyncClient(base_url=base, headers=headers) as http:
        assert (await http.get("/budget")).status_code == 200
        assert terminate_connections() > 0
        lost = await http.get("/budget")
        assert lost.status_code == 503
        error = lost.json()["error"]
        assert error["code"] == "ledger_unavailable"
        assert "DATABASE_URL" in error["message"]
        assert (await http.get("/budget")).status_code == 200
