"""Per-step costs of one routed request, and how much of the routing overhead is LangGraph.

Four tables, all against an in-process loopback emulator answering at once:

1. Our steps, each node called as a plain function (no LangGraph) with the state
   it sees in a real run: complexity analysis (for "Hello!", a ~450-token prompt
   and a ~4k-token prompt, and ~3k tokens of prose that no pattern matches), model
   selection, the budget check and backend choice on the default GPU route, and
   the GPU call minus a direct httpx POST of the same body; plus a prototype of
   the complexity features with bounded work (match counts capped, at most 8 KB
   scanned), to show what it would save on long prompts.
2. The ledger, on SQLite (a file) and PostgreSQL (a throwaway schema, as
   ``budget_ops.py`` does): the ledger row of a GPU request (``track_usage``), a
   budget reservation (global day + month windows) and its settlement with the
   ledger row; and ledger rows from 16 concurrent callers on SQLite, with the
   router's pooled engine and with one connection (the wait for SQLite's single
   writer, which makes the gateway's latency tail); and a PostgreSQL ledger row
   with and without the engine's ``pool_pre_ping`` (a round trip per transaction).
3. LangGraph's own cost: a graph of the router's shape (same state schemas,
   context, conditional edge, retry policy and error handlers) whose nodes do
   nothing, and chains of 1, 2, 4 and 8 no-op nodes, fitted to a cost per invoke
   plus a cost per node.
4. One whole request, interleaved: a direct httpx POST, our nodes called in
   sequence without LangGraph, and ``graph.ainvoke``; the differences split the
   routing overhead into our work and LangGraph's. Two prototypes (built here,
   the router itself unchanged) show what fewer graph steps would save: the four
   decision steps as one ``plan`` node (3 steps: plan, generate, track, with the
   same retry policy and fallback handlers), and the whole route as one node.

Times are per call, p50 (and mean) over ``--calls`` calls after a warm-up.

    .venv/bin/python benchmarks/step_costs.py --calls 2000
    TEST_POSTGRES_URL=postgresql://postgres@127.0.0.1:5432/test  (the default)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import itertools
import math
import operator
import os
import re
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal, TypedDict

import httpx
import orjson
import psycopg
from _common import (
    HELLO,
    LONG_PROMPT,
    PROSE_PROMPT,
    VERY_LONG_PROMPT,
    emulator_settings,
    guard_loopback,
    machine_info,
    percentile,
    print_machine,
    write_json,
)
from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import RetryPolicy
from sqlalchemy import event
from sqlalchemy.ext.asyncio import create_async_engine

from backends.emulator import EmulatorConfig, serve_emulator
from backends.tokens import message_text
from graphs.router import graph, route_to_backend
from nodes import analyze_complexity as ac
from nodes.analyze_complexity import analyze_complexity, complexity_score, score_features
from nodes.check_budget import check_budget
from nodes.choose_backend import choose_backend
from nodes.fallback import fall_back_from_gpu, fall_back_from_serverless
from nodes.generate_gpu import generate_gpu
from nodes.generate_serverless import generate_serverless
from nodes.generation import GENERATE_RETRY
from nodes.select_model import select_model
from nodes.track_usage import track_usage
from state.budgets import Held
from state.context import Context, Services, build_services
from state.ledger import Ledger, UsageRecord, _sqlite_pragmas, build_engine
from state.schemas import RouterInput, RouterOutput, RouterState
from state.settings import Settings

POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def _capped(pattern: re.Pattern[str], text: str, cap: int) -> int:
    return sum(1 for _ in itertools.islice(pattern.finditer(text), cap))


def capped_features(
    messages: list[dict[str, Any]], prompt_tokens: int, max_tokens: int | None, limit: int = 8192
) -> dict[str, float]:
    """A prototype of ``score_features`` that bounds its work: the same features and
    weights, but match counts stop at their cap and at most the first and last
    ``limit / 2`` characters are scanned."""
    text = "\n".join(message_text(m.get("content")) for m in messages)
    if len(text) > limit:
        text = text[: limit // 2] + "\n" + text[-limit // 2 :]
    user_turns = sum(1 for m in messages if m.get("role") == "user")
    return {
        "prompt_length": min(1.0, math.log1p(max(prompt_tokens - 20, 0) / 60) / math.log1p(50)),
        "requested_output": min(1.0, (max_tokens or 0) / 4096),
        "turns": min(1.0, max(user_turns - 1, 0) / 8),
        "code": 1.0 if ac._CODE.search(text) else 0.0,
        "math": _capped(ac._MATH, text, 3) / 3,
        "multi_step": _capped(ac._STEPS, text, 4) / 4,
        "reasoning": _capped(ac._REASONING, text, 3) / 3,
        "structured_output": 1.0 if ac._STRUCTURED.search(text) else 0.0,
    }


Calls = Callable[[], Awaitable[Any]]


async def timed(fn: Calls, calls: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        await fn()
    out = []
    for _ in range(calls):
        started = time.perf_counter()
        await fn()
        out.append((time.perf_counter() - started) * 1e6)
        # untimed: let the loop run its other tasks (the GPU pool's health probe
        # times out, and marks the pool down, if CPU-only steps never yield)
        await asyncio.sleep(0)
    return out


async def interleaved(paths: dict[str, Calls], calls: int, warmup: int) -> dict[str, list[float]]:
    for fn in paths.values():
        for _ in range(warmup):
            await fn()
    out: dict[str, list[float]] = {name: [] for name in paths}
    names = list(paths)
    for i in range(calls):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            started = time.perf_counter()
            await paths[name]()
            out[name].append((time.perf_counter() - started) * 1e6)
            await asyncio.sleep(0)  # untimed: the probe and the emulator get their turn
    return out


def stats(values: list[float]) -> dict[str, float]:
    return {"p50_us": percentile(values, 0.5), "mean_us": statistics.fmean(values)}


def merge(state: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Apply a node's update the way the graph does (``attempts`` appends)."""
    merged = {**state, **update}
    if "attempts" in update and "attempts" in state and update is not state:
        merged["attempts"] = state["attempts"] + update["attempts"]
    return merged


