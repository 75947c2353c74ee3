"""The planner's output: a Markdown table for the terminal, JSON data, a PNG chart.

The chart is drawn with matplotlib's Agg backend (no display needed): monthly
cost against GPU count, one line per policy, all-serverless as a level line,
the lower bound for setups that meet the latency target dashed, and the
recommendation marked. :func:`progress_bar` is the tqdm bar shown while the
runs go (only on a terminal).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from tqdm import tqdm

from planner.simulate import Plan, Run
from state.reporting.money import usd

LABELS = {
    "router": "router (ours)",
    "old_split": "old: threshold + 80/20 split",
    "all_gpu": "all on GPUs",
    "all_serverless": "all serverless",
}


def progress_bar(total: int) -> tqdm[Any]:
    """Return a bar counting simulated runs on standard error (silent off a terminal)."""
    return tqdm(total=total, desc="simulating", unit="run", disable=None, leave=False)


def _seconds(value: float) -> str:
    if value >= 3600:
        return f"{value / 3600:.1f} h"
    return f"{value:.1f} s" if value >= 10 else f"{value:.2f} s"


def _row(run: Run) -> str:
    util = f"{run.utilisation:.0%}" + (" (queue never drains)" if run.utilisation > 1 else "")
    return (
        f"| {LABELS.get(run.policy, run.policy)} | {run.gpus} | {usd(run.month_cost_usd)} | "
        f"{usd(run.gpu_cost_usd)} | {usd(run.serverless_cost_usd)} | {run.share_gpu:.0%} | "
        f"{util} | {_seconds(run.ttft_p50_s)} / {_seconds(run.ttft_p95_s)} | "
        f"{_seconds(run.e2e_p50_s)} / {_seconds(run.e2e_p95_s)} | {run.late_share:.1%} | "
        f"{usd(run.bound_usd)} | {usd(run.gap_usd)} |"
    )


def markdown(plan: Plan) -> str:
    """Render the plan as Markdown."""
    cfg = plan.config
    lines = [
        "# Capacity plan",
        "",
        f"Workload: {plan.workload} ({plan.requests:,} requests over {plan.period_hours:.0f} h; "
        f"money is per {cfg.month_days:g}-day month).",
        "",
        "| policy | GPUs | month | GPUs | serverless | on GPU | GPU use | first token p50 / p95 "
        "| whole answer p50 / p95 | over target | bound | above bound |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [_row(r) for r in plan.runs]
    lines += [
        "",
        "*bound*: the least any policy could pay with that many GPUs if its GPU requests finish "
        "as soon as this run's did (hindsight, fractional; planner/bound.py). It counts money "
        "only: it may put on a GPU a complex request that the router sends to a better "
        "serverless model, so part of the router's distance from it is the price of quality.",
        "",
        "Lower bound for setups that meet the latency target: "
        + ", ".join(f"{n} GPUs {usd(v)}" for n, v in plan.target_bound_usd.items())
        + ".",
        "",
        f"## Marginal GPU ({LABELS.get(plan.marginal_policy, plan.marginal_policy)})",
        "",
        "Keep the n-th GPU only while the serverless spend it absorbs exceeds its price.",
        "",
        "| GPU | absorbs a month | costs a month | keep |",
        "|---:|---:|---:|---|",
    ]
    lines += [
        f"| {m.gpus} | {usd(m.absorbed_usd)} | {usd(m.price_usd)} | {'yes' if m.keep else 'no'} |"
        for m in plan.marginal
    ]
    lines += ["", f"The rule keeps {plan.marginal_gpus} GPUs.", "", "## Recommendation", ""]
    lines.append(recommendation(plan))
    lines += ["", "Assumptions:", ""] + [f"- {a}" for a in plan.assumptions]
    lines += [
        "",
        f"Simulated {plan.requests_per_second:,.0f} requests/s "
        f"({len(plan.runs)} runs; decide_backend called {plan.decide_backend_calls} times).",
    ]
    return "\n".join(lines)


def recommendation(plan: Plan) -> str:
    """Say which setup to keep and what it saves against the current one (Markdown)."""
    cfg = plan.config
    current = plan.current
    current_text = (
        f"{LABELS.get(current.policy, current.policy)} on {current.gpus} GPUs, "
        f"{usd(current.month_cost_usd)} a month"
    )
    if plan.best is None:
        return (
            f"No setup meets the latency target ({cfg.latency_target_s * 1000:.0f} ms to the "
            "first token for all but "
            f"{cfg.late_share_allowed:.0%} of requests). Current setup: {current_text}."
        )
    best = plan.best
    saving = plan.saving_usd or 0.0
    share = saving / current.month_cost_usd if current.month_cost_usd else 0.0
    return (
        f"Keep **{best.gpus} GPUs** with **{LABELS.get(best.policy, best.policy)}**: "
        f"{usd(best.month_cost_usd)} a month, first token p95 {_seconds(best.ttft_p95_s)}, "
        f"{best.late_share:.1%} of requests over the target. Against the current setup "
        f"({current_text}) that saves {usd(saving)} a month ({share:.0%})."
    )


def chart_data(plan: Plan) -> dict[str, Any]:
    """Return what a chart of the plan draws, as JSON-ready data (the dashboard's).

    Monthly cost against GPU count for each policy (with whether each run
    meets the latency target), the lower bound for setups that meet it, the
    recommended run and the current setup, and the recommendation's text.
    """
    cfg = plan.config
    series = []
    for policy in cfg.policies:
        runs = sorted((r for r in plan.runs if r.policy == policy), key=lambda r: r.gpus)
        if runs:
            series.append(
                {
                    "policy": policy,
                    "label": LABELS.get(policy, policy),
                    "gpus": [r.gpus for r in runs],
                    "month_usd": [r.month_cost_usd for r in runs],
                    "meets_target": [r.meets_target for r in runs],
                }
            )
    counts = sorted(plan.target_bound_usd)

    def run_of(run: Run | None) -> dict[str, Any] | None:
        if run is None:
            return None
        label = LABELS.get(run.policy, run.policy)
        return {
            "policy": run.policy,
            "label": label,
            "gpus": run.gpus,
            "month_usd": run.month_cost_usd,
        }

    return {
        "workload": plan.workload,
        "requests": plan.requests,
        "period_hours": plan.period_hours,
        "month_days": cfg.month_days,
        "hourly_usd": cfg.hourly_usd,
        "latency_target_ms": cfg.latency_target_s * 1000,
        "series": series,
        "bound": {"gpus": counts, "month_usd": [plan.target_bound_usd[n] for n in counts]},
        "best": run_of(plan.best),
        "current": run_of(plan.current),
        "saving_usd": plan.saving_usd,
        "recommendation": recommendation(plan),
    }


def to_json(plan: Plan) -> dict[str, Any]:
    """Return the plan as JSON-ready data."""
    data = dataclasses.asdict(plan)
    data["config"]["capacity"]["throughput"] = {
        model: dataclasses.asdict(t) for model, t in plan.config.capacity.throughput.items()
    }
    data["target_bound_usd"] = {str(n): v for n, v in plan.target_bound_usd.items()}
    data["saving_usd"] = plan.saving_usd
    return data


def chart(plan: Plan, path: str | Path) -> Path:
    """Draw monthly cost against GPU count per policy, with the bound; write a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=110)
    counts = sorted(plan.target_bound_usd)
    for policy in plan.config.policies:
        runs = sorted((r for r in plan.runs if r.policy == policy), key=lambda r: r.gpus)
        if not runs:
            continue
        label = LABELS.get(policy, policy)
        if policy == "all_serverless":
            ax.axhline(runs[0].month_cost_usd, color="grey", linestyle=":", label=label)
            continue
        line = ax.plot([r.gpus for r in runs], [r.month_cost_usd for r in runs], "-", label=label)
        late = [r for r in runs if not r.meets_target]
        if late:
            ax.plot(
                [r.gpus for r in late],
                [r.month_cost_usd for r in late],
                "x",
                color=line[0].get_color(),
                markersize=8,
            )
    ax.plot(
        counts,
        [plan.target_bound_usd[n] for n in counts],
        "k--",
        label="lower bound (meets latency target)",
    )
    if plan.best is not None:
        ax.plot([plan.best.gpus], [plan.best.month_cost_usd], "*", color="gold", markersize=16)
        ax.annotate(
            "recommended",
            (plan.best.gpus, plan.best.month_cost_usd),
            textcoords="offset points",
            xytext=(8, -14),
        )
    ax.set_xlabel("dedicated GPUs")
    ax.set_ylabel(f"cost per {plan.config.month_days:g}-day month (USD)")
    ax.set_title("Monthly cost by GPU count (x: misses the latency target)")
    ax.set_xticks(counts)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out)
    plt.close(fig)
    return out
