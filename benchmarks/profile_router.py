"""Where the routing time goes: a pyinstrument profile, summed by who spends it.

Targets (the emulator always runs in its own process, so the profile holds only
the side being measured):

- ``graph``: our router graph, ``graph.ainvoke`` called back to back in this process;
- ``litellm``: LiteLLM's ``Router.acompletion`` likewise (two deployments);
- ``gateway``: ``hybrid-router serve`` run under pyinstrument, loaded by
  ``loadgen.py`` at ``--concurrency`` (the profile covers the load only roughly:
  start-up is reported apart).

Every sample goes to the nearest frame on its stack that belongs to a library or
to this project (the standard library, builtins, anyio and h11 count as their
caller), giving shares for LangGraph, the HTTP client, the HTTP server, the
ledger database, our own modules and so on; then the functions with the most
self time, and pyinstrument's call tree. Needs pyinstrument (the bench extra).

    .venv-bench/bin/python benchmarks/profile_router.py --target graph --requests 2000
    .venv-bench/bin/python benchmarks/profile_router.py --target graph --prompt long
    .venv-bench/bin/python benchmarks/profile_router.py --target litellm
    .venv-bench/bin/python benchmarks/profile_router.py --target gateway --concurrency 16
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import (
    BENCH_DIR,
    PROMPTS,
    emulator_process,
    emulator_settings,
    free_port,
    guard_loopback,
    import_litellm,
    machine_info,
    server,
    venv_script,
    write_json,
)

try:
    from pyinstrument import Profiler
    from pyinstrument.session import Session
except ImportError:  # pragma: no cover - a message, not a crash
    sys.exit("pyinstrument is not installed: use the bench environment (make bench)")

MODEL = "llama3.1-8b-instruct"
ROOT = BENCH_DIR.parent
CATEGORIES = {
    "langgraph": "LangGraph",
    "langchain_core": "LangGraph",
    "httpx": "HTTP client (httpx/httpcore)",
    "httpcore": "HTTP client (httpx/httpcore)",
    "aiohttp": "HTTP client (aiohttp)",
    "sqlalchemy": "ledger database (SQLAlchemy + driver)",
    "aiosqlite": "ledger database (SQLAlchemy + driver)",
    "asyncpg": "ledger database (SQLAlchemy + driver)",
    "uvicorn": "HTTP server (uvicorn/starlette)",
    "starlette": "HTTP server (uvicorn/starlette)",
    "fastapi": "HTTP server (uvicorn/starlette)",
    "tiktoken": "tokenizer (tiktoken)",
    "litellm": "LiteLLM",
    "openai": "openai client (LiteLLM's)",
    "pydantic": "pydantic",
    "pydantic_core": "pydantic",
    "prometheus_client": "metrics (prometheus_client)",
}
TRANSPARENT = {"anyio", "h11", "sniffio", "typing_extensions", "greenlet", "orjson"}


def _package(path: str | None) -> str | None:
    if path is None:
        return None
    if not os.path.isabs(path):  # <built-in>, <string>, <frozen ...>: count as the caller
        return "stdlib"
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
    try:
        relative = Path(path).resolve().relative_to(ROOT)
    except (ValueError, OSError):
        return "stdlib"
    top = relative.parts[0]
    if top.startswith(".venv") or top == "benchmarks":
        return "driver"  # the console script, or this benchmark's own loop
    return f"ours: {top}"


IDLE = {"poll", "epoll.poll", "select", "kqueue.control"}


def _owner(chain: list[Any]) -> str:
    if chain and chain[-1].function in IDLE:
        return "waiting for I/O (idle)"
    if chain and (chain[-1].file_path or "").endswith("asyncio/runners.py"):
        return "event loop (uvloop's C code: sockets, callbacks)"
    for frame in reversed(chain):
        if "importlib" in (frame.file_path or "") or frame.function == "<module>":
            return "start-up (imports)"
        package = _package(frame.file_path)
        if package is None or package == "stdlib" or package in TRANSPARENT:
            continue
        if package in ("driver", "pyinstrument"):
            return "event loop (asyncio/uvloop)"
        return CATEGORIES.get(package, package)
    return "event loop (asyncio/uvloop)"


def summarize(session: Session, top: int) -> dict[str, Any]:
    """Shares by owner, and the functions with the most self time."""
    owners: collections.Counter[str] = collections.Counter()
    functions: collections.Counter[tuple[str, str, str]] = collections.Counter()

    def walk(frame: Any, chain: list[Any]) -> None:
        if frame.file_path is None or frame.function.startswith("["):  # a self-time leaf
            owner = _owner(chain)
            owners[owner] += frame.time
            if chain:
                parent = chain[-1]
                where = f"{Path(parent.file_path or '?').name}:{parent.line_no}"
                functions[(owner, parent.function, where)] += frame.time
            return
        for child in frame.children:
            walk(child, [*chain, frame])

    root = session.root_frame()
    if root is not None:
        walk(root, [])
    total = sum(owners.values()) or 1.0
    return {
        "duration_s": session.duration,
        "cpu_s": session.cpu_time,
        "owners": [{"owner": k, "seconds": v, "share": v / total} for k, v in owners.most_common()],
        "functions": [
            {"owner": o, "function": f, "where": w, "seconds": v, "share": v / total}
            for (o, f, w), v in functions.most_common(top)
        ],
    }


def print_summary(summary: dict[str, Any], per_request_ms: float | None) -> None:
    print(f"profiled {summary['duration_s']:.2f} s wall, {summary['cpu_s']:.2f} s CPU")
    print(f"{'who spends it':<50}{'share':>8}" + ("  ms/request" if per_request_ms else ""))
    for row in summary["owners"]:
        if row["share"] < 0.005:
            continue
        extra = f"{row['share'] * per_request_ms:>12.3f}" if per_request_ms else ""
        print(f"{row['owner']:<50}{row['share']:>8.1%}{extra}")
    print()
    print(f"{'self time: function (where) [owner]':<86}{'share':>7}")
    for row in summary["functions"]:
        label = f"{row['function']} ({row['where']}) [{row['owner']}]"
        print(f"{label[:85]:<86}{row['share']:>7.1%}")


async def profile_in_process(args: argparse.Namespace, work: Path, emulator: str) -> Session:
    guard_loopback()
    messages = PROMPTS[args.prompt]
    if args.target == "litellm":
        litellm = import_litellm()
        if litellm is None:
            sys.exit("LiteLLM is not installed: use the bench environment (make bench)")
        router = litellm.Router(
            model_list=[
                {
                    "model_name": MODEL,
                    "litellm_params": {
                        "model": f"openai/{MODEL}",
                        "api_base": emulator,
                        "api_key": "bench",
                    },
                    "model_info": {"id": f"emulator-{name}"},
                }
                for name in ("a", "b")
            ]
        )

        async def call() -> None:
            await router.acompletion(model=MODEL, messages=messages, max_tokens=1024)

        services = None
    else:
        from graphs.router import graph
        from state.context import Context, build_services

        settings = emulator_settings(emulator, database_url=f"sqlite:///{work}/ledger.db")
        services = await build_services(settings)
        context = Context(services=services)

        async def call() -> None:
            await graph.ainvoke({"messages": messages}, context=context)

    for _ in range(args.warmup):
        await call()
    profiler = Profiler(interval=args.interval, async_mode="disabled")
    profiler.start()
    started = time.perf_counter()
    for _ in range(args.requests):
        await call()
    elapsed = time.perf_counter() - started
    profiler.stop()
    if services is not None:
        await services.aclose()
    print(f"{args.requests} requests, {elapsed * 1000 / args.requests:.3f} ms each (profiled)")
    args.per_request_ms = elapsed * 1000 / args.requests
    if args.html:
        args.html.write_text(profiler.output_html())
    print(profiler.output_text(unicode=True, color=False, show_all=False)[: args.tree_chars])
    return profiler.last_session


def profile_gateway(args: argparse.Namespace, work: Path, emulator: str) -> Session:
    port = free_port()
    session_file = work / "gateway.pyisession"
    env = {
        "LAMBDA_API_KEY": "bench",
        "LAMBDA_API_BASE": emulator,
        "GPU_ENDPOINTS": emulator,
        "DATABASE_URL": f"sqlite:///{work}/ledger.db",
        "DATABASE_SCHEMA": "",
        "LANGSMITH_TRACING": "false",
    }
    command = [
        venv_script("pyinstrument"),
        "-r",
        "pyisession",
        "-o",
        str(session_file),
        "-i",
        str(args.interval),
        venv_script("hybrid-router"),
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    url = f"http://127.0.0.1:{port}/v1"
    with server(
        "gateway", command, f"{url}/models", env=env, cwd=work, log=work / "gateway.log"
    ) as process:
        for requests in (args.warmup, args.requests):
            done = subprocess.run(
                [
                    sys.executable,
                    str(BENCH_DIR / "loadgen.py"),
                    "--url",
                    url,
                    "--concurrency",
                    str(args.concurrency),
                    "--requests",
                    str(requests),
                    "--seconds",
                    "60",
                ],
                capture_output=True,
                text=True,
                timeout=180,
                check=True,
            )
        print(f"load: {done.stdout.strip()}")
        os.killpg(process.pid, signal.SIGINT)  # pyinstrument writes its session on exit
        process.wait(timeout=60)
    session = Session.load(str(session_file))
    if args.html:
        from pyinstrument.renderers import HTMLRenderer

        args.html.write_text(HTMLRenderer().render(session))
    return session


def main(args: argparse.Namespace) -> None:
    args.per_request_ms = None
    with tempfile.TemporaryDirectory(prefix="bench-prof-") as tmp:
        work = Path(tmp)
        port = free_port()
        with emulator_process(port, work):
            emulator = f"http://127.0.0.1:{port}/v1"
            if args.target == "gateway":
                session = profile_gateway(args, work, emulator)
            else:
                session = asyncio.run(profile_in_process(args, work, emulator))
    summary = summarize(session, args.top)
    print_summary(summary, args.per_request_ms)
    write_json(
        args.out or Path(f"benchmarks/profile_{args.target}.json"),
        {
            "machine": machine_info(),
            "target": args.target,
            "prompt": args.prompt,
            "requests": args.requests,
            "concurrency": args.concurrency if args.target == "gateway" else 1,
            "ms_per_request_profiled": args.per_request_ms,
            **summary,
        },
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", choices=["graph", "litellm", "gateway"], default="graph")
    parser.add_argument("--prompt", choices=list(PROMPTS), default="hello")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16, help="gateway target only")
    parser.add_argument("--interval", type=float, default=0.0005, help="sampling, seconds")
    parser.add_argument("--top", type=int, default=25, help="functions listed by self time")
    parser.add_argument("--tree-chars", type=int, default=6000, help="of the call tree printed")
    parser.add_argument("--html", type=Path, help="also write pyinstrument's HTML view here")
    parser.add_argument("--out", type=Path, help="JSON (default benchmarks/profile_<target>.json)")
    main(parser.parse_args())