async def pipeline(request: dict[str, Any], runtime: Runtime[Context]) -> dict[str, Any]:
    """The router's GPU route without LangGraph: the same nodes, called in order."""
    state: dict[str, Any] = dict(request)
    for node in (analyze_complexity, select_model, check_budget, choose_backend):
        state = merge(state, await node(state, runtime))  # type: ignore[arg-type]
    assert state["backend"] == "gpu", state["backend"]
    state = merge(state, await generate_gpu(state, runtime))  # type: ignore[arg-type]
    return merge(state, await track_usage(state, runtime))  # type: ignore[arg-type]


def settings_for(url: str, database: dict[str, Any]) -> Settings:
    settings: Settings = emulator_settings(
        url, lambda_daily_budget=1e9, lambda_monthly_budget=1e9, **database
    )
    return settings


@contextlib.asynccontextmanager
async def databases(url: str, tmp: str) -> AsyncIterator[dict[str, Services]]:
    """Services on SQLite and, when reachable, on a throwaway PostgreSQL schema."""
    found: dict[str, Services] = {}
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    pg = False
    try:
        with psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
        pg = True
    except psycopg.OperationalError as exc:
        print(f"PostgreSQL not reachable at {POSTGRES_URL} ({exc}): SQLite only")
    try:
        found["sqlite"] = await build_services(
            settings_for(url, {"database_url": f"sqlite:///{tmp}/ledger.db"})
        )
        if pg:
            found["postgresql"] = await build_services(
                settings_for(url, {"database_url": POSTGRES_URL, "database_schema": schema})
            )
        yield found
    finally:
        for services in found.values():
            await services.aclose()
        if pg:
            with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


