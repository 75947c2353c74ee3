"""Replay a workload through each policy and GPU count, and say what to keep.

For each policy and GPU count: the month's cost (instances at the hourly
price for the whole month, plus serverless tokens at the catalog's prices),
each backend's share, GPU utilisation, p50/p95 time to first token and end to
end, the share of requests whose first token comes after the latency target,
and the distance from the lower bound of :mod:`planner.bound`. Then the
marginal-GPU rule (keep the n-th GPU only while the serverless spend it
absorbs exceeds its price) with its figures, and the recommendation: the
cheapest run that meets the latency target (at most ``late_share_allowed`` of
requests over it, i.e. p95 within the target by default) and its saving
against a stated current setup.

A workload shorter or longer than a month is scaled to ``month_days`` days:
the serverless spend in proportion, the instances for the whole month.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from backends.catalog import Catalog
from planner.bound import BoundIndex
from planner.capacity import CapacityModel, simulate_pool
from planner.policies import POLICIES, Candidates, RouterDecisions, candidates, routes
from planner.workloads import Workload
from state.settings import DEFAULT_GPU_HOURLY_USD


@dataclass(frozen=True)
class PlanConfig:
    """The sweep and its assumptions."""

    gpus: tuple[int, ...] = tuple(range(9))
    policies: tuple[str, ...] = POLICIES
    hourly_usd: float = DEFAULT_GPU_HOURLY_USD
    latency_target_s: float = 2.0
    serverless_ratio: float = 0.8
    old_threshold: str = "high"
    capacity: CapacityModel = field(default_factory=CapacityModel)
    current: tuple[str, int] | None = None
    month_days: float = 30.0
    late_share_allowed: float = 0.05

    def current_setup(self) -> tuple[str, int]:
        """Return the setup to compare against: given, or the old split on the most GPUs."""
        return self.current or ("old_split", max(self.gpus))

    def runs(self) -> list[tuple[str, int]]:
        """Return every (policy, GPU count) to simulate, the current setup included."""
        planned: list[tuple[str, int]] = []
        for policy in self.policies:
            if policy not in POLICIES:
                raise ValueError(f"unknown policy {policy!r}; use one of {', '.join(POLICIES)}")
            counts = [0] if policy == "all_serverless" else sorted(set(self.gpus))
            planned += [(policy, n) for n in counts if not (policy == "all_gpu" and n == 0)]
        current = self.current_setup()
        if current not in planned:
            planned.append(current)
        return planned


@dataclass
class Run:
    """One policy on one GPU count; money per month."""

    policy: str
    gpus: int
    requests: int
    refused: int
    month_cost_usd: float
    gpu_cost_usd: float
    serverless_cost_usd: float
    share_gpu: float
    share_serverless: float
    utilisation: float
    ttft_p50_s: float
    ttft_p95_s: float
    e2e_p50_s: float
    e2e_p95_s: float
    late_share: float
    meets_target: bool
    max_sojourn_s: float
    bound_usd: float
    gap_usd: float
    sim_seconds: float


def _without_residue(amount: float) -> float:
    """Return ``amount``, or 0 for a float-rounding residue (under a millionth of a dollar)."""
    return 0.0 if abs(amount) < 1e-6 else amount


@dataclass
class MarginalRow:
    """What the n-th GPU absorbs in a month against what it costs."""

    gpus: int
    absorbed_usd: float
    price_usd: float
    keep: bool


@dataclass
class Plan:
    """Every run, the bounds, the marginal rule and the recommendation."""

    config: PlanConfig
    workload: str
    requests: int
    period_hours: float
    month_factor: float
    runs: list[Run]
    target_bound_usd: dict[int, float]
    marginal_policy: str
    marginal: list[MarginalRow]
    marginal_gpus: int | None
    best: Run | None
    current: Run
    assumptions: list[str]
    requests_per_second: float
    decide_backend_calls: int

    @property
    def saving_usd(self) -> float | None:
        """Return the monthly saving of the recommendation against the current setup."""
        return None if self.best is None else self.current.month_cost_usd - self.best.month_cost_usd


def serverless_price(workload: Workload, cands: Candidates, catalog: Catalog) -> np.ndarray:
    """Return each request's price on its serverless model (0 when it has none)."""
    models = catalog.models
    inp = np.array([m.input_usd_per_mtok for m in models] + [0.0])
    out = np.array([m.output_usd_per_mtok for m in models] + [0.0])
    idx = np.where(cands.serverless >= 0, cands.serverless, len(models))
    return (workload.prompt_tokens * inp[idx] + workload.output_tokens * out[idx]) / 1_000_000


