"""Streaming through the router: the gateway's path against LangGraph's messages mode.

Every path streams the same answer (``--tokens`` output tokens) from one
in-process loopback emulator that answers at once, interleaved in blocks:

- a direct streaming ``httpx`` POST (the floor);
- ``graph.astream(..., stream_mode="custom")`` with ``stream: true``: the
  token deltas the OpenAI-compatible gateway turns into SSE chunks;
- ``graph.astream(..., stream_mode="messages")``: the message chunks LangGraph
  Studio and langgraph-sdk clients see, delivered through LangChain's
  chat-model callbacks (one ``AIMessageChunk`` per delta).

It prints the p50/p99 time to the first token and to the end of the stream,
what each path adds to the direct stream, and the messages mode's cost per
token over the custom mode's.

    .venv/bin/python benchmarks/streaming.py --requests 500 --tokens 64
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import orjson
from _common import (
    HELLO,
    emulator_settings,
    guard_loopback,
    machine_info,
    percentile,
    print_machine,
    write_json,
)

from emulator import EmulatorConfig, serve_emulator
from graphs.router import graph
from state.context import Context, build_services

Timing = tuple[float, float]  # seconds to the first token, to the end
Path_ = Callable[[], Awaitable[Timing]]


def direct_stream(client: httpx.AsyncClient, url: str, tokens: int) -> Path_:
    body = orjson.dumps(
        {
            "model": "llama3.1-8b-instruct",
            "messages": HELLO,
            "max_tokens": tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    )

    async def run() -> Timing:
        started = time.perf_counter()
        first = 0.0
        async with client.stream(
            "POST",
            f"{url}/chat/completions",
            content=body,
            headers={"content-type": "application/json"},
        ) as response:
            async for line in response.aiter_lines():
                if line.startswith("data:") and '"content"' in line and not first:
                    first = time.perf_counter() - started
        return first, time.perf_counter() - started

    return run


def graph_stream(context: Context, mode: str, tokens: int) -> Path_:
    request = {"messages": HELLO, "max_tokens": tokens, "stream": mode == "custom"}

    async def run() -> Timing:
        started = time.perf_counter()
        first = 0.0
        chunks = 0
        async for _ in graph.astream(request, context=context, stream_mode=mode):  # type: ignore[arg-type]
            chunks += 1
            if not first:
                first = time.perf_counter() - started
        assert chunks > 1, f"{mode} mode streamed {chunks} chunk(s)"
        return first, time.perf_counter() - started

    return run


async def main(args: argparse.Namespace) -> None:
    guard_loopback()
    results: dict[str, object] = {"machine": machine_info(), "requests": args.requests}
    async with serve_emulator(EmulatorConfig(ttft_ms=0, tpot_ms=0)) as url:
        with tempfile.TemporaryDirectory() as tmp:
            services = await build_services(
                emulator_settings(url, database_url=f"sqlite:///{tmp}/ledger.db")
            )
            context = Context(services=services)
            async with httpx.AsyncClient() as client:
                paths = {
                    "direct httpx stream (floor)": direct_stream(client, url, args.tokens),
                    'graph.astream, stream_mode="custom" (gateway)': graph_stream(
                        context, "custom", args.tokens
                    ),
                    'graph.astream, stream_mode="messages" (Studio)': graph_stream(
                        context, "messages", args.tokens
                    ),
                }
                for run in paths.values():
                    for _ in range(args.warmup):
                        await run()
                gc.collect()
                gc.freeze()
                timings: dict[str, list[Timing]] = {name: [] for name in paths}
                names = list(paths)
                for block in range(0, args.requests, args.block):
                    shift = (block // args.block) % len(names)
                    for name in names[shift:] + names[:shift]:
                        for _ in range(args.block):
                            timings[name].append(await paths[name]())
                        await asyncio.sleep(0.005)
            await services.aclose()
    print_machine(results["machine"])  # type: ignore[arg-type]
    print(f"{args.requests} streams per path, {args.tokens} output tokens each, interleaved")
    print(f"{'path':<50}{'ttft p50':>10}{'end p50':>10}{'end p99':>10}{'+end p50':>10}")
    floor = percentile([t[1] for t in timings[names[0]]], 0.5)
    rows = {}
    for name in names:
        ttft = [t[0] * 1000 for t in timings[name]]
        end = [t[1] * 1000 for t in timings[name]]
        row = {
            "ttft_p50_ms": percentile(ttft, 0.5),
            "end_p50_ms": percentile(end, 0.5),
            "end_p99_ms": percentile(end, 0.99),
            "added_p50_ms": percentile(end, 0.5) - floor * 1000,
        }
        rows[name] = row
        print(
            f"{name:<50}{row['ttft_p50_ms']:>10.2f}{row['end_p50_ms']:>10.2f}"
            f"{row['end_p99_ms']:>10.2f}{row['added_p50_ms']:>10.2f}"
        )
    custom, messages = rows[names[1]], rows[names[2]]
    per_token = (messages["end_p50_ms"] - custom["end_p50_ms"]) / args.tokens * 1000
    print(
        f"messages mode over custom mode: {messages['end_p50_ms'] - custom['end_p50_ms']:+.2f} ms "
        f"per stream, {per_token:+.1f} us per token"
    )
    results["paths"] = rows
    results["messages_over_custom_us_per_token"] = per_token
    write_json(args.out, results)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--block", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/streaming.json"))
    asyncio.run(main(parser.parse_args()))