async def our_steps(
    services: Services, url: str, calls: int, warmup: int
) -> dict[str, dict[str, float]]:
    runtime = Runtime(context=Context(services=services))
    rows: dict[str, dict[str, float]] = {}
    states: dict[str, dict[str, Any]] = {}
    prompts = {
        "hello": HELLO,
        "long": LONG_PROMPT,
        "longer": VERY_LONG_PROMPT,
        "prose": PROSE_PROMPT,
    }
    for name, messages in prompts.items():
        state: dict[str, Any] = {"messages": messages}
        update = await analyze_complexity(state, runtime)  # type: ignore[arg-type]
        states[name] = merge(state, update)

        async def analyze(state: dict[str, Any] = state) -> None:
            await analyze_complexity(state, runtime)  # type: ignore[arg-type]

        tokens = update["prompt_tokens_estimate"]
        label = {"hello": "hello", "prose": f"{tokens} tokens of prose"}.get(
            name, f"{tokens} tokens"
        )
        rows[f"analyze_complexity ({label})"] = stats(await timed(analyze, calls, warmup))
    for name in ("longer", "prose"):
        msgs, tokens = states[name]["messages"], states[name]["prompt_tokens_estimate"]
        assert complexity_score(score_features(msgs, tokens, None)) == complexity_score(
            capped_features(msgs, tokens, None)
        )

        async def current(msgs: Any = msgs, tokens: int = tokens) -> None:
            score_features(msgs, tokens, None)

        async def capped(msgs: Any = msgs, tokens: int = tokens) -> None:
            capped_features(msgs, tokens, None)

        rows[f"  of which score_features ({tokens} tokens, {name})"] = stats(
            await timed(current, calls // 4, warmup)
        )
        rows[f"  prototype: capped scan, same score ({tokens} tokens, {name})"] = stats(
            await timed(capped, calls // 4, warmup)
        )

    state = states["hello"]
    update = await select_model(state, runtime)  # type: ignore[arg-type]

    async def select(state: dict[str, Any] = state) -> None:
        await select_model(state, runtime)  # type: ignore[arg-type]

    rows["select_model"] = stats(await timed(select, calls, warmup))
    state = merge(state, update)
    update = await check_budget(state, runtime)  # type: ignore[arg-type]
    assert update["reservation"] is None  # the GPU route holds no budget

    async def budget(state: dict[str, Any] = state) -> None:
        await check_budget(state, runtime)  # type: ignore[arg-type]

    rows["check_budget (GPU route: no hold)"] = stats(await timed(budget, calls, warmup))
    state = merge(state, update)
    update = await choose_backend(state, runtime)  # type: ignore[arg-type]

    async def choose(state: dict[str, Any] = state) -> None:
        await choose_backend(state, runtime)  # type: ignore[arg-type]

    rows["choose_backend"] = stats(await timed(choose, calls, warmup))
    state = merge(state, update)

    payload = orjson.dumps({"model": "llama3.1-8b-instruct", "messages": HELLO, "max_tokens": 1024})
    async with httpx.AsyncClient() as client:

        async def direct() -> None:
            response = await client.post(
                f"{url}/chat/completions",
                content=payload,
                headers={"content-type": "application/json"},
            )
            response.raise_for_status()
            orjson.loads(response.content)

        async def generate(state: dict[str, Any] = state) -> None:
            await generate_gpu(state, runtime)  # type: ignore[arg-type]

        both = await interleaved({"direct": direct, "node": generate}, calls, warmup)
    direct_p50 = percentile(both["direct"], 0.5)
    rows["generate_gpu minus a direct httpx POST"] = {
        "p50_us": percentile(both["node"], 0.5) - direct_p50,
        "mean_us": statistics.fmean(both["node"]) - statistics.fmean(both["direct"]),
        "direct_post_p50_us": direct_p50,
    }
    return rows


async def ledger_steps(
    services: Services, url: str, calls: int, warmup: int
) -> dict[str, dict[str, float]]:
    runtime = Runtime(context=Context(services=services))
    state: dict[str, Any] = {"messages": HELLO}
    for node in (analyze_complexity, select_model, check_budget, choose_backend, generate_gpu):
        state = merge(state, await node(state, runtime))  # type: ignore[arg-type]
    rows: dict[str, dict[str, float]] = {}

    async def track(state: dict[str, Any] = state) -> None:
        await track_usage({**state, "request_id": uuid.uuid4().hex}, runtime)  # type: ignore[arg-type]

    rows["track_usage (GPU route: ledger row)"] = stats(await timed(track, calls, warmup))

    book = services.budgets
    reserve_us: list[float] = []
    settle_us: list[float] = []
    for i in range(warmup + calls):
        request_id = uuid.uuid4().hex
        started = time.perf_counter()
        held = await book.reserve(request_id, 0.001)
        reserved = time.perf_counter()
        assert isinstance(held, Held)
        row = UsageRecord(
            created_at=services.clock(),
            request_id=request_id,
            backend="serverless",
            model="llama3.1-8b-instruct",
            prompt_tokens=12,
            completion_tokens=44,
            cost_usd=0.0005,
            gpu_seconds=0.0,
            latency_ms=1.0,
            user=None,
            team=None,
            error=None,
            status="ok",
            routing_reason="bench",
            complexity_score=0.0,
            complexity_level="low",
            fallbacks=0,
        )
        await book.settle(held.reservation_id, 0.0005, row)
        settled = time.perf_counter()
        if i >= warmup:
            reserve_us.append((reserved - started) * 1e6)
            settle_us.append((settled - reserved) * 1e6)
    rows["budget reserve (global day + month)"] = stats(reserve_us)
    rows["budget settle + ledger row"] = stats(settle_us)
    return rows


def _gpu_row() -> UsageRecord:
    return UsageRecord(
        created_at=datetime.now(UTC),
        request_id=uuid.uuid4().hex,
        user=None,
        team=None,
        backend="gpu",
        model="llama3.1-8b-instruct",
        prompt_tokens=12,
        completion_tokens=44,
        cost_usd=0.0,
        gpu_seconds=0.001,
        latency_ms=1.0,
        status="ok",
        routing_reason="bench",
        complexity_score=0.0,
        complexity_level="low",
        fallbacks=0,
        error=None,
    )


async def sqlite_concurrent_writes(
    tmp: str, callers: int, rows_each: int
) -> dict[str, dict[str, float]]:
    """Ledger rows from concurrent callers on SQLite: the router's engine, and one connection.

    The router's engine pools several aiosqlite connections; SQLite has one writer,
    so the others wait in SQLite's busy handler, which sleeps in growing steps. With
    one connection the writes queue in the process instead, first come first served.
    """
    out: dict[str, dict[str, list[float]]] = {}
    for kind in ("router's engine (pooled)", "one connection") * 2:
        settings = Settings(
            _env_file=None,  # type: ignore[call-arg]
            lambda_api_key="bench",
            gpu_endpoints=["http://127.0.0.1:9/v1"],
            database_url=f"sqlite:///{tmp}/writes-{uuid.uuid4().hex[:6]}.db",
        )
        if kind.startswith("one"):
            engine = create_async_engine(settings.async_database_url, pool_size=1, max_overflow=0)
            event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        else:
            engine = build_engine(settings)
        ledger = Ledger(engine, settings)
        await ledger.ensure_schema()
        await ledger.record(_gpu_row())
        latencies: list[float] = []

        async def caller(ledger: Ledger = ledger, latencies: list[float] = latencies) -> None:
            for _ in range(rows_each):
                started = time.perf_counter()
                await ledger.record(_gpu_row())
                latencies.append((time.perf_counter() - started) * 1000)
                await asyncio.sleep(0.001)  # the rest of a request

        started = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(callers)))
        elapsed = time.perf_counter() - started
        await ledger.aclose()
        runs = out.setdefault(kind, {"rows_per_s": [], "p50_ms": [], "p99_ms": [], "max_ms": []})
        runs["rows_per_s"].append(len(latencies) / elapsed)
        runs["p50_ms"].append(percentile(latencies, 0.5))
        runs["p99_ms"].append(percentile(latencies, 0.99))
        runs["max_ms"].append(max(latencies))
    return {
        name: {key: statistics.median(values) for key, values in runs.items()}
        for name, runs in out.items()
    }


