"""The ``hybrid-router`` command: ``ask`` runs the graph once, ``emulate`` serves an emulator.

Also ``serve``, ``mcp``, ``migrate``, and the planner's ``simulate`` and
``export-trace`` (:mod:`planner.cli`).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any, cast

from langchain_core.messages import convert_to_openai_messages
from pydantic import ValidationError
from sqlalchemy import make_url

from planner import cli as planner_cli
from state.errors import BadRequestError, RouterError
from state.reporting.money import usd
from state.schemas import RouterInput

DEFAULT_MODELS = (
    "llama3.1-8b-instruct,llama3.1-70b-instruct-fp8,"
    "llama-4-scout-17b-16e-instruct,llama-4-maverick-17b-128e-instruct-fp8"
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hybrid-router",
        description="Route LLM chat requests between a serverless API and a GPU pool.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    ask = commands.add_parser("ask", help="run the router graph once and print the answer")
    ask.add_argument("prompt", help="the user message")
    ask.add_argument("--system", help="an optional system message")
    ask.add_argument("--max-tokens", type=int)
    ask.add_argument("--temperature", type=float)
    ask.add_argument("--model", help="a catalog model id, or 'auto' (default)")
    ask.add_argument(
        "--cost-priority", choices=["low_cost", "balanced", "performance", "latency_critical"]
    )
    ask.add_argument("--force-backend", choices=["serverless", "gpu"])
    ask.add_argument("--user")
    ask.add_argument("--json", action="store_true", help="print the whole result as JSON")

    serve = commands.add_parser(
        "serve", help="serve the OpenAI-compatible gateway (uvicorn, several workers)"
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument(
        "--allow-open-access",
        action="store_true",
        help="serve a non-loopback address without ROUTER_API_KEYS (anyone who reaches it "
        "may spend the budgets)",
    )

    commands.add_parser(
        "mcp", help="serve the MCP tools (invoke_serverless, estimate_cost, ...) over stdio"
    )

    commands.add_parser(
        "migrate", help="bring the ledger database (DATABASE_URL) to the newest schema"
    )

    budget = commands.add_parser(
        "budget",
        help="show or set a user's or a team's budget in the ledger (on the router's host, "
        "no API key needed; over HTTP, PUT /budget needs an admin key)",
    )
    budget.add_argument("scope", choices=["user", "team"])
    budget.add_argument("name", help="the user's or team's name")
    budget.add_argument(
        "--daily-usd", type=_usd_limit, help="daily limit in USD ('none': no limit)"
    )
    budget.add_argument(
        "--monthly-usd", type=_usd_limit, help="monthly limit in USD ('none': no limit)"
    )

    emulate = commands.add_parser(
        "emulate", help="serve an OpenAI-compatible emulator (for development and tests)"
    )
    emulate.add_argument("--host", default="127.0.0.1")
    emulate.add_argument("--port", type=int, required=True)
    emulate.add_argument("--models", default=DEFAULT_MODELS, help="comma-separated model ids")
    emulate.add_argument("--ttft-ms", type=float, default=0.0, help="time to first token")
    emulate.add_argument("--tpot-ms", type=float, default=0.0, help="time per output token")
    emulate.add_argument("--fail-rate", type=float, default=0.0, help="share of failed requests")
    emulate.add_argument("--fail-status", type=int, default=500, help="HTTP status of failures")
    emulate.add_argument("--max-concurrency", type=int, default=0, help="0 = unlimited")
    emulate.add_argument("--api-key", help="require this bearer key")
    emulate.add_argument("--name", default="emulator", help="name shown in answers")
    emulate.add_argument("--seed", type=int, help="seed of the failure draw")
    planner_cli.add_commands(commands)
    return parser


_NO_LIMIT = "none"


def _usd_limit(text: str) -> float | str:
    """Parse a budget limit: USD >= 0, or 'none' for no limit."""
    if text.strip().lower() == _NO_LIMIT:
        return _NO_LIMIT
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(
            f"a limit is a number of USD >= 0, or 'none'; got {text!r}"
        )
    return value


async def _budget(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Set a budget when a limit is given; return the scope's budgets now."""
    from state.budgets import BudgetBook
    from state.context import utc_now
    from state.ledger import NAME_MAX_CHARS, Ledger, build_engine
    from state.settings import get_settings

    if not 1 <= len(args.name) <= NAME_MAX_CHARS:
        raise BadRequestError(f"the {args.scope}'s name must be 1 to {NAME_MAX_CHARS} characters")
    settings = get_settings()
    ledger = Ledger(build_engine(settings), settings)
    try:
        book = BudgetBook(ledger, settings, utc_now)
        limits = (args.daily_usd, args.monthly_usd)
        if any(limit is not None for limit in limits):
            before = await book.status(**{args.scope: args.name})
            current = {w["period"]: w["limit_usd"] for w in before if w["scope"] == args.scope}
            daily, monthly = (
                current.get(period) if limit is None else None if limit == _NO_LIMIT else limit
                for period, limit in zip(("day", "month"), limits, strict=True)
            )
            await book.set_budget(args.scope, args.name, daily, monthly)
        status = await book.status(**{args.scope: args.name})
    finally:
        await ledger.aclose()
    return [w for w in status if w["scope"] == args.scope]


