"""Per-step costs of one routed request, and how much of the routing overhead is LangGraph.

Four tables, all against an in-process loopback emulator answering at once:

1. Our steps, each node called as a plain function (no LangGraph) with the state
   it sees in a real run: complexity analysis (for "Hello!", a ~450-token prompt
   and a ~4k-token prompt, and ~3k tokens of prose that no pattern matches), model
   selection, the budget check and backend choice on the default GPU route, and
   the GPU call minus a direct httpx POST of the same body. For the long
   prompts, what the features cost and what counting the prompt's tokens costs,
   afresh and from the count cache.
2. The ledger, on SQLite (a file) and PostgreSQL (a throwaway schema, as
   ``budget_ops.py`` does): the ledger row of a GPU request (``track_usage``), a
   budget reservation (global day + month windows) and its settlement with the
   ledger row; ledger rows one by one and from 16 concurrent callers on SQLite,
   through the router's writer thread and through aiosqlite with one connection
   (how the ledger wrote before); and a PostgreSQL ledger row with and without
   the engine's ``pool_pre_ping`` (a round trip per transaction).
3. LangGraph's own cost: a graph of the router's shape (same state schemas,
   context, conditional edges, retry policies and fallback commands) whose
   nodes do nothing, and chains of 1, 2, 4 and 8 no-op nodes, fitted to a cost
   per invoke plus a cost per node.
4. One whole request, interleaved: a direct httpx POST, our nodes called in
   sequence without LangGraph, and ``graph.ainvoke`` (the GPU route: 5 steps,
   analyze_complexity, select_model, choose_backend, generate_gpu,
   track_usage); the differences split the routing overhead into our work and
   LangGraph's. Two other wirings of the same nodes, built here, bracket it:
   the decisions run as one plan step (3 steps, as the router was wired
   before each decision became a node Studio draws), and the whole route as
   one node (LangGraph's floor).

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
import operator
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
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
    Calls,
    emulator_settings,
    guard_loopback,
    interleaved,
    machine_info,
    percentile,
    print_machine,
    stats,
    write_json,
)
from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import Command, RetryPolicy
from sqlalchemy.ext.asyncio import create_async_engine

from backends.tokens import clear_token_cache, count_message_tokens
from emulator import EmulatorConfig, serve_emulator
from graphs.router import graph
from nodes.analyze_complexity import analyze_complexity, score_features
from nodes.check_budget import check_budget, route_to_backend
from nodes.choose_backend import choose_backend
from nodes.generate_gpu import generate_gpu
from nodes.generate_serverless import generate_serverless
from nodes.generation import GENERATE_RETRY
from nodes.select_model import select_model
from nodes.track_usage import track_usage
from state.budgets import Held
from state.context import Context, Services, build_services
from state.ledger import INSERT_USAGE, Ledger, UsageRecord, build_engine, usage_values
from state.schemas import RouterInput, RouterOutput, RouterState
from state.settings import Settings

POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def direct_post(client: httpx.AsyncClient, url: str) -> Calls:
    """The floor: the GPU route's request body POSTed straight to the emulator."""
    payload = orjson.dumps({"model": "llama3.1-8b-instruct", "messages": HELLO, "max_tokens": 1024})

    async def direct() -> None:
        response = await client.post(
            f"{url}/chat/completions", content=payload, headers={"content-type": "application/json"}
        )
        response.raise_for_status()
        orjson.loads(response.content)

    return direct


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


def merge(state: dict[str, Any], update: Any) -> dict[str, Any]:
    """Apply a node's update the way the graph does (``attempts`` appends)."""
    if isinstance(update, Command):
        update = dict(update.update or {})  # type: ignore[call-overload]
    merged = {**state, **update}
    if update.get("attempts") and update is not state:
        merged["attempts"] = (state.get("attempts") or []) + update["attempts"]
    return merged


