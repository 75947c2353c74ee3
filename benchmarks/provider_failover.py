"""What a failed serverless provider or GPU endpoint costs a request, against a direct call.

In one process, against in-process loopback emulators answering at once, and
a SQLite ledger in a temporary directory, interleaved call by call:

- ``direct``: one httpx POST of the same chat body to a healthy emulator (the
  baseline every ratio is against);
- ``serverless, first provider up``: ``graph.ainvoke`` with two providers
  configured, the first answering;
- ``serverless, first provider 503``: the first answers 503, the next
  provider (another price: the hold moves) serves;
- ``gpu, first endpoint up``: two GPU endpoints, the first answering;
- ``gpu, first endpoint 503``: the first answers 503, the other endpoint serves.

Times are per request, p50 (and mean) over ``--calls`` calls after a warm-up;
the figures also go to JSON.

    .venv/bin/python benchmarks/provider_failover.py --calls 300
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
from _common import machine_info, print_machine, summary, write_json

from emulator import EmulatorConfig, serve_emulator
from graphs.router import graph
from state.context import Context, build_services
from state.settings import Settings

MODEL = "llama3.1-8b-instruct"
MESSAGES = [{"role": "user", "content": "Hello!"}]


def provider(name: str, url: str, price: float) -> dict[str, Any]:
    return {
        "name": name,
        "base_url": url,
        "api_key": "bench",
        "models": {
            MODEL: {"name": MODEL, "input_usd_per_mtok": price, "output_usd_per_mtok": price}
        },
    }


async def main(calls: int, out: Path | None) -> None:
    """Run the five cases interleaved and print their p50 and ratio to the direct call."""
    async with contextlib.AsyncExitStack() as stack:

        async def emulator(name: str, **config: Any) -> str:
            return await stack.enter_async_context(
                serve_emulator(EmulatorConfig(name=name, models=[MODEL], **config))
            )

        good = await emulator("good")
        good_b = await emulator("good_b")
        failing = await emulator("failing", fail_rate=1.0, fail_status=503)
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))

        async def context(name: str, **values: Any) -> Context:
            settings = Settings(
                _env_file=None,  # type: ignore[call-arg]
                database_url=f"sqlite:///{tmp}/{name}.db",
                gpu_health_interval_s=3600,
                gpu_cooldown_s=0,  # the failing endpoint stays first in line
                lambda_daily_budget=1e9,
                lambda_monthly_budget=1e9,
                **values,
            )
            services = await build_services(settings)
            stack.push_async_callback(services.aclose)
            return Context(services=services)

        serverless_up = await context(
            "sl_up", serverless_providers=[provider("a", good, 1), provider("b", good_b, 2)]
        )
        serverless_failover = await context(
            "sl_fail", serverless_providers=[provider("a", failing, 1), provider("b", good, 2)]
        )
        gpu_up = await context("gpu_up", gpu_endpoints=[good, good_b])
        gpu_failover = await context("gpu_fail", gpu_endpoints=[failing, good])
        http = await stack.enter_async_context(httpx.AsyncClient())
        body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 16}

        async def direct() -> None:
            (await http.post(f"{good}/chat/completions", json=body)).raise_for_status()

        def routed(ctx: Context, backend: str, attempts: int) -> Callable[[], Awaitable[None]]:
            async def run() -> None:
                pool = ctx.services.gpu_pool if ctx.services is not None else None
                if pool:
                    # forget the last failure, so the failing endpoint is first in line again
                    # (its circuit breaker would rightly send traffic elsewhere)
                    pool.mark_success(pool.endpoints[0])
                result = await graph.ainvoke(
                    {"messages": MESSAGES, "max_tokens": 16, "force_backend": backend},
                    context=ctx,
                )
                assert len(result["routing"]["attempts"]) == attempts, result["routing"]

            return run

        cases: dict[str, Callable[[], Awaitable[None]]] = {
            "direct httpx POST": direct,
            "serverless, first provider up": routed(serverless_up, "serverless", 1),
            "serverless, first provider 503": routed(serverless_failover, "serverless", 2),
            "gpu, first endpoint up": routed(gpu_up, "gpu", 1),
            "gpu, first endpoint 503": routed(gpu_failover, "gpu", 2),
        }
        times: dict[str, list[float]] = {name: [] for name in cases}
        for i in range(calls + 20):
            for name, case in cases.items():
                started = time.perf_counter()
                await case()
                if i >= 20:  # warm-up
                    times[name].append((time.perf_counter() - started) * 1000)

    info = machine_info()
    print_machine(info)
    base = summary(times["direct httpx POST"])["p50_ms"]
    print(f"{'case':34} {'p50 ms':>8} {'mean ms':>8} {'x direct':>9}")
    results = {}
    for name, values in times.items():
        stats = summary(values)
        results[name] = {**stats, "ratio_to_direct": stats["p50_ms"] / base}
        p50, mean = stats["p50_ms"], stats["mean_ms"]
        print(f"{name:34} {p50:8.2f} {mean:8.2f} {p50 / base:9.2f}")
    if out is not None:
        write_json(out, {"machine": info, "calls": calls, "results": results})
    else:
        print(json.dumps({k: round(v["ratio_to_direct"], 2) for k, v in results.items()}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    asyncio.run(main(args.calls, args.out))