async def postgres_pre_ping(services: Services, calls: int, warmup: int) -> dict[str, float]:
    """A ledger row on the router's PostgreSQL engine, and on one without ``pool_pre_ping``.

    The router's engine checks every connection it takes from the pool with a
    round trip (``pool_pre_ping=True``); the other one is the same but for that.
    """
    settings = services.settings
    bare = Ledger(
        create_async_engine(
            settings.async_database_url,
            pool_size=10,
            max_overflow=20,
            connect_args={"server_settings": {"search_path": settings.database_schema or ""}},
        ),
        settings,
    )
    bare._ready = True  # the schema is the router's, already migrated
    ledgers = {"router's engine (pool_pre_ping)": services.ledger, "without pool_pre_ping": bare}
    times: dict[str, list[float]] = {name: [] for name in ledgers}
    for i in range(warmup + calls):
        for name, ledger in ledgers.items():
            started = time.perf_counter()
            await ledger.record(_gpu_row())
            if i >= warmup:
                times[name].append((time.perf_counter() - started) * 1e6)
    await bare.aclose()
    return {name: percentile(values, 0.5) for name, values in times.items()}


# -- LangGraph alone ------------------------------------------------------------------


async def _noop(state: Any) -> dict[str, Any]:
    return {}


def _noop_handler(state: Any, error: Any) -> Any:
    raise error.error