def _print_budget(args: argparse.Namespace, windows: list[dict[str, Any]]) -> None:
    if not windows:
        print(f"{args.scope} {args.name} has no budget of its own")
    for w in windows:
        what = "daily" if w["period"] == "day" else "monthly"
        print(
            f"{args.scope} {args.name} {what}: {usd(w['spent_usd'])} spent of "
            f"{usd(w['limit_usd'])}, {usd(w['remaining_usd'])} left, resets {w['resets_at']}"
        )


async def _ask(args: argparse.Namespace) -> dict[str, Any]:
    from graphs.router import graph
    from state.context import close_default_services

    messages = []
    if args.system:
        messages.append({"role": "system", "content": args.system})
    messages.append({"role": "user", "content": args.prompt})
    request: dict[str, Any] = {"messages": messages}
    for key in ("max_tokens", "temperature", "model", "cost_priority", "force_backend", "user"):
        value = getattr(args, key)
        if value is not None:
            request[key] = value
    try:
        return dict(await graph.ainvoke(cast(RouterInput, request)))
    finally:
        await close_default_services()


def _print_result(result: dict[str, Any]) -> None:
    routing = result["routing"]
    usage = result["usage"]
    print(result["response"]["content"])
    print()
    print(f"backend:    {routing['backend']}  model: {routing['model']}")
    print(f"reason:     {routing['reason']}")
    complexity = routing["complexity"]
    print(f"complexity: {complexity['level']} ({complexity['score']:.2f})")
    for attempt in routing["attempts"]:
        outcome = "ok" if attempt["status"] == "ok" else f"failed: {attempt['error']}"
        took = f"{attempt['latency_ms']:.0f} ms"
        where = attempt["backend"]
        if attempt.get("provider"):
            where += f" ({attempt['provider']})"
        print(f"attempt:    {where} {attempt['model']} ({took}) {outcome}")
    print(
        f"usage:      {usage['prompt_tokens']} prompt + {usage['completion_tokens']} completion "
        f"= {usage['total_tokens']} tokens"
    )
    print(f"cost:       {usd(result['cost_usd'])}")


def _emulate(args: argparse.Namespace) -> None:
    from emulator import EmulatorConfig, run

    config = EmulatorConfig(
        models=[m.strip() for m in args.models.split(",") if m.strip()],
        ttft_ms=args.ttft_ms,
        tpot_ms=args.tpot_ms,
        fail_rate=args.fail_rate,
        fail_status=args.fail_status,
        max_concurrency=args.max_concurrency,
        api_key=args.api_key,
        name=args.name,
        seed=args.seed,
    )
    run(config, args.host, args.port)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def _open_to_the_network(args: argparse.Namespace) -> bool:
    """Refuse a non-loopback bind without API keys, unless the operator says so; warn then."""
    from state.settings import get_settings

    if _is_loopback(args.host) or get_settings().router_api_keys:
        return False
    if not args.allow_open_access:
        print(
            f"refusing to serve {args.host} without ROUTER_API_KEYS: anyone who reaches it could "
            "send requests that spend the budgets. Set ROUTER_API_KEYS (key:user[:team], "
            "comma-separated), serve 127.0.0.1, or pass --allow-open-access if the network "
            "itself is trusted.",
            file=sys.stderr,
        )
        return True
    print(
        f"WARNING: serving {args.host} with no ROUTER_API_KEYS (--allow-open-access): "
        "every caller is anonymous and may spend the budgets.",
        file=sys.stderr,
    )
    return False


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    try:
        if args.command == "simulate":
            return planner_cli.run(args)
        if args.command == "export-trace":
            return planner_cli.run_export(args)
        if args.command == "emulate":
            _emulate(args)
            return 0
        if args.command == "serve":
            from gateway.serve import serve

            if _open_to_the_network(args):
                return 2
            serve(args.host, args.port, args.workers)
            return 0
        if args.command == "mcp":
            from mcp_server.server import run_stdio

            run_stdio()
            return 0
        if args.command == "migrate":
            from state.migrate import sync_database_url, upgrade_blocking
            from state.settings import get_settings

            settings = get_settings()
            upgrade_blocking(settings)
            safe_url = make_url(sync_database_url(settings)).render_as_string(hide_password=True)
            print(f"ledger schema is up to date ({safe_url})")
            return 0
        if args.command == "budget":
            _print_budget(args, asyncio.run(_budget(args)))
            return 0
        result = asyncio.run(_ask(args))
    except ValidationError as error:
        print(f"configuration error: {error}", file=sys.stderr)
        return 2
    except BadRequestError as error:
        print(f"bad request: {error.message}", file=sys.stderr)
        return 2
    except RouterError as error:
        print(f"error ({error.code}): {error.message}", file=sys.stderr)
        return 1
    if args.json:
        # the conversation as OpenAI-style messages, not LangChain objects' reprs
        result["messages"] = convert_to_openai_messages(result.get("messages") or [])
        print(json.dumps(result, indent=2, default=str))
    else:
        _print_result(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