async def pipeline(request: dict[str, Any], runtime: Runtime[Context]) -> dict[str, Any]:
    """The router's GPU route without LangGraph: the same nodes, called in order."""
    state: dict[str, Any] = dict(request)
    for decide in (analyze_complexity, select_model, choose_backend):
        state = merge(state, await decide(state, runtime))  # type: ignore[arg-type]
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
            clear_token_cache()  # a prompt the router has not seen before
            await analyze_complexity(state, runtime)  # type: ignore[arg-type]

        tokens = update["prompt_tokens_estimate"]
        label = {"hello": "hello", "prose": f"{tokens} tokens of prose"}.get(
            name, f"{tokens} tokens"
        )
        rows[f"analyze_complexity ({label})"] = stats(await timed(analyze, calls, warmup))
    for name in ("longer", "prose"):
        msgs, tokens = states[name]["messages"], states[name]["prompt_tokens_estimate"]

        async def features(msgs: Any = msgs, tokens: int = tokens) -> None:
            score_features(msgs, tokens, None)

        async def count_afresh(msgs: Any = msgs) -> None:
            clear_token_cache()
            count_message_tokens(msgs)

        async def count_cached(msgs: Any = msgs) -> None:
            count_message_tokens(msgs)

        rows[f"  of which score_features ({tokens} tokens, {name})"] = stats(
            await timed(features, calls // 4, warmup)
        )
        rows[f"  of which counting its tokens afresh ({name})"] = stats(
            await timed(count_afresh, calls // 4, warmup)
        )
        rows[f"  counting its tokens again (count cache) ({name})"] = stats(
            await timed(count_cached, calls // 4, warmup)
        )

    state = states["hello"]
    update = await select_model(state, runtime)  # type: ignore[arg-type]

    async def select(state: dict[str, Any] = state) -> None:
        await select_model(state, runtime)  # type: ignore[arg-type]

    rows["select_model"] = stats(await timed(select, calls, warmup))
    state = merge(state, update)
    update = await choose_backend(state, runtime)  # type: ignore[arg-type]

    async def choose(state: dict[str, Any] = state) -> None:
        await choose_backend(state, runtime)  # type: ignore[arg-type]

    rows["choose_backend"] = stats(await timed(choose, calls, warmup))
    state = merge(state, update)

    async with httpx.AsyncClient() as client:
        direct = direct_post(client, url)

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
    for node in (analyze_complexity, select_model, choose_backend, generate_gpu):
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


async def sqlite_writes(tmp: str, rows_each: int) -> dict[str, dict[str, float]]:
    """SQLite ledger rows, one caller and 16 at once: the router's writer, and aiosqlite.

    The router writes each transaction as one call in its writer thread with the
    standard library's sqlite3 (``Ledger.write``). Before, the same statements went
    one by one through aiosqlite on one pooled connection: every statement, the
    BEGIN and the COMMIT a hop to aiosqlite's thread and back to the event loop.
    """
    out: dict[str, dict[str, list[float]]] = {}
    for callers, kind in itertools.product((1, 16), ("writer thread", "aiosqlite") * 2):
        settings = Settings(
            _env_file=None,  # type: ignore[call-arg]
            lambda_api_key="bench",
            gpu_endpoints=["http://127.0.0.1:9/v1"],
            database_url=f"sqlite:///{tmp}/writes-{uuid.uuid4().hex[:6]}.db",
        )
        ledger = Ledger(build_engine(settings), settings)
        await ledger.ensure_schema()

        async def aiosqlite_record(row: UsageRecord, ledger: Ledger = ledger) -> None:
            async with ledger.engine.begin() as conn:
                await conn.execute(INSERT_USAGE, usage_values(row))

        record = ledger.record if kind == "writer thread" else aiosqlite_record
        await record(_gpu_row())
        latencies: list[float] = []

        async def caller(record: Any = record, latencies: list[float] = latencies) -> None:
            for _ in range(rows_each):
                started = time.perf_counter()
                await record(_gpu_row())
                latencies.append((time.perf_counter() - started) * 1000)
                await asyncio.sleep(0.001)  # the rest of a request

        started = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(callers)))
        elapsed = time.perf_counter() - started
        await ledger.aclose()
        name = f"{kind}, {callers} caller{'s' if callers > 1 else ''}"
        runs = out.setdefault(name, {"rows_per_s": [], "p50_ms": [], "p99_ms": [], "max_ms": []})
        runs["rows_per_s"].append(len(latencies) / elapsed)
        runs["p50_ms"].append(percentile(latencies, 0.5))
        runs["p99_ms"].append(percentile(latencies, 0.99))
        runs["max_ms"].append(max(latencies))
    return {
        name: {key: statistics.median(values) for key, values in runs.items()}
        for name, runs in out.items()
    }


async def postgres_pre_ping(services: Services, calls: int, warmup: int) -> dict[str, float]:
    """A ledger row on the router's PostgreSQL engine, and on one with ``pool_pre_ping``.

    The other engine checks every connection it takes from the pool with a round
    trip (``pool_pre_ping=True``, how the router's was built before); the same but
    for that.
    """
    settings = services.settings
    bare = Ledger(
        create_async_engine(
            settings.async_database_url,
            pool_pre_ping=True,
            pool_size=10,
            max_overflow=20,
            connect_args={"server_settings": {"search_path": settings.database_schema or ""}},
        ),
        settings,
    )
    bare._ready = True  # the schema is the router's, already migrated
    ledgers = {"router's engine (no pre-ping)": services.ledger, "with pool_pre_ping": bare}
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


async def _noop_to_track(state: Any) -> Command[Literal["track_usage"]]:
    return Command(goto="track_usage")


async def _noop_to_gpu(state: Any) -> Command[Literal["check_budget", "generate_gpu"]]:
    return Command(goto="generate_gpu")


async def _noop_budget(state: Any) -> Command[Literal["generate_serverless", "generate_gpu"]]:
    return Command(goto="generate_gpu")


class SmallState(TypedDict, total=False):
    messages: list[dict[str, Any]]
    backend: str
    x: int


def same_shape_graph(small_state: bool = False) -> Any:
    """The router's wiring, schemas and retry policies; nodes do nothing.

    With ``small_state`` the state has 3 keys instead of the router's full state.
    """

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
    for name in ("analyze_complexity", "select_model"):
        b.add_node(name, _noop)
    b.add_node("choose_backend", _noop_to_gpu)
    b.add_edge(START, "analyze_complexity")
    b.add_edge("analyze_complexity", "select_model")
    b.add_edge("select_model", "choose_backend")
    wire_generation(b, (_noop_budget, _noop_to_track, _noop_to_track, _noop), retry)
    return b.compile(name="router-shape")


def wire_generation(b: Any, nodes: tuple[Any, Any, Any, Any], retry: RetryPolicy) -> None:
    """Add the budget step, the generate nodes (retry policy, fallback commands), track_usage.

    Each of these nodes returns a Command to its next step, as the router's do.
    """
    budget, serverless, gpu, track = nodes
    b.add_node("check_budget", budget)
    b.add_node(
        "generate_serverless",
        serverless,
        retry_policy=retry,
        destinations=("generate_gpu", "track_usage"),
    )
    b.add_node(
        "generate_gpu",
        gpu,
        retry_policy=retry,
        destinations=("generate_serverless", "track_usage"),
    )
    b.add_node("track_usage", track)
    b.add_edge("track_usage", END)


class ChainState(TypedDict, total=False):
    x: int
    log: Annotated[list[int], operator.add]


def chain_graph(nodes: int) -> Any:
    b = StateGraph(ChainState)
    names = [f"n{i}" for i in range(nodes)]
    for name in names:
        b.add_node(name, _noop)
    b.add_edge(START, names[0])
    for a, c in itertools.pairwise(names):
        b.add_edge(a, c)
    b.add_edge(names[-1], END)
    return b.compile()


async def langgraph_alone(calls: int, warmup: int) -> dict[str, Any]:
    shape = same_shape_graph()
    small = same_shape_graph(small_state=True)
    context = Context(services=None)
    chains = {n: chain_graph(n) for n in (1, 2, 4, 8)}
    paths: dict[str, Calls] = {
        "router shape, no-op nodes (5 steps)": lambda: shape.ainvoke(
            {"messages": HELLO}, context=context
        ),
        "router shape, no-op nodes, 3-key state": lambda: small.ainvoke(
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


def plan_step_graph() -> Any:
    """The decisions as one plan step, as the router was wired before each became a node.

    Same nodes, retry policies and fallback commands; 3 steps on the GPU route
    instead of 5.
    """

    async def plan_route(state: RouterState, runtime: Runtime[Context]) -> dict[str, Any]:
        current: dict[str, Any] = dict(state)
        update: dict[str, Any] = {}
        for decide in (analyze_complexity, select_model, choose_backend):
            step = await decide(current, runtime)  # type: ignore[arg-type]
            current = merge(current, step)
            update.update(step)
        if current["backend"] == "serverless":
            update.update(await check_budget(current, runtime))  # type: ignore[arg-type]
        return update

    b = StateGraph(
        RouterState, input_schema=RouterInput, output_schema=RouterOutput, context_schema=Context
    )
    b.add_node(plan_route)
    b.add_edge(START, "plan_route")
    b.add_conditional_edges(
        "plan_route",
        lambda state: route_to_backend(state["backend"]),
        ["generate_serverless", "generate_gpu"],
    )
    wire_generation(
        b, (check_budget, generate_serverless, generate_gpu, track_usage), GENERATE_RETRY
    )
    return b.compile(name="router-plan-step")


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
    async with httpx.AsyncClient() as client:
        direct = direct_post(client, url)

        async def nodes_only() -> None:
            await pipeline({"messages": HELLO}, runtime)

        async def with_graph() -> None:
            result = await graph.ainvoke({"messages": HELLO}, context=context)
            assert result["routing"]["backend"] == "gpu", result["routing"]

        plan_step = plan_step_graph()
        single = one_node_graph()

        async def with_plan_step() -> None:
            result = await plan_step.ainvoke({"messages": HELLO}, context=context)
            assert result["routing"]["backend"] == "gpu", result["routing"]

        async def with_single() -> None:
            result = await single.ainvoke({"messages": HELLO}, context=context)
            assert result["routing"]["backend"] == "gpu", result["routing"]

        runs = await interleaved(
            {
                "direct": direct,
                "pipeline": nodes_only,
                "graph": with_graph,
                "plan_step": with_plan_step,
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
                results["sqlite_writes"] = await sqlite_writes(
                    tmp, rows_each=max(50, args.calls // 16)
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
        f"{'SQLite ledger rows (median of 2 tries)':<56}"
        + "".join(f"{h:>9}" for h in ("rows/s", "p50 ms", "p99 ms", "max ms"))
    )
    for name, f in results["sqlite_writes"].items():
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
        "graph": "graph.ainvoke (the router: 5 steps)",
        "plan_step": "the same nodes, the decisions as one step (3 steps)",
        "one_node": "the route as one node (1 step)",
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
            f"3 steps: {w['plan_step']['p50_us'] - w['direct']['p50_us']:.0f} us, "
            f"1 step: {w['one_node']['p50_us'] - w['direct']['p50_us']:.0f} us"
        )
    results["overhead_split"] = split


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/step_costs.json"))
    asyncio.run(main(parser.parse_args()))