class SmallState(TypedDict, total=False):
    messages: list[dict[str, Any]]
    x: int


def same_shape_graph(small_state: bool = False) -> Any:
    """The router's wiring, schemas, retry policies and error handlers; nodes do nothing.

    With ``small_state`` the state has 2 keys instead of the router's full state.
    """

    def route(state: RouterState) -> Literal["generate_serverless", "generate_gpu"]:
        return "generate_gpu"

    retry = RetryPolicy(max_attempts=2, initial_interval=0.05, retry_on=lambda e: False)
    if small_state:
        b = StateGraph(SmallState, context_schema=Context)
    else:
        b = StateGraph(
            RouterState,
            input_schema=RouterInput,
            output_schema=RouterOutput,
            context_schema=Context,
        )
    for name in ("analyze_complexity", "select_model", "check_budget", "choose_backend"):
        b.add_node(name, _noop)
    b.add_node(
        "generate_serverless",
        _noop,
        retry_policy=retry,
        error_handler=_noop_handler,
        destinations=("generate_gpu", "track_usage"),
    )
    b.add_node(
        "generate_gpu",
        _noop,
        retry_policy=retry,
        error_handler=_noop_handler,
        destinations=("generate_serverless", "track_usage"),
    )
    b.add_node("track_usage", _noop)
    b.add_edge(START, "analyze_complexity")
    b.add_edge("analyze_complexity", "select_model")
    b.add_edge("select_model", "check_budget")
    b.add_edge("check_budget", "choose_backend")
    b.add_conditional_edges("choose_backend", route, ["generate_serverless", "generate_gpu"])
    b.add_edge("generate_serverless", "track_usage")
    b.add_edge("generate_gpu", "track_usage")
    b.add_edge("track_usage", END)
    return b.compile(name="router-shape")


class ChainState(TypedDict, total=False):
    x: int
    log: Annotated[list[int], operator.add]


def chain_graph(nodes: int) -> Any:
    b = StateGraph(ChainState)
    names = [f"n{i}" for i in range(nodes)]
    for name in names:
        b.add_node(name, _noop)
    b.add_edge(START, names[0])
    for a, c in zip(names, names[1:], strict=False):
        b.add_edge(a, c)
    b.add_edge(names[-1], END)
    return b.compile()


async def langgraph_alone(calls: int, warmup: int) -> dict[str, Any]:
    shape = same_shape_graph()
    small = same_shape_graph(small_state=True)
    context = Context(services=None)
    chains = {n: chain_graph(n) for n in (1, 2, 4, 8)}
    paths: dict[str, Calls] = {
        "router shape, no-op nodes (6 steps)": lambda: shape.ainvoke(
            {"messages": HELLO}, context=context
        ),
        "router shape, no-op nodes, 2-key state": lambda: small.ainvoke(
            {"messages": HELLO}, context=context
        ),
    }
    for n, g in chains.items():
        paths[f"chain of {n}"] = lambda g=g: g.ainvoke({"x": 1})
    runs = await interleaved(paths, calls, warmup)
    rows = {name: stats(values) for name, values in runs.items()}
    xs = list(chains)
    ys = [rows[f"chain of {n}"]["p50_us"] for n in xs]
    slope, intercept = statistics.linear_regression(xs, ys)
    return {"rows": rows, "per_node_us": slope, "per_invoke_us": intercept}


