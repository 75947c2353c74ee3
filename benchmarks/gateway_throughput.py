"""Gateway throughput: requests/s and p50/p99 latency through OpenAI-compatible HTTP servers.

Three targets, each its own process on the loopback, behind the same emulator
(``hybrid-router emulate --ttft-ms 0 --tpot-ms 0``, answering at once):

- ``emulator``: the load sent straight to the emulator, the ceiling;
- ``ours``: ``hybrid-router serve --workers 1``, its backends (LAMBDA_API_BASE and
  GPU_ENDPOINTS) at the emulator, a throwaway SQLite ledger;
- ``litellm``: ``litellm --config <tmp yaml> --num_workers 1`` with two
  deployments of the model at the emulator (skipped when LiteLLM is not
  installed), no master key (like ours, no authentication), bundled cost map,
  telemetry off.

The load comes from ``benchmarks/loadgen.py`` in its own process (closed loop,
bounded in requests and seconds) at concurrency 1, 16 and 64, ``--rounds`` times,
the targets' order rotating. The table shows the median over rounds; the JSON has
every run, plus each server's CPU milliseconds per request (from /proc), which
machine noise disturbs less than requests/s.

    .venv-bench/bin/python benchmarks/gateway_throughput.py          # ours, LiteLLM, ceiling
    .venv/bin/python benchmarks/gateway_throughput.py --rounds 3     # ours and the ceiling
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from _common import (
    BENCH_DIR,
    LITELLM_ENV,
    cpu_seconds,
    emulator_process,
    free_port,
    litellm_version,
    machine_info,
    print_machine,
    server,
    venv_script,
    write_json,
)

MODEL = "llama3.1-8b-instruct"
CONCURRENCY = (1, 16, 64)
POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


@contextlib.contextmanager
def throwaway_schema() -> Iterator[str]:
    """A fresh PostgreSQL schema for our ledger, dropped at the end (as budget_ops.py does)."""
    import psycopg

    schema = f"bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield schema
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def litellm_config(emulator: str) -> str:
    deployments = "".join(
        f"""  - model_name: {MODEL}
    litellm_params:
      model: openai/{MODEL}
      api_base: {emulator}
      api_key: bench
    model_info:
      id: emulator-{name}
"""
        for name in ("a", "b")
    )
    return f"""model_list:
{deployments}litellm_settings:
  telemetry: false
  drop_params: true
general_settings:
  disable_spend_logs: true
  # no master key, as our gateway runs without ROUTER_API_KEYS (local use only)
  dangerously_permit_weak_or_unset_master_key: true
