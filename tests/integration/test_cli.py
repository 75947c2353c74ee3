"""The hybrid-router command: ask (emulated default and configured backends) and emulate."""

from __future__ import annotations

import json
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from state.ledger import UsageRecord
from state.reporting.trace import latest_plan
from tests.conftest import BIN, Harness, free_port, ledger_row, run_cli


def test_ask_runs_on_emulators_when_nothing_is_configured(tmp_path: Path):
    done = run_cli(tmp_path, "ask", "Hello!", "--json")
    assert done.returncode == 0, done.stderr
    assert "using two local emulators" in done.stderr
    result = json.loads(done.stdout)
    assert "emulator" in result["response"]["content"]
    assert result["routing"]["model"] == "llama3.1-8b-instruct"
    assert (tmp_path / "ledger.db").exists()


def test_ask_prints_routing_usage_and_cost(tmp_path: Path):
    done = run_cli(tmp_path, "ask", "Hello!", "--force-backend", "serverless")
    assert done.returncode == 0, done.stderr
    for label in (
        "backend:    serverless",
        "reason:",
        "complexity: low",
        "usage:",
        "cost:       $",
    ):
        assert label in done.stdout
    assert "$0.000000" not in done.stdout  # serverless has a price


def test_bad_input_and_bad_configuration_give_clear_errors(tmp_path: Path):
    empty = run_cli(tmp_path, "ask", "   ")
    assert empty.returncode == 2
    assert "bad request" in empty.stderr
    assert "at least one message" in empty.stderr
    bad = run_cli(tmp_path, "ask", "Hello!", GPU_ENDPOINTS="not-a-url", SERVERLESS_RATIO="2")
    assert bad.returncode == 2
    assert "GPU_ENDPOINTS entry 'not-a-url'" in bad.stderr
    assert "serverless_ratio" in bad.stderr


