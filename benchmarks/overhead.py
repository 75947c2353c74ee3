"""Routing overhead: our router graph and LiteLLM's Router against a direct httpx call.

Every path talks to one loopback emulator that answers at once, in the same
process and run: a direct ``httpx`` POST (the floor), our router graph
(``graph.ainvoke``: the default route, which sends "Hello!" to the GPU pool and
writes its ledger row, and with ``force_backend="serverless"``, which also
reserves and settles a budget hold), and LiteLLM's ``Router.acompletion`` with
two deployments of one model (``openai/<model>`` at the emulator's
``api_base``). A path's overhead is its p50 (p99) minus the direct call's.

The paths run interleaved in blocks (``--block`` requests of each path in turn,
the order rotating, a short pause between blocks so one path's background work
does not land in another's timings), so machine noise hits them alike. After
warm-up the heap is frozen (``gc.freeze``) so LiteLLM's large import does not
lengthen the collections that run during our requests, or the reverse.

LiteLLM is optional: without it the script measures ours and says so. It runs
with the bundled cost map (``LITELLM_LOCAL_MODEL_COST_MAP=True``), telemetry
and callbacks off, and this process refuses any connection off the loopback.

    .venv-bench/bin/python benchmarks/overhead.py              # ours and LiteLLM
    .venv/bin/python benchmarks/overhead.py --requests 2000    # ours only
    .venv-bench/bin/python benchmarks/overhead.py --prompt long  # a ~4k-token prompt
    .venv-bench/bin/python benchmarks/overhead.py --prompt long --fresh  # never the same text

The router keeps the token counts of long texts it has seen (a chat resends its
history every turn), so a prompt repeated verbatim is counted once. With
``--fresh`` every request of every path ends its last message with its own
number, so no count is ever reused: the worst case for ours.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
from _common import (
    PROMPTS,
    blocked,
    emulator_settings,
    guard_loopback,
    import_litellm,
    litellm_version,
    machine_info,
    print_machine,
    summary,
    write_json,
)

from emulator import EmulatorConfig, serve_emulator
from graphs.router import graph
from state.context import Context, build_services

MODEL = "llama3.1-8b-instruct"
MAX_TOKENS = 1024  # what the router sends by default (DEFAULT_MAX_TOKENS)
LABELS = {
    "direct": "direct httpx POST (floor)",
    "router": "ours: graph.ainvoke (default route)",
    "router_serverless": "ours: graph.ainvoke (serverless + budget)",
    "litellm": "LiteLLM Router.acompletion (2 deployments)",
}


def litellm_router(litellm: Any, url: str) -> Any:
    # Two deployments of one model group; distinct ids, or LiteLLM folds them into one.
    return litellm.Router(
        model_list=[
            {
                "model_name": MODEL,
                "litellm_params": {"model": f"openai/{MODEL}", "api_base": url, "api_key": "bench"},
                "model_info": {"id": f"emulator-{name}"},
            }
            for name in ("a", "b")
        ]
    )


async def settle_background() -> None:
    """Let tasks and threads a path left behind (logging, callbacks) finish untimed."""
    for _ in range(5):
        await asyncio.sleep(0)
    await asyncio.sleep(0.002)


async def measure(
    paths: dict[str, Callable[[], Awaitable[Any]]], requests: int, block: int, warmup: int
) -> dict[str, list[float]]:
    for fn in paths.values():  # connections, caches, the ledger's schema, LiteLLM's lazies
        for _ in range(warmup):
            await fn()
        await settle_background()
    gc.collect()
    gc.freeze()
    timings: dict[str, list[float]] = {name: [] for name in paths}
    names = list(paths)
    rounds = -(-requests // block)
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            fn, times = paths[name], timings[name]
            for _ in range(min(block, requests - len(times))):
                started = time.perf_counter()
                await fn()
                times.append((time.perf_counter() - started) * 1000)
            await settle_background()
    gc.unfreeze()
    return timings


async def main(args: argparse.Namespace) -> None:
    guard_loopback()
    base = PROMPTS[args.prompt]
    sent = 0

    def prompt() -> list[dict[str, Any]]:
        """The messages of the next request: the same ones, or with a unique tail."""
        nonlocal sent
        if not args.fresh:
            return base
        sent += 1
        last = base[-1]
        return [*base[:-1], {**last, "content": f"{last['content']}\n(request {sent})"}]

    litellm = None if args.no_litellm else import_litellm()
    info = machine_info()
    picked: Counter[str] = Counter()
    routes: Counter[str] = Counter()
    async with serve_emulator(EmulatorConfig()) as url:
        with tempfile.TemporaryDirectory() as tmp:
            settings = emulator_settings(url, database_url=f"sqlite:///{tmp}/ledger.db")
            services = await build_services(settings)
            context = Context(services=services)
            payload = orjson.dumps({"model": MODEL, "max_tokens": MAX_TOKENS, "messages": base})
            headers = {"content-type": "application/json"}
            async with httpx.AsyncClient() as client:

                async def direct() -> None:
                    body = payload
                    if args.fresh:
                        body = orjson.dumps(
                            {"model": MODEL, "max_tokens": MAX_TOKENS, "messages": prompt()}
                        )
                    response = await client.post(
                        f"{url}/chat/completions", content=body, headers=headers
                    )
                    response.raise_for_status()
                    orjson.loads(response.content)

                async def routed() -> None:
                    result = await graph.ainvoke({"messages": prompt()}, context=context)
                    routes[f"default -> {result['routing']['backend']}"] += 1

                async def routed_serverless() -> None:
                    result = await graph.ainvoke(
                        {"messages": prompt(), "force_backend": "serverless"}, context=context
                    )
                    routes[f"forced -> {result['routing']['backend']}"] += 1

                paths: dict[str, Callable[[], Awaitable[Any]]] = {
                    "direct": direct,
                    "router": routed,
                }
                if not args.skip_serverless:
                    paths["router_serverless"] = routed_serverless
                if litellm is not None:
                    router = litellm_router(litellm, url)

                    async def via_litellm() -> None:
                        response = await router.acompletion(
                            model=MODEL, messages=prompt(), max_tokens=MAX_TOKENS
                        )
                        picked[str(response._hidden_params.get("model_id"))] += 1

                    paths["litellm"] = via_litellm
                timings = await measure(paths, args.requests, args.block, args.warmup)
            await services.aclose()

    figures: dict[str, Any] = {name: summary(values) for name, values in timings.items()}
    floor = figures["direct"]
    for name, f in figures.items():
        if name != "direct":
            f["overhead_p50_ms"] = f["p50_ms"] - floor["p50_ms"]
            f["overhead_p99_ms"] = f["p99_ms"] - floor["p99_ms"]
    ratio = None
    if "litellm" in figures:
        ours, theirs = figures["router"], figures["litellm"]
        ratio = {
            "p50": ours["overhead_p50_ms"] / theirs["overhead_p50_ms"],
            "p99": ours["overhead_p99_ms"] / theirs["overhead_p99_ms"],
        }

    print_machine(info)
    print(
        f"{args.requests} requests per path, interleaved in blocks of {args.block}; "
        f"prompt {args.prompt!r}{' (fresh text every request)' if args.fresh else ''}; "
        "one in-process loopback emulator answering at once"
    )
    print(f"{'path':<46}{'p50 ms':>9}{'p99 ms':>9}{'mean ms':>9}{'+p50 ms':>10}{'+p99 ms':>10}")
    for name, f in figures.items():
        extra = (
            f"{f['overhead_p50_ms']:>10.3f}{f['overhead_p99_ms']:>10.3f}"
            if name != "direct"
            else f"{'-':>10}{'-':>10}"
        )
        print(
            f"{LABELS[name]:<46}{f['p50_ms']:>9.3f}{f['p99_ms']:>9.3f}{f['mean_ms']:>9.3f}{extra}"
        )
    print("(+p50/+p99: the path's p50/p99 minus the direct call's: what routing adds)")
    if ratio is not None:
        print(
            f"ours/LiteLLM overhead: p50 {ratio['p50']:.2f}x, p99 {ratio['p99']:.2f}x "
            f"(LiteLLM {litellm_version()}; deployments used: {dict(picked)})"
        )
    elif args.no_litellm:
        print("LiteLLM: skipped (--no-litellm)")
    else:
        print(
            "LiteLLM is not installed in this environment: measured ours only "
            "(install the bench extra: make bench)"
        )
    print(f"our routes: {dict(routes)}")
    if blocked:
        print(f"blocked network attempts: {sorted(set(blocked))}")
    write_json(
        args.out,
        {
            "requests_per_path": args.requests,
            "prompt": args.prompt,
            "fresh": args.fresh,
            "block": args.block,
            "machine": info,
            "litellm": litellm_version() if litellm is not None else None,
            "paths": figures,
            "ours_over_litellm_overhead": ratio,
            "litellm_deployments_used": dict(picked),
            "our_routes": dict(routes),
            "blocked_network_attempts": sorted(set(blocked)),
        },
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="timed requests per path")
    parser.add_argument("--block", type=int, default=10, help="requests per path per turn")
    parser.add_argument("--warmup", type=int, default=100, help="untimed requests per path")
    parser.add_argument(
        "--prompt",
        choices=list(PROMPTS),
        default="hello",
        help='"Hello!" (default), a ~4k-token prompt, or ~3k tokens of plain prose',
    )
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="end every request's last message with its own number (no count is reused)",
    )
    parser.add_argument("--no-litellm", action="store_true", help="measure ours only")
    parser.add_argument(
        "--skip-serverless", action="store_true", help="leave out the forced-serverless path"
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/overhead.json"))
    asyncio.run(main(parser.parse_args()))
