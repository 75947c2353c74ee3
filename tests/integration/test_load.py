"""Load through the served gateway: two workers on PostgreSQL, 64 at once, 5 % of calls failing.

``hybrid-router serve --workers 2`` runs with its ledger in a PostgreSQL schema
of its own, in front of two emulator processes (serverless and GPU) that each
answer 5 % of chat calls with an injected HTTP 500. The serverless daily budget
is set well below what the load would spend if it could. The promises:

- zero lost ledger rows: one row per request sent, each request's own;
- no error but the injected ones: every answer is a 200, or a typed error that
  an injected failure explains (every backend failed, or none was available);
  no 500, no dropped connection;
- budgets never exceeded: the committed spend stays within the limit, equals
  the serverless rows' cost, and nothing stays held;
- memory: each worker's peak RSS is reported (and, for runs of 5,000 requests
  or more, the second half's peak stays within 10 % + 16 MiB of the first's).

The normal suite sends 1,000 requests. ``make test-load`` sends 10,000
(``LOAD_REQUESTS``) and ``make test-soak`` runs for ``SOAK_SECONDS``
(``LOAD_SECONDS``); both print the figures and write them to
``test-artifacts/load.json``.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import (
    POSTGRES_URL,
    ROOT,
    TEST_KEY,
    Outcome,
    emulator_process,
    free_port,
    send_load,
    server_env,
    server_process,
)

BIN = Path(sys.executable).parent / "hybrid-router"
REQUESTS = int(os.environ.get("LOAD_REQUESTS", "1000"))
ADMIN_KEY = "sk-router-root-4d4d4d4d4d4d4d4d"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
SECONDS = float(os.environ.get("LOAD_SECONDS", "0"))  # > 0: a soak, by duration
CONCURRENCY = int(os.environ.get("LOAD_CONCURRENCY", "64"))
FAIL_RATE = 0.05
DAILY_BUDGET = 0.00002  # USD: the load would spend more on serverless if the budget let it
# errors an injected failure explains: both backends failed the request, or the GPU
# pool was cooling down after two failures in a row when the budget had run out
INJECTED = {"all_backends_failed", "no_backend_available"}
PROMPTS = [
    "Hello!",
    "Name three prime numbers.",
    "Write a Python function that reverses a list, and explain it step by step.",
]


def ask(i: int) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "auto",
        "messages": [{"role": "user", "content": f"{PROMPTS[i % 3]} ({i})"}],
        "max_tokens": 16,
        "user": f"user-{i % 8}",
    }
    if i % 10 == 0:
        body["stream"] = True
    return body


def bodies(deadline: float | None) -> Iterator[dict[str, Any]]:
    i = 0
    while (deadline is None and i < REQUESTS) or (deadline and time.monotonic() < deadline):
        yield ask(i)
        i += 1


class Memory:
    """Each worker's peak RSS in the first and the second half of the run, sampled."""

    def __init__(self, workers: list[psutil.Process]) -> None:
        self.workers = workers
        self.halves: list[dict[int, int]] = [{}, {}]
        self.half = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.25):
            for worker in self.workers:
                try:
                    rss = worker.memory_info().rss
                except psutil.Error:
                    continue
                peaks = self.halves[self.half]
                peaks[worker.pid] = max(peaks.get(worker.pid, 0), rss)

    def __enter__(self) -> Memory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def peaks_mib(self) -> list[dict[str, float]]:
        return [
            {
                "first_half": self.halves[0].get(w.pid, 0) / 2**20,
                "second_half": self.halves[1].get(w.pid, 0) / 2**20,
            }
            for w in self.workers
        ]


def worker_processes(root_pid: int) -> list[psutil.Process]:
    """Return uvicorn's worker processes (spawned children, not the resource tracker)."""
    children = psutil.Process(root_pid).children(recursive=True)
    return [c for c in children if "spawn_main" in " ".join(c.cmdline())]


async def injected_gpu_failures(url: str) -> float:
    """Return the GPU calls that failed, summed over both workers (the gateway's /metrics)."""
    async with httpx.AsyncClient(base_url=url, headers=ADMIN) as http:
        text = (await http.get("/metrics")).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "router_gpu_endpoint_failures_total"
    )


def books(schema: str) -> dict[str, Any]:
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'SET search_path TO "{schema}"')
        request_ids = [r[0] for r in conn.execute("SELECT request_id FROM usage_records")]
        (spend,) = conn.execute(
            "SELECT coalesce(sum(cost_usd), 0) FROM usage_records WHERE backend = 'serverless'"
        ).fetchone()
        counters = conn.execute(
            "SELECT period, committed_usd, reserved_usd FROM budget_counters WHERE scope = 'global'"
        ).fetchall()
        holds = dict(conn.execute("SELECT status, count(*) FROM reservations GROUP BY status"))
        fallbacks = conn.execute("SELECT count(*) FROM usage_records WHERE fallbacks > 0")
        (fell_back,) = fallbacks.fetchone()
    return {
        "request_ids": request_ids,
        "serverless_spend": spend,
        "counters": {period: (committed, reserved) for period, committed, reserved in counters},
        "holds": holds,
        "fell_back": fell_back,
    }


