"""Budget reservation throughput: reserve + settle operations per second.

Runs the same workload on SQLite (a file) and on PostgreSQL (a throwaway
schema), sequentially and with concurrent callers, and prints one table; the
figures also go to JSON.

    .venv/bin/python benchmarks/budget_ops.py --ops 2000
    TEST_POSTGRES_URL=postgresql://postgres@127.0.0.1:5432/test  (the default)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg

from state.budgets import Held
from state.context import build_services
from state.settings import Settings

POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


async def run(database: dict[str, Any], ops: int, concurrency: int) -> float:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        lambda_api_key="bench",
        gpu_endpoints=["http://127.0.0.1:9/v1"],
        lambda_daily_budget=1e9,
        lambda_monthly_budget=1e9,
        user_budgets={"alice": {"daily": 1e9}},
        **database,
    )
    services = await build_services(settings)
    book = services.budgets
    await book.reserve("warm-up", 0.0001)
    await book.settle("warm-up", 0.0001)
    per_worker = ops // concurrency

    async def worker(w: int) -> None:
        for i in range(per_worker):
            held = await book.reserve(f"{w}-{i}-{uuid.uuid4().hex[:8]}", 0.001, user="alice")
            assert isinstance(held, Held)
            await book.settle(held.reservation_id, 0.0005)

    started = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    elapsed = time.perf_counter() - started
    await services.aclose()
    return per_worker * concurrency / elapsed


async def main(ops: int, out: Path) -> None:
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for concurrency in (1, 16):
            db = {"database_url": f"sqlite:///{tmp}/bench-{concurrency}.db"}
            results.setdefault("sqlite", {})[f"c{concurrency}"] = await run(db, ops, concurrency)
    for concurrency in (1, 16):
        schema = f"bench_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
        try:
            db = {"database_url": POSTGRES_URL, "database_schema": schema}
            results.setdefault("postgresql", {})[f"c{concurrency}"] = await run(
                db, ops, concurrency
            )
        finally:
            with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
    print(f"reserve+settle pairs per second ({ops} pairs; global day/month + a user budget)")
    print(f"{'database':<12}{'1 caller':>12}{'16 callers':>12}")
    for name, figures in results.items():
        print(f"{name:<12}{figures['c1']:>12.0f}{figures['c16']:>12.0f}")
    out.write_text(json.dumps({"ops": ops, "pairs_per_second": results}, indent=2))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/budget_ops.json"))
    args = parser.parse_args()
    asyncio.run(main(args.ops, args.out))