def plan(
    workload: Workload,
    config: PlanConfig,
    catalog: Catalog,
    on_run: Callable[[Run], None] | None = None,
) -> Plan:
    """Simulate every run of ``config`` on ``workload``."""
    cap = config.capacity
    cands = candidates(workload, catalog)
    value = serverless_price(workload, cands, catalog)
    work, prefill, decode = cap.gpu_times(
        workload.model_ids, cands.gpu, workload.prompt_tokens, workload.output_tokens
    )
    hold = work * cap.concurrency
    ttft_gpu = cap.gpu_overhead_s + prefill
    e2e_gpu = ttft_gpu + decode
    e2e_sl = cap.serverless_ttft_s + workload.output_tokens / cap.serverless_decode_tps
    index = BoundIndex(workload.arrival_s, value, work)
    hours = workload.duration_s / 3600.0
    factor = config.month_days * 86_400.0 / workload.duration_s
    month_hours = config.month_days * 24.0
    decisions = RouterDecisions(catalog, config.serverless_ratio)
    runs: list[Run] = []
    for policy, n in config.runs():
        started = time.perf_counter()
        table = routes(
            policy,
            workload,
            cands,
            gpus=n,
            serverless_ratio=config.serverless_ratio,
            catalog=catalog,
            old_threshold=config.old_threshold,
            decisions=decisions,
        )
        pool = simulate_pool(
            workload.arrival_s,
            hold,
            ttft_gpu,
            table.on_free & ~table.refused,
            table.on_busy & ~table.refused,
            slots=n * cap.concurrency,
            queue_limit=None if cap.queue_limit is None else cap.queue_limit * n,
            overflow=table.overflow,
            max_wait_s=config.latency_target_s,
        )
        served = ~table.refused
        on_sl = served & ~pool.on_gpu
        ttft = np.where(pool.on_gpu, pool.wait_s + ttft_gpu, cap.serverless_ttft_s)[served]
        e2e = np.where(pool.on_gpu, pool.wait_s + e2e_gpu, e2e_sl)[served]
        count = max(int(served.sum()), 1)
        ttft_q = np.percentile(ttft, [50, 95]) if ttft.size else np.zeros(2)
        e2e_q = np.percentile(e2e, [50, 95]) if e2e.size else np.zeros(2)
        late = float((ttft > config.latency_target_s).sum()) / count
        sl_cost = float(value[on_sl].sum()) * factor
        gpu_cost = n * config.hourly_usd * month_hours
        floor, _ = index.serverless_floor(n, pool.max_sojourn_s)
        # requests no backend may serve cost this run nothing: the bound drops their price
        floor = max(floor - float(value[table.refused].sum()), 0.0)
        bound = gpu_cost + floor * factor
        run = Run(
            policy=policy,
            gpus=n,
            requests=len(workload),
            refused=int(table.refused.sum()),
            month_cost_usd=gpu_cost + sl_cost,
            gpu_cost_usd=gpu_cost,
            serverless_cost_usd=sl_cost,
            share_gpu=float(pool.on_gpu.sum()) / count,
            share_serverless=float(on_sl.sum()) / count,
            utilisation=float(work[pool.on_gpu].sum()) / (n * workload.duration_s) if n else 0.0,
            ttft_p50_s=float(ttft_q[0]),
            ttft_p95_s=float(ttft_q[1]),
            e2e_p50_s=float(e2e_q[0]),
            e2e_p95_s=float(e2e_q[1]),
            late_share=late,
            meets_target=late <= config.late_share_allowed,
            max_sojourn_s=pool.max_sojourn_s,
            bound_usd=bound,
            # the bound equals the cost to rounding when the pool takes everything
            gap_usd=_without_residue(gpu_cost + sl_cost - bound),
            sim_seconds=time.perf_counter() - started,
        )
        runs.append(run)
        if on_run is not None:
            on_run(run)
    longest_hold = float(hold[np.isfinite(hold)].max()) if np.isfinite(hold).any() else 0.0
    target_bound = {
        n: n * config.hourly_usd * month_hours
        + index.serverless_floor(n, config.latency_target_s + longest_hold)[0] * factor
        for n in sorted(set(config.gpus))
    }
    marginal_policy = "router" if "router" in config.policies else config.current_setup()[0]
    marginal, marginal_gpus = marginal_rule(runs, marginal_policy, config.hourly_usd * month_hours)
    eligible = [r for r in runs if r.meets_target and r.refused == 0]
    best = min(eligible, key=lambda r: (r.month_cost_usd, r.gpus)) if eligible else None
    current = next(r for r in runs if (r.policy, r.gpus) == config.current_setup())
    total_s = sum(r.sim_seconds for r in runs)
    return Plan(
        config=config,
        workload=workload.description,
        requests=len(workload),
        period_hours=hours,
        month_factor=factor,
        runs=runs,
        target_bound_usd=target_bound,
        marginal_policy=marginal_policy,
        marginal=marginal,
        marginal_gpus=marginal_gpus,
        best=best,
        current=current,
        assumptions=assumptions(config, catalog, factor),
        requests_per_second=len(workload) * len(runs) / total_s if total_s > 0 else 0.0,
        decide_backend_calls=decisions.calls,
    )


