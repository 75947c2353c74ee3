"""Routing overhead: the router graph against a direct httpx call to the same emulator.

Both paths talk to one loopback emulator that answers at once, in the same
process and run, so the difference is what routing adds. Prints p50/p99 per
request for each path and the overhead; writes the figures to JSON.

    .venv/bin/python benchmarks/overhead.py --requests 2000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import orjson

from backends.emulator import EmulatorConfig, serve_emulator
from graphs.router import graph
from state.context import Context, build_services
from state.settings import Settings

BODY = {"messages": [{"role": "user", "content": "Hello!"}]}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main(requests: int, out: Path) -> None:
    async with serve_emulator(EmulatorConfig()) as url:
        with tempfile.TemporaryDirectory() as tmp:
            settings = Settings(
                _env_file=None,  # type: ignore[call-arg]
                lambda_api_key="bench",
                lambda_api_base=url,
                gpu_endpoints=[url],
                database_url=f"sqlite:///{tmp}/ledger.db",
            )
            services = await build_services(settings)
            context = Context(services=services)
            payload = orjson.dumps({"model": "llama3.1-8b-instruct", "max_tokens": 1024, **BODY})
            async with httpx.AsyncClient() as client:

                async def direct() -> None:
                    response = await client.post(
                        f"{url}/chat/completions",
                        content=payload,
                        headers={"content-type": "application/json"},
                    )
                    response.raise_for_status()
                    orjson.loads(response.content)

                async def routed() -> None:
                    await graph.ainvoke(BODY, context=context)

                for fn in (direct, routed):  # warm up connections, caches, the ledger
                    for _ in range(50):
                        await fn()
                timings: dict[str, list[float]] = {"direct": [], "router": []}
                # interleave the two paths so machine noise hits both alike
                for _ in range(requests):
                    for name, fn in (("direct", direct), ("router", routed)):
                        started = time.perf_counter()
                        await fn()
                        timings[name].append((time.perf_counter() - started) * 1000)
            await services.aclose()

    figures = {
        name: {
            "p50_ms": percentile(values, 0.50),
            "p99_ms": percentile(values, 0.99),
            "mean_ms": statistics.fmean(values),
        }
        for name, values in timings.items()
    }
    figures["overhead"] = {
        "p50_ms": figures["router"]["p50_ms"] - figures["direct"]["p50_ms"],
        "p99_ms": figures["router"]["p99_ms"] - figures["direct"]["p99_ms"],
        "ratio_p50": figures["router"]["p50_ms"] / figures["direct"]["p50_ms"],
    }
    print(f"{requests} requests per path, emulator answering at once (loopback)")
    print(f"{'path':<10}{'p50 ms':>10}{'p99 ms':>10}{'mean ms':>10}")
    for name in ("direct", "router"):
        f = figures[name]
        print(f"{name:<10}{f['p50_ms']:>10.3f}{f['p99_ms']:>10.3f}{f['mean_ms']:>10.3f}")
    o = figures["overhead"]
    print(
        f"routing overhead: p50 {o['p50_ms']:.3f} ms, p99 {o['p99_ms']:.3f} ms "
        f"(router/direct p50 = {o['ratio_p50']:.2f}x)"
    )
    out.write_text(json.dumps({"requests": requests, **figures}, indent=2))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/overhead.json"))
    args = parser.parse_args()
    asyncio.run(main(args.requests, args.out))
