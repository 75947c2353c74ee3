"""A mixed load through the router: the pool-first policy against the old 80/20 split.

Three emulators run as processes of their own, standing in for the backends:
one serverless API (slower first token, no concurrency limit) and two GPU
endpoints (faster tokens, at most ``--gpu-slots`` requests generating at once
each; the rest queue, as on a vLLM server). The same workload is replayed
through the router graph (in this process, with a ledger of its own) once per
policy, on the same emulators:

- ``pool_first`` (ours): the router decides (``choose_backend``): the GPU pool
  while it has a free slot, serverless when it is full (up to
  ``SERVERLESS_RATIO`` of the traffic) or when only serverless has a model
  good enough;
- ``old_split`` (the baseline, as :mod:`planner.policies` defines it): a
  request whose complexity level is ``high`` goes to serverless; the rest is
  split at random, ``SERVERLESS_RATIO`` (80 %) to serverless and the remainder
  to the GPU pool, whatever its load (``force_backend``).

The workload: about 80 % short simple questions and 20 % long complex
requests, arriving as a Poisson process at ``--rate`` requests per second, with
a burst of ``--burst`` requests at once every ``--burst-every`` seconds. Every
prompt is unique (no response-cache hits). Latency is counted from a request's
scheduled arrival to its answer.

It prints, per policy, the share of requests answered on the GPU pool, the
serverless spend, p50 and p95 latency, and each figure over the baseline's.

    .venv/bin/python benchmarks/mixed_load.py --requests 400 --rate 20
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import (
    BENCH_DIR,
    LONG_PROMPT,
    free_port,
    guard_loopback,
    machine_info,
    percentile,
    print_machine,
    server,
    venv_script,
    write_json,
)

POLICIES = ("old_split", "pool_first")  # the baseline first
SHORT_TOPICS = ("the capital of France", "a haiku about rain", "the boiling point of water")


@dataclass(frozen=True, slots=True)
class Item:
    """One request of the workload: when it arrives and what it asks."""

    at: float
    kind: str  # short | long
    messages: list[dict[str, str]]
    max_tokens: int


def workload(args: argparse.Namespace) -> list[Item]:
    """Return the requests in arrival order (the same for every policy: seeded)."""
    rng = random.Random(args.seed)
    times: list[float] = []
    now = 0.0
    while len(times) < args.requests:
        now += rng.expovariate(args.rate)
        times.append(now)
    bursts = int(times[-1] // args.burst_every) if args.burst_every > 0 else 0
    for b in range(1, bursts + 1):
        times.extend([b * args.burst_every] * args.burst)
    times.sort()
    items = []
    for n, at in enumerate(times):
        if rng.random() < args.long_share:
            long_text = LONG_PROMPT[1]["content"] + f"\n(request {n})"
            messages = [LONG_PROMPT[0], {"role": "user", "content": long_text}]
            items.append(Item(at, "long", messages, 512))
        else:
            topic = rng.choice(SHORT_TOPICS)
            messages = [{"role": "user", "content": f"In one line: {topic}? (request {n})"}]
            items.append(Item(at, "short", messages, 64))
    return items


def old_split_backend(item: Item, rng: random.Random, ratio: float) -> str:
    """Return the backend the old policy sends ``item`` to: high complexity or 80 % serverless."""
    from backends.tokens import count_message_tokens
    from nodes.analyze_complexity import complexity_level, complexity_score, score_features

    prompt = count_message_tokens(item.messages)
    level = complexity_level(
        complexity_score(score_features(list(item.messages), prompt, item.max_tokens))
    )
    return "serverless" if level == "high" or rng.random() < ratio else "gpu"


@contextlib.contextmanager
def emulators(args: argparse.Namespace, work: Path) -> Iterator[tuple[str, list[str]]]:
    """Start the serverless emulator and the GPU emulators; yield their base URLs."""
    from backends.catalog import get_catalog

    catalog = get_catalog()
    with contextlib.ExitStack() as stack:
        urls = []
        for name in ("serverless", *(f"gpu-{i}" for i in range(args.gpus))):
            port = free_port()
            on_gpu = name != "serverless"
            models = [
                m.served_name("gpu" if on_gpu else "serverless")
                for m in catalog.offered("gpu" if on_gpu else "serverless")
            ]
            command = [
                venv_script("hybrid-router"),
                "emulate",
                "--port",
                str(port),
                "--name",
                name,
                "--models",
                ",".join(models),
                "--ttft-ms",
                str(args.gpu_ttft_ms if on_gpu else args.serverless_ttft_ms),
                "--tpot-ms",
                str(args.gpu_tpot_ms if on_gpu else args.serverless_tpot_ms),
                "--max-concurrency",
                str(args.gpu_slots if on_gpu else 0),
            ]
            ready = f"http://127.0.0.1:{port}/health"
            stack.enter_context(
                server(name, command, ready, env={}, cwd=work, log=work / f"{name}.log")
            )
            urls.append(f"http://127.0.0.1:{port}/v1")
        yield urls[0], urls[1:]


async def replay(
    policy: str, items: list[Item], args: argparse.Namespace, urls: tuple[str, list[str]], db: Path
) -> dict[str, Any]:
    """Send the workload through the router under ``policy``; return its figures."""
    from pydantic import SecretStr

    from graphs.router import graph
    from state.context import Context, build_services
    from state.schemas import RouterInput
    from state.settings import Settings

    serverless_url, gpu_urls = urls
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        lambda_api_key=SecretStr("bench"),
        lambda_api_base=serverless_url,
        gpu_endpoints=gpu_urls,
        gpu_concurrency_per_endpoint=args.gpu_slots,
        gpu_health_interval_s=1.0,
        serverless_ratio=args.ratio,
        response_cache_ttl_s=0,
        lambda_daily_budget=1e6,
        lambda_monthly_budget=1e6,
        database_url=f"sqlite:///{db}",
        database_schema=None,
    )
    services = await build_services(settings)
    context = Context(services=services)
    rng = random.Random(args.seed + 1)
    forced = [
        old_split_backend(item, rng, args.ratio) if policy == "old_split" else None
        for item in items
    ]
    await services.gpu_pool.ensure_probed()
    results: list[dict[str, Any]] = []

    async def one(item: Item, force: str | None, start: float) -> None:
        await asyncio.sleep(max(0.0, start + item.at - time.perf_counter()))
        graph_input: RouterInput = {
            "messages": item.messages,  # type: ignore[typeddict-item]
            "max_tokens": item.max_tokens,
        }
        if force is not None:
            graph_input["force_backend"] = force  # type: ignore[typeddict-item]
        try:
            out = await graph.ainvoke(graph_input, context=context)
        except Exception as exc:
            results.append({"kind": item.kind, "error": type(exc).__name__})
            return
        results.append(
            {
                "kind": item.kind,
                "backend": out["routing"]["backend"],
                "cost_usd": float(out.get("cost_usd") or 0.0),
                "latency_ms": (time.perf_counter() - start - item.at) * 1000,
            }
        )

    start = time.perf_counter() + 0.2
    try:
        await asyncio.gather(*(one(i, f, start) for i, f in zip(items, forced, strict=True)))
    finally:
        await services.aclose()
    answered = [r for r in results if "error" not in r]
    latencies = [r["latency_ms"] for r in answered]
    on_gpu = sum(1 for r in answered if r["backend"] == "gpu")
    figures: dict[str, Any] = {
        "requests": len(results),
        "errors": len(results) - len(answered),
        "gpu_share": on_gpu / len(answered) if answered else float("nan"),
        "serverless_usd": sum(r["cost_usd"] for r in answered if r["backend"] == "serverless"),
        "p50_ms": percentile(latencies, 0.50),
        "p95_ms": percentile(latencies, 0.95),
    }
    for kind in ("short", "long"):
        mine = [r["latency_ms"] for r in answered if r["kind"] == kind]
        figures[f"{kind}_p95_ms"] = percentile(mine, 0.95)
    return figures


def main() -> None:
    """Parse the options, start the emulators, replay the load per policy and print."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=400, help="Poisson arrivals (plus bursts)")
    parser.add_argument("--rate", type=float, default=20.0, help="mean arrivals per second")
    parser.add_argument("--burst", type=int, default=20, help="requests in each burst")
    parser.add_argument("--burst-every", type=float, default=5.0, help="seconds between bursts")
    parser.add_argument("--long-share", type=float, default=0.2, help="share of long requests")
    parser.add_argument("--ratio", type=float, default=0.8, help="SERVERLESS_RATIO")
    parser.add_argument("--gpus", type=int, default=2, help="GPU endpoints")
    parser.add_argument("--gpu-slots", type=int, default=8, help="concurrency per GPU endpoint")
    parser.add_argument("--gpu-ttft-ms", type=float, default=60.0)
    parser.add_argument("--gpu-tpot-ms", type=float, default=8.0)
    parser.add_argument("--serverless-ttft-ms", type=float, default=400.0)
    parser.add_argument("--serverless-tpot-ms", type=float, default=8.0)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    guard_loopback()
    info = machine_info()
    print_machine(info)
    items = workload(args)
    longs = sum(1 for i in items if i.kind == "long")
    print(
        f"workload: {len(items)} requests over {items[-1].at:.1f} s ({len(items) - longs} short, "
        f"{longs} long; {args.rate:g}/s Poisson plus {args.burst} at once every "
        f"{args.burst_every:g} s); {args.gpus} GPU endpoints x {args.gpu_slots} slots"
    )
    figures: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        with emulators(args, work) as urls:
            for policy in POLICIES:
                figures[policy] = asyncio.run(
                    replay(policy, items, args, urls, work / f"{policy}.db")
                )
    base = figures[POLICIES[0]]
    print(
        f"\n{'policy':<12} {'errors':>6} {'GPU share':>9} {'serverless $':>12} "
        f"{'p50 ms':>8} {'p95 ms':>8} {'short p95':>9} {'long p95':>9}"
    )
    for policy, f in figures.items():
        print(
            f"{policy:<12} {f['errors']:>6} {f['gpu_share']:>9.1%} {f['serverless_usd']:>12.4f} "
            f"{f['p50_ms']:>8.0f} {f['p95_ms']:>8.0f} {f['short_p95_ms']:>9.0f} "
            f"{f['long_p95_ms']:>9.0f}"
        )
    ours = figures["pool_first"]
    spend = ours["serverless_usd"] / base["serverless_usd"] if base["serverless_usd"] else 0.0
    print(
        f"\npool_first over old_split: GPU share x{ours['gpu_share'] / base['gpu_share']:.2f}, "
        f"serverless spend x{spend:.2f}, p50 x{ours['p50_ms'] / base['p50_ms']:.2f}, "
        f"p95 x{ours['p95_ms'] / base['p95_ms']:.2f}"
    )
    write_json(BENCH_DIR / "mixed_load.json", {"machine": info, "args": vars(args), **figures})


if __name__ == "__main__":
    main()
