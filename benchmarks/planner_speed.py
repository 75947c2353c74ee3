"""How fast the capacity planner simulates: a day and a week of flat 10 requests/s traffic.

.venv/bin/python benchmarks/planner_speed.py [--days 1 7] [--month]

For each period: the time to generate the workload, to prepare it (model
candidates, prices, the bound's sort), and each run of the full sweep (four
policies, 0-8 GPUs: 27 runs), as requests simulated per second; then the
extrapolation to a month (30 days at 10 requests/s: 25.9 million requests), for
one run and for the whole sweep, on one core. Times are CPU time of this
process (``time.process_time``), so other work on a shared machine does not
inflate them; wall time is printed beside. ``--month`` runs the month for the
router policy for real (about 5 GB of memory).
"""

from __future__ import annotations

import argparse
import time

from backends.catalog import get_catalog
from planner.simulate import PlanConfig, Run, plan
from planner.workloads import SyntheticSpec, synthetic

RATE = 10.0
MONTH_REQUESTS = RATE * 30 * 86_400


def flat(days: int) -> SyntheticSpec:
    return SyntheticSpec(days=days, peak_rps=RATE, offpeak_rps=RATE, weekend_rps=RATE, seed=1)


def measure(days: int, policies: tuple[str, ...]) -> tuple[float, float, float]:
    catalog = get_catalog()
    started = time.process_time()
    workload = synthetic(flat(days), catalog)
    generated = time.process_time() - started
    cpu: list[tuple[float, Run]] = []
    mark = [time.process_time()]

    def on_run(run: Run) -> None:
        now = time.process_time()
        cpu.append((now - mark[0], run))
        mark[0] = now

    wall = time.perf_counter()
    started = time.process_time()
    plan(workload, PlanConfig(policies=policies), catalog, on_run=on_run)
    total = time.process_time() - started
    wall = time.perf_counter() - wall
    # each run's CPU time counts from the previous run's end; the first one's holds the
    # preparation, less that run's own (wall) time
    prep = cpu[0][0] - cpu[0][1].sim_seconds
    per_run = [(cpu[0][1].sim_seconds, cpu[0][1]), *cpu[1:]]
    in_runs = sum(t for t, _ in per_run)
    n = len(workload)
    print(f"\n{days} day(s): {n:,} requests, generated in {generated:.2f} s")
    print(f"  preparation (candidates, prices, bound index): {prep:.2f} s")
    slow_t, slowest = max(per_run, key=lambda x: x[0])
    fast_t, fastest = min(per_run, key=lambda x: x[0])
    print(
        f"  {len(per_run)} runs in {in_runs:.2f} s CPU: {n * len(per_run) / in_runs:,.0f} "
        f"requests/s overall; slowest {slowest.policy} on {slowest.gpus} GPUs "
        f"{n / slow_t:,.0f}/s, fastest {fastest.policy} on {fastest.gpus} GPUs {n / fast_t:,.0f}/s"
    )
    print(f"  all of plan(): {total:.1f} s CPU, {wall:.1f} s wall")
    return n / prep, n * len(per_run) / in_runs, n / slow_t


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--days", type=int, nargs="+", default=[1, 7])
    parser.add_argument("--month", action="store_true", help="also run 30 days of the router")
    args = parser.parse_args()
    policies = ("router", "old_split", "all_gpu", "all_serverless")
    figures = [measure(days, policies) for days in args.days]
    prep_rate, run_rate, worst_rate = figures[-1]
    runs = len(PlanConfig(policies=policies).runs())
    prep = MONTH_REQUESTS / prep_rate
    one = MONTH_REQUESTS / run_rate
    worst = MONTH_REQUESTS / worst_rate
    print(f"\nA month at {RATE:g} requests/s = {MONTH_REQUESTS / 1e6:.1f} million requests:")
    print(f"  one run: about {one:.0f} s on average, {worst:.0f} s for the slowest kind")
    print(
        f"  the whole sweep ({runs} runs): about {(prep + one * runs) / 60:.1f} minutes "
        f"on one core ({prep:.0f} s of it preparation)"
    )
    if args.month:
        catalog = get_catalog()
        started = time.process_time()
        workload = synthetic(flat(30), catalog)
        made = time.process_time() - started
        started = time.process_time()
        config = PlanConfig(policies=("router",), gpus=(2,), current=("router", 2))
        result = plan(workload, config, catalog)
        took = time.process_time() - started
        print(
            f"\n  measured: {len(workload):,} requests generated in {made:.1f} s CPU; one router "
            f"run on 2 GPUs with its preparation in {took:.1f} s CPU "
            f"({result.runs[0].sim_seconds:.1f} s wall in the run)"
        )


if __name__ == "__main__":
    main()