def marginal_rule(
    runs: list[Run], policy: str, price_usd: float
) -> tuple[list[MarginalRow], int | None]:
    """Keep adding GPUs while the next one absorbs more serverless spend than it costs.

    Returns:
        One row per GPU count after the smallest, and the count the rule keeps
        (None when the policy was not simulated on consecutive counts).
    """
    by_n = {r.gpus: r for r in runs if r.policy == policy}
    counts = sorted(by_n)
    rows: list[MarginalRow] = []
    chosen: int | None = counts[0] if counts else None
    stopped = False
    for prev, n in itertools.pairwise(counts):
        if n != prev + 1:
            break
        absorbed = by_n[prev].serverless_cost_usd - by_n[n].serverless_cost_usd
        keep = absorbed > price_usd
        rows.append(MarginalRow(gpus=n, absorbed_usd=absorbed, price_usd=price_usd, keep=keep))
        if keep and not stopped:
            chosen = n
        else:
            stopped = True
    return rows, chosen


def assumptions(config: PlanConfig, catalog: Catalog, factor: float) -> list[str]:
    """State the plan's assumptions in plain words."""
    cap = config.capacity
    lines = [
        f"Serverless prices are the catalog's ({catalog.prices_source}, read on "
        f"{catalog.prices_read_on}); each request is priced on the model the router would "
        "pick for it on serverless.",
        f"A GPU instance costs ${config.hourly_usd:.2f} an hour and is paid for every hour of "
        f"a {config.month_days:g}-day month, busy or idle.",
        f"Each instance runs {cap.concurrency} requests at once and serves every GPU model of "
        "the catalog; a request waits in one first-come-first-served queue when all are busy"
        + (
            "."
            if cap.queue_limit is None
            else f", which holds at most {cap.queue_limit} per instance."
        ),
    ]
    for model, t in cap.throughput.items():
        lines.append(
            f"{model}: {t.prefill_tps:,.0f} prompt and {t.decode_tps:,.0f} output tokens/s per "
            f"instance at full batch ({t.source})."
        )
    lines += [
        f"Serverless answers start after {cap.serverless_ttft_s:g} s and stream "
        f"{cap.serverless_decode_tps:g} tokens/s (assumption).",
        f"The latency target is {config.latency_target_s * 1000:.0f} ms to the first token; a "
        f"setup meets it when at most {config.late_share_allowed:.0%} of requests are over it. "
        "Under the router and the old split, a request sent to a full pool that would miss it "
        "goes to serverless instead (the graph's fallback edge).",
        f"SERVERLESS_RATIO is {config.serverless_ratio:g}; the old split sends requests at or "
        f"above '{config.old_threshold}' complexity to serverless and the rest at random.",
        f"The workload's costs are scaled by {factor:.3g} to a {config.month_days:g}-day month.",
    ]
    return lines
