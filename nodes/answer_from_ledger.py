"""Answer a question about usage, budgets, costs or savings from the ledger, as Markdown.

Every figure comes from the reporting functions beside the ledger, the same
ones the dashboard, ``/usage``, ``/budget`` and the MCP tools show; this step
only picks the period and the report, and writes the tables. With API keys on,
a run of a key that is not an admin's reads its own user's and team's rows only
(:func:`state.reporting.tenants.tenant_of_run`: the graph API writes the key's
user and team into the run's input).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from langchain_core.messages import AIMessage
from langgraph.runtime import Runtime

from nodes.cost_estimate import estimate
from state.context import Context, Services, resolve_services
from state.reporting.accounting import accounting_lines
from state.reporting.advice import advice_text, advise
from state.reporting.money import usd
from state.reporting.tenants import Tenant, tenant_of_run
from state.reporting.usage import refusals_text, usage_report
from state.reporting.windows import named_period
from state.schemas import ChatState


def period_range(params: dict[str, Any], now: datetime) -> tuple[datetime, datetime, str]:
    """Turn the message's period ("last 7 days", "yesterday", "this month") into a range."""
    assert now.tzinfo is not None
    return named_period(now, now.tzinfo, period=params.get("period"), days=params.get("days"))


def table(header: list[str], rows: list[list[str]]) -> str:
    """Return a Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


async def _usage(
    services: Services, params: dict[str, Any], now: datetime, tenant: Tenant | None
) -> str:
    start, end, label = period_range(params, now)
    settings, catalog, ledger = services.settings, services.catalog, services.ledger
    by_model = await usage_report(ledger, settings, catalog, start, end, "model", tenant)
    by_backend = await usage_report(ledger, settings, catalog, start, end, "backend", tenant)
    totals = by_model["totals"]
    if not totals["requests"]:
        return f"No requests in the ledger for {label}."
    rows = []
    for backend, b in by_backend["groups"].items():
        rows.append(
            [
                backend,
                str(b["requests"]),
                f"{b['total_tokens']:,}",
                usd(b["cost_usd"]),
                f"{b['latency_ms_p50']:.0f}",
                f"{b['latency_ms_p95']:.0f}",
            ]
        )
    header = ["backend", "requests", "tokens", "cost", "p50 ms", "p95 ms"]
    parts = [
        f"**Usage for {label}** ({start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} "
        f"{settings.budget_timezone}): {totals['requests']} requests, "
        f"{totals['total_tokens']:,} tokens, {usd(totals['cost_usd'])}; "
        f"{refusals_text(totals)}.",
        "",
        table(header, rows),
        "",
    ]
    model_rows = [
        [
            model,
            str(m["requests"]),
            f"{m['total_tokens']:,}",
            usd(m["cost_usd"]),
            f"{m['latency_ms_p50']:.0f}",
            f"{m['latency_ms_p95']:.0f}",
        ]
        for model, m in by_model["groups"].items()
    ]
    parts.append(table(["model", *header[1:]], model_rows))
    failed = totals["failed"]
    if failed:
        parts.append(f"\n{failed} request(s) failed ({totals['error_rate']:.1%}).")
    parts += ["", "**Money**", "", *accounting_lines(by_backend["savings"])]
    return "\n".join(parts)


async def _budget(services: Services, user: str | None, team: str | None) -> str:
    status = await services.budgets.status(user, team)
    rows = [
        [
            f"{b['scope']} {b['key']}".strip()
            + f" ({'daily' if b['period'] == 'day' else 'monthly'})",
            usd(b["limit_usd"]),
            usd(b["spent_usd"]),
            usd(b["reserved_usd"]),
            usd(b["remaining_usd"]),
            f"{b['used_fraction']:.1%}",
            b["resets_at"],
        ]
        for b in status
    ]
    header = ["budget", "limit", "spent", "held now", "left", "used", "resets at"]
    return "**Serverless budgets**\n\n" + table(header, rows)


async def _comparison(
    services: Services, params: dict[str, Any], now: datetime, tenant: Tenant | None
) -> str:
    start, end, label = period_range(params, now)
    report = await usage_report(
        services.ledger, services.settings, services.catalog, start, end, "backend", tenant
    )
    s = report["savings"]
    if not report["totals"]["requests"]:
        return f"No requests in the ledger for {label}: nothing to compare yet."
    rows = [
        ["what the router did", usd(s["actual_usd"]), "-"],
        [
            f"everything on dedicated GPUs ({s['all_gpu']['instances']} instance(s))",
            usd(s["all_gpu"]["usd"]),
            usd(s["all_gpu"]["saved_usd"]),
        ],
        [
            f"everything serverless ({s['all_serverless']['model']})",
            usd(s["all_serverless"]["usd"]),
            usd(s["all_serverless"]["saved_usd"]),
        ],
    ]
    how = "How it was computed:\n\n" + "\n".join(accounting_lines(s))
    return (
        f"**Cost comparison for {label}**\n\n"
        + table(["setup", "cost", "the router saved"], rows)
        + "\n\n"
        + how
    )


async def _optimize(
    services: Services, params: dict[str, Any], now: datetime, tenant: Tenant | None
) -> str:
    start, end, label = period_range(params, now)
    settings, catalog, ledger = services.settings, services.catalog, services.ledger
    by_backend = await usage_report(ledger, settings, catalog, start, end, "backend", tenant)
    by_model = await usage_report(ledger, settings, catalog, start, end, "model", tenant)
    budgets = await (
        services.budgets.status(tenant.user, tenant.team) if tenant else services.budgets.status()
    )
    days = max(1, round((end - start).total_seconds() / 86400))
    advice = advise(by_backend, by_model, budgets, settings, catalog, now, days)
    workload = params.get("workload")
    head = f"**Cost advice from the ledger for {label}**"
    if workload:
        head += f" (asked about: {workload})"
    return head + "\n\n" + advice_text(advice)


def _estimate(services: Services, params: dict[str, Any]) -> str:
    text = str(params.get("text") or "")
    result = estimate(
        services.catalog,
        services.settings,
        [{"role": "user", "content": text}],
        services.settings.default_max_tokens,
    )
    wanted = params.get("model")
    models = [m for m in result["models"] if wanted in (None, m["model"])]
    rows = [
        [
            m["model"],
            "yes" if m["fits"] else "no",
            usd(m["input_usd_per_mtok"] * result["prompt_tokens"] / 1e6),
            "not on serverless" if m["worst_case_usd"] is None else usd(m["worst_case_usd"]),
        ]
        for m in models
    ]
    header = ["model", "fits", "prompt only", f"worst case (+{result['max_tokens']} output)"]
    return (
        f"**Cost estimate** for a {result['prompt_tokens']}-token prompt "
        f"({result['complexity']['level']} complexity; the router would pick "
        f"{result['router_pick']['serverless'] or result['router_pick']['gpu']}):\n\n"
        + table(header, rows)
        + f"\n\nPrices per million tokens, read on {result['prices_read_on']}. "
        + result["gpu_pool"]["note"]
    )


async def answer_from_ledger(state: ChatState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Answer the detected question with the ledger's figures (a key's own, unless an admin's)."""
    services = await resolve_services(runtime.context)
    intent = state["intent"]
    params = state.get("params") or {}
    now = services.clock().astimezone(services.settings.zone)
    tenant = tenant_of_run(state.get("user"), state.get("team"), services.settings)
    if intent == "usage_report":
        text = await _usage(services, params, now, tenant)
    elif intent == "budget_status":
        text = await _budget(services, state.get("user"), state.get("team"))
    elif intent == "cost_comparison":
        text = await _comparison(services, params, now, tenant)
    elif intent == "optimize":
        text = await _optimize(services, params, now, tenant)
    elif intent == "cost_estimate":
        text = _estimate(services, params)
    else:
        raise ValueError(f"answer_from_ledger cannot answer intent {intent!r}")
    return {"messages": [AIMessage(text)]}
