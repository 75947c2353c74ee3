"""The MCP server: the router graph and its ledger as four tools, served over stdio.

- ``invoke_serverless`` runs the ``router`` graph (serverless forced by default,
  automatic routing with ``force_backend=None``) and returns the answer, the
  routing decision, the token usage and the cost;
- ``estimate_cost`` prices a prompt on every catalog model without calling a backend;
- ``get_usage_stats`` reports the ledger's usage, cost and savings, and the budgets;
- ``optimize_costs`` turns the same report into suggestions with their numbers.

Each tool answers structured content (with an output schema) plus readable
text; a router error (bad request, budget, outage) comes back as a tool error
carrying the router's message. The services (backends, ledger, settings) are
built on the first tool call, never at import: ``python -m mcp_server`` or
:func:`run_stdio` serves the process default built from the environment.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal, cast

import anyio
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult, TextContent, ToolAnnotations
from pydantic import Field, ValidationError
from typing_extensions import TypedDict

from graphs.router import graph
from nodes.cost_estimate import estimate
from state.context import Context, Services, close_default_services, default_services
from state.errors import RouterError
from state.reporting.accounting import accounting_lines
from state.reporting.advice import Advice, advice_text, cost_advice
from state.reporting.estimates import Estimate, estimate_text
from state.reporting.money import usd
from state.reporting.usage import GroupBy, UsageStats, refusals_text, usage_stats
from state.schemas import Backend, ChatMessage, CostPriority, RouterInput, Routing, Usage

logger = logging.getLogger(__name__)

ServicesFactory = Callable[[], Awaitable[Services]]
"""An async callable returning the services the tools run on."""

INSTRUCTIONS = (
    "hybrid-router sends LLM chat requests to the cheapest backend that meets their needs: "
    "a serverless API (Lambda's Inference API) or a GPU pool (vLLM), and keeps a ledger of "
    "tokens, cost and latency. Use estimate_cost before a large request, invoke_serverless to "
    "ask, get_usage_stats for spend and budgets, optimize_costs for advice."
)


class InvokeResult(TypedDict):
    """What ``invoke_serverless`` answers."""

    request_id: str
    answer: str
    routing: Routing
    usage: Usage
    cost_usd: float


Days = Annotated[
    int, Field(ge=1, le=366, description="How many days back from now the report covers.")
]


def chat_messages(prompt: str, system: str | None = None) -> list[ChatMessage]:
    """Return the chat messages of a prompt and an optional system message."""
    messages: list[ChatMessage] = []
    if system:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": prompt})
    return messages


def _result(structured: Any, text: str) -> CallToolResult:
    """Wrap structured content and its readable rendering in one tool result."""
    return CallToolResult(
        content=[TextContent(type="text", text=text)], structured_content=dict(structured)
    )


def _router_error(error: RouterError) -> ToolError:
    """Turn a router error into a tool error with the router's message and code."""
    return ToolError(f"{error.message} ({error.code}, HTTP {error.status_code})")