async def test_load_on_two_workers_loses_no_row_passes_no_budget_and_fails_only_as_injected(
    postgres: dict[str, Any], tmp_path: Path
):
    faults = ["--fail-rate", str(FAIL_RATE), "--fail-status", "500", "--ttft-ms", "2"]
    with (
        emulator_process(
            tmp_path, "serverless", *faults, "--seed", "1", "--api-key", TEST_KEY
        ) as serverless,
        emulator_process(tmp_path, "gpu", *faults, "--seed", "2") as gpu,
    ):
        port = free_port()
        env = server_env(
            tmp_path / "unused.db",
            DATABASE_URL=postgres["database_url"],
            DATABASE_SCHEMA=postgres["database_schema"],
            LAMBDA_API_KEY=TEST_KEY,
            LAMBDA_API_BASE=serverless,
            GPU_ENDPOINTS=gpu,
            LAMBDA_DAILY_BUDGET=str(DAILY_BUDGET),
            GPU_COOLDOWN_S="1",
            RESPONSE_CACHE_TTL_S="0",
            ROUTER_API_KEYS=f"{ADMIN_KEY}:root",  # /metrics needs an admin key
            ROUTER_ADMIN_USERS="root",
        )
        command = [str(BIN), "serve", "--port", str(port), "--workers", "2"]
        with server_process(command, env, port, tmp_path / "gateway.log") as server:
            workers = worker_processes(server.process.pid)
            assert len(workers) == 2
            deadline = time.monotonic() + SECONDS if SECONDS > 0 else None
            outcomes: list[Outcome] = []
            started = time.perf_counter()
            with Memory(workers) as memory:

                async def halfway() -> None:
                    if deadline is None:
                        while len(outcomes) < REQUESTS // 2:
                            await asyncio.sleep(0.05)
                    else:
                        await asyncio.sleep(SECONDS / 2)
                    memory.half = 1

                await asyncio.gather(
                    send_load(
                        server.url, bodies(deadline), CONCURRENCY, outcomes=outcomes, headers=ADMIN
                    ),
                    halfway(),
                )
            elapsed = time.perf_counter() - started
            found = books(postgres["database_schema"])
            gpu_failures = await injected_gpu_failures(server.url)

    statuses = collections.Counter((o.status, o.code) for o in outcomes)
    peaks = memory.peaks_mib()
    figures = {
        "requests": len(outcomes),
        "concurrency": CONCURRENCY,
        "workers": 2,
        "elapsed_s": round(elapsed, 1),
        "requests_per_s": round(len(outcomes) / elapsed, 1),
        "answers": {f"{status} {code or ''}".strip(): n for (status, code), n in statuses.items()},
        "ledger_rows": len(found["request_ids"]),
        "gpu_calls_failed": gpu_failures,
        "rows_with_a_fallback": found["fell_back"],
        "serverless_spend_usd": found["serverless_spend"],
        "daily_budget_usd": DAILY_BUDGET,
        "peak_rss_mib_per_worker": [
            {k: round(v, 1) for k, v in worker.items()} for worker in peaks
        ],
    }
    print("\nload figures:", json.dumps(figures, indent=2))
    artifacts = ROOT / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    (artifacts / "load.json").write_text(json.dumps(figures, indent=2))

    # no error but the injected ones, each typed
    unexplained = [o for o in outcomes if o.status != 200 and o.code not in INJECTED]
    assert unexplained == [], unexplained[:5]
    assert statuses[(200, None)] >= 0.95 * len(outcomes)
    assert gpu_failures > 0  # failures were injected
    # zero lost rows: one per request sent, each its own
    assert len(outcomes) == REQUESTS if deadline is None else len(outcomes) > 0
    assert len(found["request_ids"]) == len(outcomes)
    assert set(found["request_ids"]) == {o.request_id for o in outcomes}
    # the budget was reached, never passed, and holds nothing
    for period, (committed, reserved) in found["counters"].items():
        assert committed <= DAILY_BUDGET + 1e-9, period
        assert committed == pytest.approx(found["serverless_spend"], rel=1e-9), period
        assert reserved == pytest.approx(0.0, abs=1e-12), period
    assert committed >= DAILY_BUDGET * 0.5  # the load pressed on the budget
    assert found["holds"].get("active", 0) == 0
    if len(outcomes) >= 5000:
        for worker in peaks:
            assert worker["second_half"] <= worker["first_half"] * 1.10 + 16, peaks
