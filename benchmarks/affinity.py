"""What prefix-cache affinity costs on the GPU route, against the same route without it.

Two tables, in one process, interleaved call by call so both sides see the
same machine:

1. The pool's work alone (no I/O): admitting and releasing a slot by load
   (before), against computing the conversation's prefix key, admitting with
   it, releasing, and remembering the answered conversation for its next turn
   (after). For a first turn ("Hello!": no prefix), a third turn of short
   messages, and a tenth turn of a long conversation (~4k tokens a turn).
2. One whole request on the GPU route (``graph.ainvoke``, SQLite ledger, an
   in-process loopback emulator as the one GPU endpoint) of the third and the
   tenth turn, with affinity, and with its key functions and its memory
   switched off (the router as it was before).

Times are per call, p50 (and mean) over ``--calls`` calls after a warm-up.

    .venv/bin/python benchmarks/affinity.py --calls 2000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from _common import (
    LONG_PROMPT,
    emulator_settings,
    guard_loopback,
    interleaved,
    machine_info,
    print_machine,
    stats,
    write_json,
)

import nodes.choose_backend
import nodes.generate_gpu
from backends.gpu_pool import GpuPool
from backends.gpu_pool.affinity import affinity_keys, conversation_key, prefix_key
from emulator import EmulatorConfig, serve_emulator
from graphs.router import graph
from state.context import Context, build_services

MODEL = "llama3.1-8b-instruct"
ANSWER = {"role": "assistant", "content": "Here is a short answer to that question."}


def conversation(turns: int, text: str) -> list[dict[str, Any]]:
    """Return a conversation's ``turns``-th request: earlier turns answered, a new user turn."""
    messages: list[dict[str, Any]] = []
    for number in range(turns - 1):
        messages += [{"role": "user", "content": f"{number}: {text}"}, ANSWER]
    return [*messages, {"role": "user", "content": text}]


CONVERSATIONS = {
    "first turn (Hello!)": [{"role": "user", "content": "Hello!"}],
    "3rd turn, short messages": conversation(3, "Tell me more about that."),
    "10th turn, ~4k tokens a turn": conversation(10, LONG_PROMPT[1]["content"] * 4),
}


def pool_alone(calls: int, warmup: int) -> dict[str, dict[str, dict[str, float]]]:
    """Table 1: the pool's choice with and without affinity, no I/O."""
    pool = GpuPool(httpx.AsyncClient(), ["http://gpu-1:8000/v1", "http://gpu-2:8000/v1"])
    for endpoint in pool.endpoints:
        endpoint.healthy = True
    results = {}
    for name, messages in CONVERSATIONS.items():
        # the earlier turns were answered on the second endpoint
        cut = len(messages) - 1
        if cut:
            pool.remember(
                conversation_key(MODEL, messages[: cut - 1], messages[cut - 1]), pool.endpoints[1]
            )

        async def before(messages: list[dict[str, Any]] = messages) -> None:
            slot = pool.admit(MODEL, None)
            assert slot is not None
            pool.release(slot)

        async def after(messages: list[dict[str, Any]] = messages) -> None:
            # choose_backend's key and admission, then generate_gpu's keys and memory
            slot = pool.admit(MODEL, None, prefix=prefix_key(MODEL, messages))
            assert slot is not None
            _, next_key = affinity_keys(MODEL, messages)
            pool.release(slot)
            pool.remember(next_key(ANSWER), slot.endpoint)

        runs = asyncio.run(interleaved({"before": before, "after": after}, calls, warmup))
        results[name] = {side: stats(values) for side, values in runs.items()}
    return results


@contextlib.contextmanager
def affinity_off() -> Iterator[None]:
    """Switch the affinity code off: no prefix key, nothing remembered (the router before)."""
    saved_remember = GpuPool.remember
    nodes.choose_backend.prefix_key = lambda *a: None
    nodes.generate_gpu.affinity_keys = lambda *a: (None, lambda answer: "")
    GpuPool.remember = lambda *a: None  # type: ignore[method-assign]
    try:
        yield
    finally:
        nodes.choose_backend.prefix_key = prefix_key
        nodes.generate_gpu.affinity_keys = affinity_keys
        GpuPool.remember = saved_remember  # type: ignore[method-assign]


async def whole_request(url: str, tmp: str, calls: int, warmup: int) -> dict[str, Any]:
    """Table 2: graph.ainvoke on the GPU route, with and without affinity."""
    # serverless allowed but (almost) never an overflow: the decision admits on the pool
    settings = emulator_settings(
        url, database_url=f"sqlite:///{tmp}/ledger.db", serverless_ratio=1e-9
    )
    services = await build_services(settings)
    context = Context(services=services)
    results = {}
    try:
        await services.gpu_pool.probe()
        for name, messages in list(CONVERSATIONS.items())[1:]:

            async def on(messages: list[dict[str, Any]] = messages) -> None:
                result = await graph.ainvoke(
                    {"messages": messages, "max_tokens": 16}, context=context
                )
                assert result["routing"]["backend"] == "gpu", result["routing"]

            async def off(messages: list[dict[str, Any]] = messages) -> None:
                with affinity_off():
                    await on(messages)

            runs = await interleaved({"before": off, "after": on}, calls, warmup)
            results[name] = {side: stats(values) for side, values in runs.items()}
    finally:
        await services.aclose()
    return results


def report(results: dict[str, Any]) -> None:
    print_machine(results["machine"])
    print(f"p50 (mean) per call over {results['calls']} calls, microseconds")
    for title, key in (
        ("the pool's choice alone (no I/O)", "pool"),
        ("one whole request, GPU route (graph.ainvoke)", "whole_request"),
    ):
        print()
        print(f"{title:<46}{'before p50':>12}{'after p50':>12}{'added':>10}{'ratio':>8}")
        for name, f in results[key].items():
            before, after = f["before"]["p50_us"], f["after"]["p50_us"]
            print(
                f"{name:<46}{before:>12.1f}{after:>12.1f}{after - before:>10.1f}"
                f"{after / before:>8.3f}"
            )


async def served(args: argparse.Namespace, results: dict[str, Any]) -> None:
    async with serve_emulator(EmulatorConfig(ttft_ms=0, tpot_ms=0)) as url:
        with tempfile.TemporaryDirectory() as tmp:
            results["whole_request"] = await whole_request(url, tmp, args.calls // 4, args.warmup)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/affinity.json"))
    args = parser.parse_args()
    guard_loopback()
    results: dict[str, Any] = {"machine": machine_info(), "calls": args.calls}
    gc.collect()
    gc.freeze()
    results["pool"] = pool_alone(args.calls, args.warmup)
    asyncio.run(served(args, results))
    report(results)
    write_json(args.out, results)


if __name__ == "__main__":
    main()