def test_emulate_command_serves_and_ask_uses_configured_backends(tmp_path: Path):
    port = free_port()
    emulator = subprocess.Popen(
        [str(BIN), "emulate", "--port", str(port), "--name", "standalone", "--api-key", "k-123"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        url = f"http://127.0.0.1:{port}/v1"
        done = run_cli(
            tmp_path,
            "ask",
            "Hello!",
            "--json",
            LAMBDA_API_KEY="k-123",
            GPU_API_KEY="k-123",
            LAMBDA_API_BASE=url,
            GPU_ENDPOINTS=url,
            SERVERLESS_RATIO="1",
        )
        assert done.returncode == 0, done.stderr
        assert "local emulators" not in done.stderr
        assert "standalone" in json.loads(done.stdout)["response"]["content"]
    finally:
        emulator.terminate()
        emulator.wait(timeout=10)


def test_migrate_brings_a_fresh_database_to_head(tmp_path: Path):
    import sqlite3

    done = run_cli(tmp_path, "migrate")
    assert done.returncode == 0, done.stderr
    assert "up to date" in done.stdout
    with sqlite3.connect(tmp_path / "ledger.db") as db:
        tables = {row[0] for row in db.execute("select name from sqlite_master where type='table'")}
        (version,) = db.execute("select version_num from alembic_version").fetchone()
    assert {"usage_records", "budget_counters", "reservations", "budgets", "alerts"} <= tables
    from alembic.script import ScriptDirectory

    from state.migrate import alembic_config

    assert version == ScriptDirectory.from_config(alembic_config()).get_current_head()


def test_serve_refuses_an_open_network_bind_without_api_keys(tmp_path: Path):
    refused = run_cli(tmp_path, "serve", "--host", "0.0.0.0", "--port", str(free_port()))
    assert refused.returncode == 2
    assert "ROUTER_API_KEYS" in refused.stderr
    assert "--allow-open-access" in refused.stderr
    named = run_cli(tmp_path, "serve", "--host", "router.internal", "--port", "1")
    assert named.returncode == 2  # a host name may resolve to anything: refused too


def test_budget_sets_and_shows_a_budget_in_the_ledger_without_a_key(tmp_path: Path):
    done = run_cli(tmp_path, "budget", "user", "alice", "--daily-usd", "0.001")
    assert done.returncode == 0, done.stderr
    assert "user alice daily: $0.00 spent of $0.001, $0.001 left" in done.stdout
    done = run_cli(tmp_path, "budget", "user", "alice", "--monthly-usd", "100")
    assert done.returncode == 0, done.stderr
    shown = run_cli(tmp_path, "budget", "user", "alice").stdout
    assert "daily: $0.00 spent of $0.001" in shown  # kept
    assert "monthly: $0.00 spent of $100.00" in shown
    run_cli(tmp_path, "budget", "user", "alice", "--daily-usd", "none", "--monthly-usd", "none")
    assert "has no budget of its own" in run_cli(tmp_path, "budget", "user", "alice").stdout
    bad = run_cli(tmp_path, "budget", "user", "alice", "--daily-usd", "-1")
    assert bad.returncode == 2
    assert "a limit is a number of USD >= 0, or 'none'" in bad.stderr


async def test_export_trace_round_trips_through_simulate(harness: Harness, tmp_path: Path):
    services = await harness.services()  # the ledger at the CLI's DATABASE_URL
    start = datetime(2026, 11, 2, 9, tzinfo=UTC)
    levels = ["low", "low", "medium", "high", "low"]
    for i, level in enumerate(levels):
        await services.ledger.record(
            trace_row(i, start + timedelta(minutes=7 * i), level, prompt_tokens=100 * (i + 1))
        )
    # neither a failure nor a cached answer reached a backend: not part of the workload
    await services.ledger.record(trace_row(10, start, "low", status="failed", prompt_tokens=0))
    await services.ledger.record(trace_row(11, start, "low", cache_hit=True))
    # outside --since/--until
    await services.ledger.record(trace_row(12, start - timedelta(days=3), "high"))

    done = run_cli(
        tmp_path, "export-trace", "--since", "2026-11-02", "--until", "2026-11-03",
        "--output", "trace.jsonl",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "5 requests written to trace.jsonl (jsonl)" in done.stderr
    text = (tmp_path / "trace.jsonl").read_text()
    rows = [json.loads(line) for line in text.splitlines()]
    assert [r["complexity_level"] for r in rows] == levels
    assert [r["prompt_tokens"] for r in rows] == [100, 200, 300, 400, 500]
    assert rows[0]["timestamp"] == "2026-11-02T09:00:00+00:00"
    assert "alice" not in text  # no users
    assert "secret" not in text  # no routing reasons or errors

    csv_done = run_cli(tmp_path, "export-trace", "--since", "2026-11-02", "--format", "csv")
    assert csv_done.returncode == 0, csv_done.stderr
    assert csv_done.stdout.splitlines()[0] == (
        "timestamp,prompt_tokens,completion_tokens,complexity_level,served_backend,served_model"
    )
    assert len(csv_done.stdout.splitlines()) == 1 + 5

    plan_args = ("--gpus", "0-1", "--policy", "router", "--policy", "all_serverless", "--json")
    from_file = run_cli(tmp_path, "simulate", "--trace", "trace.jsonl", *plan_args)
    assert from_file.returncode == 0, from_file.stderr
    planned = json.loads(from_file.stdout)
    assert planned["requests"] == 5
    # the file and the ledger itself give the same plan
    from_ledger = run_cli(
        tmp_path, "simulate", "--from-ledger", "--since", "2026-11-02", "--until", "2026-11-03",
        *plan_args,
    )  # fmt: skip
    assert from_ledger.returncode == 0, from_ledger.stderr
    assert "plan kept in the ledger" in from_ledger.stderr

    def costs(plan: dict[str, Any]) -> dict[tuple[str, int], float]:
        return {(r["policy"], r["gpus"]): r["month_cost_usd"] for r in plan["runs"]}

    assert costs(json.loads(from_ledger.stdout)) == costs(planned)
    kept = await latest_plan(services.ledger)
    assert kept is not None
    assert kept["requests"] == 5
    assert {s["policy"] for s in kept["series"]} == {"router", "all_serverless"}

    bad = run_cli(tmp_path, "export-trace", "--since", "yesterday-ish")
    assert bad.returncode == 2
    assert "ISO 8601" in bad.stderr
    empty = run_cli(tmp_path, "simulate", "--from-ledger", "--since", "2027-01-01")
    assert empty.returncode == 2
    assert "none answered, nothing to simulate" in empty.stderr


def trace_row(i: int, created_at: datetime, level: str, **values: Any) -> UsageRecord:
    return ledger_row(
        f"trace-{i}",
        created_at,
        **{
            "user": "alice",
            "backend": "serverless",
            "cost_usd": 0.00001,
            "gpu_seconds": 0.0,
            "latency_ms": 300.0,
            "routing_reason": "secret routing reason",
            "complexity_level": level,
            **values,
        },
    )
