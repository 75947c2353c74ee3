"""The hybrid-router command: ask (emulated default and configured backends) and emulate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import free_port

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