"""


def load(
    url: str, concurrency: int, requests: int, seconds: float, timeout_s: float
) -> dict[str, Any]:
    command = [
        sys.executable,
        str(BENCH_DIR / "loadgen.py"),
        "--url",
        url,
        "--concurrency",
        str(concurrency),
        "--requests",
        str(requests),
        "--seconds",
        str(seconds),
        "--timeout",
        str(timeout_s),
    ]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=seconds + timeout_s + 60, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"loadgen failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(args: argparse.Namespace) -> None:
    info = machine_info()
    have_litellm = litellm_version() is not None and not args.no_litellm
    runs: dict[str, dict[int, list[dict[str, Any]]]] = {}
    with contextlib.ExitStack() as stack:
        # the servers run in a throwaway folder: no .env of the repo is read
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-gw-")))
        emu_port = free_port()
        emulator = f"http://127.0.0.1:{emu_port}/v1"
        ours_port = free_port()
        targets: dict[str, dict[str, Any]] = {"emulator": {"url": emulator}}
        with emulator_process(emu_port, work) as emu_proc:
            targets["emulator"]["pid"] = emu_proc.pid
            ours_env = {
                "LAMBDA_API_KEY": "bench",
                "LAMBDA_API_BASE": emulator,
                "GPU_ENDPOINTS": emulator,
                "DATABASE_URL": f"sqlite:///{work}/ledger.db",
                "DATABASE_SCHEMA": "",
                "LANGSMITH_TRACING": "false",
            }
            if args.ledger == "postgresql":
                ours_env["DATABASE_URL"] = POSTGRES_URL
                ours_env["DATABASE_SCHEMA"] = stack.enter_context(throwaway_schema())
            with server(
                "ours",
                [
                    venv_script("hybrid-router"),
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(ours_port),
                    "--workers",
                    "1",
                ],
                f"http://127.0.0.1:{ours_port}/v1/models",
                env=ours_env,
                cwd=work,
                log=work / "ours.log",
            ) as ours_proc:
                targets["ours"] = {"url": f"http://127.0.0.1:{ours_port}/v1", "pid": ours_proc.pid}
                if have_litellm:
                    lite_port = free_port()
                    config = work / "litellm.yaml"
                    config.write_text(litellm_config(emulator))
                    lite = server(
                        "litellm",
                        [
                            venv_script("litellm"),
                            "--config",
                            str(config),
                            "--host",
                            "127.0.0.1",
                            "--port",
                            str(lite_port),
                            "--num_workers",
                            "1",
                        ],
                        f"http://127.0.0.1:{lite_port}/health/liveliness",
                        env=LITELLM_ENV,
                        cwd=work,
                        log=work / "litellm.log",
                        timeout_s=180,
                    )
                else:
                    lite = None
                with lite if lite is not None else contextlib.nullcontext() as lite_proc:
                    if lite_proc is not None:
                        targets["litellm"] = {
                            "url": f"http://127.0.0.1:{lite_port}/v1",
                            "pid": lite_proc.pid,
                        }
                    runs = drive(targets, args, emu_proc.pid)

    report(info, targets, runs, args, have_litellm)


def drive(
    targets: dict[str, dict[str, Any]], args: argparse.Namespace, emulator_pid: int
) -> dict[str, dict[int, list[dict[str, Any]]]]:
    names = list(targets)
    for name in names:  # first requests build clients, ledger schema, caches
        load(targets[name]["url"], 16, args.warmup, 30, args.timeout)
    runs: dict[str, dict[int, list[dict[str, Any]]]] = {
        n: {c: [] for c in args.concurrency} for n in names
    }
    for r in range(args.rounds):
        for i, concurrency in enumerate(args.concurrency):
            shift = (r + i) % len(names)
            for name in names[shift:] + names[:shift]:
                target = targets[name]
                cpu_before = cpu_seconds(target["pid"])
                emu_before = cpu_seconds(emulator_pid)
                result = load(target["url"], concurrency, args.requests, args.seconds, args.timeout)
                cpu_after = cpu_seconds(target["pid"])
                emu_after = cpu_seconds(emulator_pid)
                n = max(result["requests"], 1)
                if cpu_before is not None and cpu_after is not None:
                    result["server_cpu_ms_per_request"] = (cpu_after - cpu_before) * 1000 / n
                if name != "emulator" and emu_before is not None and emu_after is not None:
                    result["emulator_cpu_ms_per_request"] = (emu_after - emu_before) * 1000 / n
                result["round"] = r
                runs[name][concurrency].append(result)
                print(
                    f"  round {r + 1} c={concurrency:<3} {name:<9} {result['rps']:>8.0f} req/s "
                    f"p50 {result['p50_ms']:>7.2f} ms p99 {result['p99_ms']:>7.2f} ms "
                    f"errors {result['errors']}",
                    flush=True,
                )
                time.sleep(0.5)
    return runs


def _median(results: list[dict[str, Any]], key: str) -> float:
    values = [r[key] for r in results if key in r]
    return statistics.median(values) if values else float("nan")


def report(
    info: dict[str, Any],
    targets: dict[str, dict[str, Any]],
    runs: dict[str, dict[int, list[dict[str, Any]]]],
    args: argparse.Namespace,
    have_litellm: bool,
) -> None:
    table: dict[str, dict[str, dict[str, float]]] = {}
    for name, by_c in runs.items():
        table[name] = {}
        for concurrency, results in by_c.items():
            table[name][f"c{concurrency}"] = {
                key: _median(results, key)
                for key in (
                    "rps",
                    "p50_ms",
                    "p99_ms",
                    "server_cpu_ms_per_request",
                    "emulator_cpu_ms_per_request",
                )
            } | {
                "errors": sum(r["errors"] for r in results),
                "requests": sum(r["requests"] for r in results),
            }
    print()
    print_machine(info)
    print(
        f"medians of {args.rounds} rounds; each run up to {args.requests} requests or "
        f"{args.seconds:g} s; one server worker; loadgen in its own process; "
        f"our ledger on {args.ledger}"
    )
    print(
        f"{'target':<10}{'conc':>5}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'cpu ms/req':>11}{'errors':>8}"
    )
    for name, by_c in table.items():
        for c in args.concurrency:
            f = by_c[f"c{c}"]
            print(
                f"{name:<10}{c:>5}{f['rps']:>9.0f}{f['p50_ms']:>9.2f}{f['p99_ms']:>9.2f}"
                f"{f['server_cpu_ms_per_request']:>11.3f}{f['errors']:>8}"
            )
    ratios: dict[str, dict[str, float]] = {}
    if "litellm" in table:
        for c in args.concurrency:
            key = f"c{c}"
            ratios[key] = {
                "ours_over_litellm_rps": table["ours"][key]["rps"] / table["litellm"][key]["rps"],
                "ours_over_ceiling_rps": table["ours"][key]["rps"] / table["emulator"][key]["rps"],
            }
        print(
            "ours/LiteLLM proxy req/s: "
            + ", ".join(
                f"c={c} {ratios[f'c{c}']['ours_over_litellm_rps']:.2f}x" for c in args.concurrency
            )
        )
    elif args.no_litellm:
        print("LiteLLM proxy: skipped (--no-litellm)")
    else:
        print("LiteLLM is not installed in this environment: measured ours and the ceiling only")
    print("(cpu ms/req: the target server's own CPU per request; ours also spends the emulator's)")
    write_json(
        args.out,
        {
            "machine": info,
            "litellm": litellm_version() if have_litellm else None,
            "settings": {
                "ledger": args.ledger,
                "rounds": args.rounds,
                "requests": args.requests,
                "seconds": args.seconds,
                "concurrency": list(args.concurrency),
            },
            "medians": table,
            "ratios": ratios,
            "runs": {n: {f"c{c}": rs for c, rs in by_c.items()} for n, by_c in runs.items()},
        },
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=list(CONCURRENCY))
    parser.add_argument("--requests", type=int, default=3000, help="per run, at most")
    parser.add_argument("--seconds", type=float, default=8.0, help="per run, at most")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=300, help="untimed requests per target")
    parser.add_argument("--timeout", type=float, default=30.0, help="per request, seconds")
    parser.add_argument(
        "--ledger",
        choices=["sqlite", "postgresql"],
        default="sqlite",
        help="our ledger: a throwaway SQLite file, or a throwaway schema at TEST_POSTGRES_URL",
    )
    parser.add_argument("--no-litellm", action="store_true", help="leave out LiteLLM's proxy")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/gateway_throughput.json"))
    main(parser.parse_args())