async def plan(state: RouterState, runtime: Runtime[Context]) -> dict[str, Any]:
    """analyze_complexity, select_model, check_budget and choose_backend as one step."""
    current: dict[str, Any] = dict(state)
    update: dict[str, Any] = {}
    for node in (analyze_complexity, select_model, check_budget, choose_backend):
        step = await node(current, runtime)  # type: ignore[arg-type]
        current = merge(current, step)
        update = {**update, **step}
    return update


def compact_graph() -> Any:
    """A prototype of the router with 3 steps on the hot path: plan, generate, track.

    The generate nodes keep their retry policy and fallback handlers; only the
    four decision steps run as one node.
    """
    b = StateGraph(
        RouterState, input_schema=RouterInput, output_schema=RouterOutput, context_schema=Context
    )
    b.add_node("plan", plan)
    b.add_node(
        "generate_serverless",
        generate_serverless,
        retry_policy=GENERATE_RETRY,
        error_handler=fall_back_from_serverless,
        destinations=("generate_gpu", "track_usage"),
    )
    b.add_node(
        "generate_gpu",
        generate_gpu,
        retry_policy=GENERATE_RETRY,
        error_handler=fall_back_from_gpu,
        destinations=("generate_serverless", "track_usage"),
    )
    b.add_node("track_usage", track_usage)
    b.add_edge(START, "plan")
    b.add_conditional_edges("plan", route_to_backend, ["generate_serverless", "generate_gpu"])
    b.add_edge("generate_serverless", "track_usage")
    b.add_edge("generate_gpu", "track_usage")
    b.add_edge("track_usage", END)
    return b.compile(name="router-compact")


def one_node_graph() -> Any:
    """The whole GPU route as one LangGraph node: LangGraph's floor for this request."""

    async def route(state: RouterState, runtime: Runtime[Context]) -> dict[str, Any]:
        result = await pipeline(dict(state), runtime)
        return {k: result[k] for k in ("request_id", "response", "routing", "usage", "cost_usd")}

    b = StateGraph(
        RouterState, input_schema=RouterInput, output_schema=RouterOutput, context_schema=Context
    )
    b.add_node("route", route)
    b.add_edge(START, "route")
    b.add_edge("route", END)
    return b.compile(name="router-one-node")


async def whole_request(
    services: Services, url: str, calls: int, warmup: int
) -> dict[str, dict[str, float]]:
    runtime = Runtime(context=Context(services=services))
    context = Context(services=services)
    # fresh health: a probe starved by an earlier CPU-bound phase may have marked the pool down
    await services.gpu_pool.probe()
    payload = orjson.dumps({"model": "llama3.1-8b-instruct", "messages": HELLO, "max_tokens": 1024})
    async with httpx.AsyncClient() as client:

        async def direct() -> None:
            response = await client.post(
                f"{url}/chat/completions",
                content=payload,
                headers={"content-type": "application/json"},
            )
            response.raise_for_status()
            orjson.loads(response.content)

        async def nodes_only() -> None:
            await pipeline({"messages": HELLO}, runtime)

        async def with_graph() -> None:
            result = await graph.ainvoke({"messages": HELLO}, context=context)
            assert result["routing"]["backend"] == "gpu", result["routing"]

        compact = compact_graph()
        single = one_node_graph()

        async def with_compact() -> None:
            result = await compact.ainvoke({"messages": HELLO}, context=context)
            assert result["routing"]["backend"] == "gpu", result["routing"]

        async def with_single() -> None:
            result = await single.ainvoke({"messages": HELLO}, context=context)
            assert result["routing"]["backend"] == "gpu", result["routing"]

        runs = await interleaved(
            {
                "direct": direct,
                "pipeline": nodes_only,
                "graph": with_graph,
                "compact": with_compact,
                "one_node": with_single,
            },
            calls,
            warmup,
        )
    return {name: stats(values) for name, values in runs.items()}