class RouterTools:
    """The four tools, bound to a factory of services that is called lazily."""

    def __init__(self, services: ServicesFactory) -> None:
        """Keep the factory; nothing is built until the first tool call.

        Args:
            services: Returns the services the tools run on; it is asked on every
                tool call, so it keeps what it builds (``default_services`` builds
                once per event loop).
        """
        self._factory = services

    async def services(self) -> Services:
        """Return the services the tools run on.

        Raises:
            ToolError: The configuration is invalid (e.g. a malformed GPU_ENDPOINTS).
        """
        try:
            return await self._factory()
        except ValidationError as error:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}"
                for e in error.errors(include_input=False, include_url=False)
            )
            raise ToolError(f"configuration error: {problems}") from error

    async def invoke_serverless(
        self,
        prompt: Annotated[str, Field(description="The user message to answer.")],
        system: Annotated[
            str | None, Field(description="An optional system message sent before the prompt.")
        ] = None,
        max_tokens: Annotated[
            int | None,
            Field(ge=1, description="Most output tokens; unset uses DEFAULT_MAX_TOKENS (1024)."),
        ] = None,
        model: Annotated[
            str,
            Field(description="A catalog model id, or 'auto': the router picks by complexity."),
        ] = "auto",
        cost_priority: Annotated[
            CostPriority | None,
            Field(description="How to trade quality for cost when the model is 'auto'."),
        ] = None,
        force_backend: Annotated[
            Backend | None,
            Field(
                description="Backend to use: 'serverless' (default), 'gpu', or null to let the "
                "router choose (GPU pool first while it has capacity, fallbacks allowed)."
            ),
        ] = "serverless",
        user: Annotated[
            str | None, Field(description="Who asks: selects the user's budget in the ledger.")
        ] = None,
    ) -> Annotated[CallToolResult, InvokeResult]:
        """Answer a prompt through the hybrid router and report where it ran and what it cost.

        Runs the router graph: complexity analysis, model selection, budget
        reservation, the backend call (with one retry and a fallback when
        routing is automatic) and the ledger row. Serverless is forced by
        default; pass force_backend=null for automatic routing.
        """
        services = await self.services()
        request: dict[str, Any] = {
            "messages": chat_messages(prompt, system),
            "model": model,
            "force_backend": force_backend,
        }
        for key, value in (
            ("max_tokens", max_tokens),
            ("cost_priority", cost_priority),
            ("user", user),
        ):
            if value is not None:
                request[key] = value
        try:
            output = await graph.ainvoke(
                cast(RouterInput, request), context=Context(services=services)
            )
        except RouterError as error:
            raise _router_error(error) from error
        routing: Routing = output["routing"]
        usage: Usage = output["usage"]
        result: InvokeResult = {
            "request_id": output["request_id"],
            "answer": str(output["response"].get("content") or ""),
            "routing": routing,
            "usage": usage,
            "cost_usd": output["cost_usd"],
        }
        attempts = ", ".join(
            f"{a['backend']} {a['status']}" + (f" ({a['error']})" if a["error"] else "")
            for a in routing["attempts"]
        )
        text = (
            f"{result['answer']}\n\n"
            f"backend: {routing['backend']}, model: {routing['model']} ({routing['reason']})\n"
            f"attempts: {attempts}\n"
            f"usage: {usage['prompt_tokens']} prompt + {usage['completion_tokens']} completion "
            f"tokens; cost {usd(result['cost_usd'])}"
        )
        return _result(result, text)

    async def estimate_cost(
        self,
        prompt: Annotated[str, Field(description="The user message to price.")],
        max_tokens: Annotated[
            int, Field(ge=1, description="Most output tokens the answer may use.")
        ] = 1024,
        system: Annotated[
            str | None, Field(description="An optional system message sent before the prompt.")
        ] = None,
        cost_priority: Annotated[
            CostPriority | None,
            Field(description="Cost priority for the router's pick; unset means 'balanced'."),
        ] = None,
    ) -> Annotated[CallToolResult, Estimate]:
        """Price a prompt on every model before sending it; no backend is called.

        For each catalog model: whether prompt plus max_tokens fits its context
        window and the worst-case serverless cost (prompt tokens at the input
        price plus max_tokens at the output price). Also the models the router
        would pick for this prompt and how the GPU pool's cost is accounted.
        """
        services = await self.services()
        try:
            result = estimate(
                services.catalog,
                services.settings,
                chat_messages(prompt, system),
                max_tokens,
                cost_priority,
            )
        except RouterError as error:
            raise _router_error(error) from error
        return _result(result, estimate_text(result))

    async def get_usage_stats(
        self,
        days: Days = 7,
        group_by: Annotated[
            GroupBy,
            Field(
                description="How to group the figures: by day, model, backend, provider or user."
            ),
        ] = "day",
    ) -> Annotated[CallToolResult, UsageStats]:
        """Report requests, tokens, cost, latency and savings from the ledger, plus the budgets.

        Totals and per-group figures (mean/p50/p95 latency, error and fallback
        rates), savings against all-GPU and all-serverless baselines, and each
        budget's limit, spend, holds and reset time.
        """
        services = await self.services()
        result = await usage_stats(
            services.ledger,
            services.budgets,
            services.settings,
            services.catalog,
            services.clock(),
            days,
            group_by,
        )
        return _result(result, _usage_text(result))

    async def optimize_costs(self, days: Days = 7) -> Annotated[CallToolResult, Advice]:
        """Suggest how to spend less, from the ledger's figures over the last days.

        Compares the actual spend with the all-GPU and all-serverless
        baselines, checks whether the GPU pool is idle, whether a budget is
        near its limit and whether failures or fallbacks cost money; each
        suggestion carries the numbers it used and its estimated monthly saving.
        """
        services = await self.services()
        advice = await cost_advice(
            services.ledger,
            services.budgets,
            services.settings,
            services.catalog,
            services.clock(),
            days,
        )
        return _result(advice, advice_text(advice))


def _usage_text(stats: UsageStats) -> str:
    """Render usage statistics for people."""
    totals, savings = stats["totals"], stats["savings"]
    lines = [
        f"{stats['start']} .. {stats['end']}: {totals['requests']} requests "
        f"({totals['failed']} failed; {refusals_text(totals)}), {totals['total_tokens']} tokens, "
        f"{usd(totals['cost_usd'])} recorded; latency p50 {totals['latency_ms_p50']:.0f} ms, "
        f"p95 {totals['latency_ms_p95']:.0f} ms",
        f"by {stats['group_by']}:",
    ]
    for key, group in stats["groups"].items():
        lines.append(
            f"  {key}: {group['requests']} requests, {group['total_tokens']} tokens, "
            f"{usd(group['cost_usd'])}"
        )
    lines += accounting_lines(savings)
    for budget in stats["budgets"]:
        owner = "" if budget["scope"] == "global" else f" {budget['scope']} {budget['key']}"
        lines.append(
            f"budget{owner} {budget['period']} {budget['window']}: {usd(budget['spent_usd'])} of "
            f"{usd(budget['limit_usd'])} ({budget['used_fraction']:.1%}), resets "
            f"{budget['resets_at']}"
        )
    return "\n".join(lines)


def build_server(services: ServicesFactory | None = None) -> MCPServer[None]:
    """Build the MCP server with its four tools.

    Args:
        services: Returns the services the tools run on; asked on every tool
            call, never before the first. Defaults to the process default
            (``state.context.default_services``, built once per event loop),
            which the server closes when it stops; services from another
            factory are the caller's to keep and to close.

    Returns:
        The server; ``.run("stdio")`` serves it, ``mcp.Client(server)`` connects in-process.
    """
    owns_default = services is None
    tools = RouterTools(services or default_services)

    @asynccontextmanager
    async def lifespan(_server: MCPServer[None]) -> AsyncIterator[None]:
        try:
            yield None
        finally:
            if owns_default:
                with anyio.CancelScope(shield=True):
                    await close_default_services()

    server: MCPServer[None] = MCPServer(
        "hybrid-router",
        title="Hybrid router",
        instructions=INSTRUCTIONS,
        version=_version(),
        log_level="WARNING",
        lifespan=lifespan,
    )
    server.add_tool(
        tools.invoke_serverless,
        title="Ask through the hybrid router",
        annotations=ToolAnnotations(
            read_only_hint=False, destructive_hint=False, open_world_hint=True
        ),
    )
    server.add_tool(
        tools.estimate_cost,
        title="Estimate a prompt's cost",
        annotations=ToolAnnotations(read_only_hint=True, idempotent_hint=True),
    )
    server.add_tool(
        tools.get_usage_stats,
        title="Usage, cost and budgets",
        annotations=ToolAnnotations(read_only_hint=True),
    )
    server.add_tool(
        tools.optimize_costs,
        title="Cost-saving advice",
        annotations=ToolAnnotations(read_only_hint=True),
    )
    return server


def _version() -> str:
    """Return the installed package's version (empty when not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("hybrid-router")
    except PackageNotFoundError:
        return ""


def run_stdio(log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "WARNING") -> None:
    """Serve the MCP server over stdin/stdout until the client disconnects (blocking).

    Logging goes to stderr: stdout carries the protocol.

    Args:
        log_level: Level of the log lines written to stderr.
    """
    logging.basicConfig(
        level=log_level,
        stream=sys.stderr,
        format="%(levelname)s %(name)s: %(message)s",
        force=True,
    )
    build_server().run("stdio")