async def main(args: argparse.Namespace) -> None:
    guard_loopback()
    info = machine_info()
    results: dict[str, Any] = {"machine": info, "calls": args.calls}
    async with serve_emulator(EmulatorConfig()) as url:
        with tempfile.TemporaryDirectory() as tmp:
            async with databases(url, tmp) as found:
                gc.collect()
                gc.freeze()
                sqlite = found["sqlite"]
                results["steps"] = await our_steps(sqlite, url, args.calls, args.warmup)
                results["ledger"] = {
                    name: await ledger_steps(services, url, args.calls, args.warmup)
                    for name, services in found.items()
                }
                if "postgresql" in found:
                    results["postgres_pre_ping"] = await postgres_pre_ping(
                        found["postgresql"], args.calls // 2, args.warmup
                    )
                results["sqlite_concurrent_writes"] = await sqlite_concurrent_writes(
                    tmp, callers=16, rows_each=max(50, args.calls // 16)
                )
                results["langgraph"] = await langgraph_alone(args.calls, args.warmup)
                results["whole_request"] = {
                    name: await whole_request(services, url, args.calls, args.warmup)
                    for name, services in found.items()
                }
    report(results)
    write_json(args.out, results)


def report(results: dict[str, Any]) -> None:
    print_machine(results["machine"])
    print(f"p50 (mean) per call over {results['calls']} calls, microseconds")
    print()
    print(
        f"{'our step (no LangGraph; GPU route, no I/O unless said)':<66}{'p50 us':>9}{'mean us':>9}"
    )
    for name, f in results["steps"].items():
        print(f"{name:<66}{f['p50_us']:>9.1f}{f['mean_us']:>9.1f}")
    print()
    dbs = list(results["ledger"])
    print(f"{'ledger step':<56}" + "".join(f"{db + ' p50':>16}" for db in dbs))
    for name in results["ledger"][dbs[0]]:
        print(
            f"{name:<56}" + "".join(f"{results['ledger'][db][name]['p50_us']:>16.1f}" for db in dbs)
        )
    if "postgres_pre_ping" in results:
        for name, p50 in results["postgres_pre_ping"].items():
            print(f"{'PostgreSQL ledger row, ' + name:<56}{'':>16}{p50:>16.1f}")
    print()
    print(
        f"{'SQLite ledger rows, 16 concurrent callers (median of 2)':<56}"
        + "".join(f"{h:>9}" for h in ("rows/s", "p50 ms", "p99 ms", "max ms"))
    )
    for name, f in results["sqlite_concurrent_writes"].items():
        print(
            f"{name:<56}{f['rows_per_s']:>9.0f}{f['p50_ms']:>9.2f}{f['p99_ms']:>9.2f}{f['max_ms']:>9.1f}"
        )
    print()
    lg = results["langgraph"]
    print(f"{'LangGraph alone (no-op nodes)':<56}{'p50 us':>9}{'mean us':>9}")
    for name, f in lg["rows"].items():
        print(f"{name:<56}{f['p50_us']:>9.1f}{f['mean_us']:>9.1f}")
    print(
        f"fit over the chains: {lg['per_invoke_us']:.0f} us per invoke + "
        f"{lg['per_node_us']:.0f} us per node"
    )
    print()
    print(
        f"{'whole request, GPU route (interleaved)':<56}"
        + "".join(f"{db + ' p50':>16}" for db in dbs)
    )
    labels = {
        "direct": "direct httpx POST",
        "pipeline": "our nodes in sequence, no LangGraph",
        "graph": "graph.ainvoke (the router: 6 steps)",
        "compact": "prototype: plan -> generate -> track (3 steps)",
        "one_node": "prototype: the route as one node (1 step)",
    }
    whole = results["whole_request"]
    for key, label in labels.items():
        print(f"{label:<56}" + "".join(f"{whole[db][key]['p50_us']:>16.1f}" for db in dbs))
    split = {}
    for db in dbs:
        w = whole[db]
        ours = w["pipeline"]["p50_us"] - w["direct"]["p50_us"]
        framework = w["graph"]["p50_us"] - w["pipeline"]["p50_us"]
        split[db] = {"ours_us": ours, "langgraph_us": framework}
        total = ours + framework
        print(
            f"  {db}: routing overhead {total:.0f} us = our nodes {ours:.0f} us + "
            f"LangGraph {framework:.0f} us ({100 * framework / total:.0f}% LangGraph); "
            f"3 steps: {w['compact']['p50_us'] - w['direct']['p50_us']:.0f} us, "
            f"1 step: {w['one_node']['p50_us'] - w['direct']['p50_us']:.0f} us"
        )
    results["overhead_split"] = split


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/step_costs.json"))
    asyncio.run(main(parser.parse_args()))
