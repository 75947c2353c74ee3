"""The capacity planner: workloads, the pool simulation, the policies, the bound, the plan."""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from backends.catalog import get_catalog
from nodes import choose_backend
from planner import cli as planner_cli
from planner.bound import BoundIndex, lower_bound
from planner.capacity import CapacityModel, Throughput, simulate_pool
from planner.policies import RouterDecisions
from planner.simulate import PlanConfig, plan
from planner.workloads import (
    SyntheticSpec,
    TraceError,
    Workload,
    hourly_rates,
    load_trace,
    synthetic,
)

CATALOG = get_catalog()
SMALL = "llama3.1-8b-instruct"
BIG = "llama3.1-70b-instruct-fp8"
PRICE_8B = CATALOG.by_id[SMALL].cost_usd(1000, 1000)  # 6.5e-5 USD


def workload(
    arrival: Any,
    *,
    prompt: int = 1000,
    output: int = 1000,
    level: int = 0,
    duration_s: float,
    bucket: float | None = None,
    seed: int = 0,
) -> Workload:
    """Requests of one size at the given times (tier from the level, model auto)."""
    t = np.sort(np.asarray(arrival, dtype=np.float64))
    n = t.size
    tier = {0: 1, 1: 2, 2: 3}[level]
    buckets = np.full(n, bucket) if bucket is not None else np.random.default_rng(seed).random(n)
    return Workload(
        arrival_s=t,
        prompt_tokens=np.full(n, prompt, dtype=np.int64),
        output_tokens=np.full(n, output, dtype=np.int64),
        level=np.full(n, level, dtype=np.int8),
        tier=np.full(n, tier, dtype=np.int8),
        model=np.full(n, -1, dtype=np.int16),
        bucket=buckets,
        duration_s=duration_s,
        start=datetime(2026, 1, 5, tzinfo=UTC),
        model_ids=tuple(CATALOG.ids()),
        description="test",
    )


def one_second_model(concurrency: int = 1) -> CapacityModel:
    """A request of 1000 + 1000 tokens on the 8B model is exactly 1 instance-second of work."""
    return CapacityModel(
        throughput={SMALL: Throughput(2000.0, 2000.0), BIG: Throughput(1000.0, 1000.0)},
        concurrency=concurrency,
    )


def run_of(result: Any, policy: str, gpus: int) -> Any:
    return next(r for r in result.runs if r.policy == policy and r.gpus == gpus)


def test_traffic_that_fits_one_gpu_exactly() -> None:
    w = workload(np.arange(3600.0), duration_s=3600.0)
    config = PlanConfig(gpus=(0, 1), capacity=one_second_model(), latency_target_s=2.0)
    result = plan(w, config, CATALOG)
    for policy in ("all_gpu", "router"):
        run = run_of(result, policy, 1)
        assert run.share_gpu == 1.0
        assert run.utilisation == pytest.approx(1.0)
        assert run.late_share == 0.0
        assert run.ttft_p95_s == pytest.approx(0.05 + 0.5)  # overhead + prefill, no wait
        assert run.serverless_cost_usd == 0.0
    # a request more per hundred and the queue never drains
    denser = workload(np.arange(3636) * (3600.0 / 3636), duration_s=3600.0)
    run = run_of(plan(denser, config, CATALOG), "all_gpu", 1)
    assert run.max_sojourn_s > 30.0
    assert run.utilisation > 1.0


def test_no_gpus_costs_the_trace_at_catalog_prices(tmp_path: Path) -> None:
    rows = [
        (1000, 50, "low", SMALL),
        (2000, 100, "high", BIG),
        (300, 900, "medium", "llama-4-maverick-17b-128e-instruct-fp8"),
        (400, 40, "low", None),  # auto, low: tier 1, the 8B model
        (5000, 700, "high", None),  # auto, high: tier 3, maverick on serverless
    ]
    expected_models = [SMALL, BIG, "llama-4-maverick-17b-128e-instruct-fp8", SMALL]
    expected_models.append("llama-4-maverick-17b-128e-instruct-fp8")
    lines = []
    for i, (p, c, level, model) in enumerate(rows * 20):
        row: dict[str, Any] = {
            "timestamp": 1_767_600_000 + 7 * i,
            "prompt_tokens": p,
            "completion_tokens": c,
            "complexity_level": level,
        }
        if model:
            row["model"] = model
        lines.append(json.dumps(row))
    path = tmp_path / "trace.jsonl"
    path.write_text("\n".join(lines) + "\n")
    expected = 20 * sum(
        CATALOG.by_id[m].cost_usd(p, c)
        for (p, c, _, _), m in zip(rows, expected_models, strict=True)
    )
    w = load_trace(path, catalog=CATALOG)
    result = plan(w, PlanConfig(gpus=(0,)), CATALOG)
    assert {r.policy for r in result.runs} == {"router", "old_split", "all_serverless"}
    for run in result.runs:
        assert run.gpu_cost_usd == 0.0
        assert run.serverless_cost_usd / result.month_factor == pytest.approx(expected)
        assert run.bound_usd == pytest.approx(run.month_cost_usd)


def test_a_flat_load_is_cheapest_all_on_gpus() -> None:
    # one request every 0.5 s, each holding one of 2 slots for 2 s: exactly 2 GPUs
    w = workload(np.arange(14_400) * 0.5, duration_s=7200.0)
    config = PlanConfig(gpus=(0, 1, 2, 3), hourly_usd=0.1, capacity=one_second_model(2))
    result = plan(w, config, CATALOG)
    all_gpu = run_of(result, "all_gpu", 2)
    assert all_gpu.share_gpu == 1.0
    assert all_gpu.late_share == 0.0
    assert all_gpu.month_cost_usd == pytest.approx(2 * 0.1 * 720)
    meeting = [r for r in result.runs if r.meets_target]
    assert all_gpu.month_cost_usd <= min(r.month_cost_usd for r in meeting) + 1e-9
    assert result.best is not None
    assert result.best.gpus == 2
    assert result.best.month_cost_usd == pytest.approx(all_gpu.month_cost_usd)
    assert run_of(result, "all_serverless", 0).month_cost_usd > 2 * all_gpu.month_cost_usd
    assert result.target_bound_usd[2] == pytest.approx(all_gpu.month_cost_usd)


def test_a_spiky_load_is_cheapest_all_serverless() -> None:
    # 300 large requests in the first 10 s of each hour: a GPU would idle the rest of it
    bursts = [h * 3600.0 + np.arange(300) / 30.0 for h in range(24)]
    w = workload(np.concatenate(bursts), prompt=20_000, output=2000, duration_s=86_400.0)
    result = plan(w, PlanConfig(gpus=(0, 1, 2, 4)), CATALOG)
    serverless = run_of(result, "all_serverless", 0)
    assert result.best is not None
    assert result.best.gpus == 0
    assert result.best.month_cost_usd == pytest.approx(serverless.month_cost_usd)
    assert all(r.month_cost_usd > serverless.month_cost_usd for r in result.runs if r.gpus > 0)
    assert result.marginal_gpus == 0
    assert all(not m.keep for m in result.marginal)


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_the_bound_is_never_above_any_policy(seed: int) -> None:
    spec = SyntheticSpec(days=1, peak_rps=1.5, offpeak_rps=0.2, weekend_rps=0.1, seed=seed)
    w = synthetic(spec, CATALOG)
    config = PlanConfig(gpus=(0, 1, 2, 3), hourly_usd=0.05, capacity=CapacityModel(concurrency=4))
    result = plan(w, config, CATALOG)
    for run in result.runs:
        assert run.bound_usd <= run.month_cost_usd + 1e-9, (run.policy, run.gpus)
        if run.policy in ("router", "old_split"):
            # they overflow instead of waiting past the target: the target bound holds too
            assert result.target_bound_usd[run.gpus] <= run.month_cost_usd + 1e-9
    assert any(r.gap_usd > 0 for r in result.runs)


def test_the_marginal_rule_agrees_with_the_simulated_optimum() -> None:
    # three streams of 1-second requests: every second all along, every second for
    # the first hour, every second for the first 720 s. One slot per GPU.
    a = np.arange(7200.0)
    b = np.arange(3600.0) + 0.25
    c = np.arange(720.0) + 0.5
    w = workload(np.concatenate([a, b, c]), duration_s=7200.0)
    config = PlanConfig(
        gpus=(0, 1, 2, 3),
        policies=("router",),
        hourly_usd=0.15,
        serverless_ratio=1.0,  # every request may overflow
        capacity=one_second_model(),
        latency_target_s=60.0,
    )
    result = plan(w, config, CATALOG)
    month = 360.0  # 30 days / 2 hours
    absorbed = [m.absorbed_usd / month for m in result.marginal]
    assert absorbed == pytest.approx([7200 * PRICE_8B, 3600 * PRICE_8B, 720 * PRICE_8B])
    assert [m.keep for m in result.marginal] == [True, False, False]  # 0.468, 0.234, 0.047 vs 0.30
    costs = {r.gpus: r.month_cost_usd / month for r in result.runs}
    assert costs[1] == pytest.approx(0.30 + 4320 * PRICE_8B)
    assert min(costs, key=lambda n: costs[n]) == result.marginal_gpus == 1
    assert result.best is not None
    assert result.best.gpus == 1


def test_the_synthetic_week_has_the_described_shape() -> None:
    spec = SyntheticSpec(
        days=14,
        start=date(2026, 1, 5),
        timezone="Europe/Paris",
        peak_rps=2.0,
        offpeak_rps=0.2,
        weekend_rps=0.1,
        seed=7,
    )
    w = synthetic(spec, CATALOG)
    start, rates = hourly_rates(spec)
    assert start == datetime(2026, 1, 4, 23, tzinfo=UTC)  # Monday 00:00 in Paris
    assert rates[8] == 0.2
    assert rates[9] == 2.0
    assert rates[17] == 2.0
    assert rates[18] == 0.2
    assert rates[5 * 24 + 12] == 0.1  # Saturday noon
    per_hour = np.bincount((w.arrival_s // 3600).astype(int), minlength=rates.size) / 3600
    for rate in (2.0, 0.2, 0.1):
        measured = per_hour[rates == rate].mean()
        assert measured == pytest.approx(rate, rel=0.03)
    day = per_hour[rates == 2.0].mean()
    assert day / per_hour[rates == 0.2].mean() == pytest.approx(10, rel=0.05)
    assert day / per_hour[rates == 0.1].mean() == pytest.approx(20, rel=0.05)
    complex_ = w.level == 2
    assert complex_.mean() == pytest.approx(0.2, abs=0.005)
    assert set(np.unique(w.level)) == {0, 2}
    assert w.prompt_tokens[~complex_].mean() == pytest.approx(300, rel=0.03)
    assert w.output_tokens[complex_].mean() == pytest.approx(800, rel=0.03)
    assert set(np.unique(w.tier[complex_])) == {3}
    again = synthetic(spec, CATALOG)
    assert np.array_equal(again.arrival_s, w.arrival_s)


def test_a_bad_trace_line_is_named(tmp_path: Path) -> None:
    good = '{"timestamp": 1767600000, "prompt_tokens": 10, "completion_tokens": 5}'
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text(f"{good}\n{good}\n{{not json\n{good}\n")
    with pytest.raises(TraceError, match=r"t\.jsonl, line 3: not JSON"):
        load_trace(jsonl, catalog=CATALOG)
    jsonl.write_text(f'{good}\n{{"timestamp": 1, "prompt_tokens": -4, "completion_tokens": 1}}\n')
    with pytest.raises(TraceError, match="line 2: prompt_tokens must be a whole number"):
        load_trace(jsonl, catalog=CATALOG)
    csv_path = tmp_path / "t.csv"
    csv_path.write_text(
        "timestamp,prompt_tokens,completion_tokens,model\n"
        "2026-01-05T09:00:00Z,100,20,auto\n"
        "2026-01-05T09:00:01Z,100,20,gpt-9\n"
    )
    with pytest.raises(TraceError, match=r"t\.csv, line 3: model 'gpt-9' is not in the catalog"):
        load_trace(csv_path, catalog=CATALOG)
    csv_path.write_text("timestamp,prompt_tokens,completion_tokens\nyesterday,1,1\n")
    with pytest.raises(TraceError, match="line 2"):
        load_trace(csv_path, catalog=CATALOG)


def _reference_pool(
    arrival: np.ndarray, hold: np.ndarray, free_ok: np.ndarray, busy_ok: np.ndarray, slots: int
) -> tuple[np.ndarray, np.ndarray]:
    """One request at a time on a heap: the definition the chunked simulation must match."""
    heap = [0.0] * slots
    on_gpu = np.zeros(arrival.size, dtype=bool)
    wait = np.zeros(arrival.size)
    for i in range(arrival.size):
        if not free_ok[i]:
            continue
        if heap[0] > arrival[i] and not busy_ok[i]:
            continue
        start = max(heap[0], arrival[i])
        heapq.heapreplace(heap, start + hold[i])
        on_gpu[i], wait[i] = True, start - arrival[i]
    return on_gpu, wait


@pytest.mark.parametrize("slots", [1, 3, 16, 64])
def test_the_chunked_simulation_is_exact(slots: int) -> None:
    rng = np.random.default_rng(slots)
    n = 5000
    arrival = np.sort(rng.random(n) * 1000.0)
    hold = rng.exponential(slots / 5.0, n)  # load around 1: both paths run
    free_ok = rng.random(n) < 0.9
    busy_ok = free_ok & (rng.random(n) < 0.3)
    expected_gpu, expected_wait = _reference_pool(arrival, hold, free_ok, busy_ok, slots)
    out = simulate_pool(
        arrival,
        hold,
        np.zeros(n),
        free_ok,
        busy_ok,
        slots=slots,
        queue_limit=None,
        overflow=False,
        max_wait_s=1.0,
    )
    assert np.array_equal(out.on_gpu, expected_gpu)
    assert np.allclose(out.wait_s, expected_wait)
    assert out.chunks_vectorised > 0
    assert out.chunks_replayed > 0


def _brute_force_floor(
    a: list[float], w: list[float], v: list[float], slots: int, d: float
) -> float:
    """Least serverless spend over every GPU subset and start order that meets the delay."""
    best = sum(v)
    for size in range(1, len(a) + 1):
        for chosen in itertools.combinations(range(len(a)), size):
            for order in itertools.permutations(chosen):
                free = [0.0] * slots
                ok = True
                for i in order:
                    k = min(range(slots), key=lambda s: free[s])
                    start = max(free[k], a[i])
                    free[k] = start + w[i]
                    if free[k] > a[i] + d + 1e-12:
                        ok = False
                        break
                if ok:
                    best = min(best, sum(v) - sum(v[i] for i in chosen))
                    break
    return best


def test_the_bound_is_below_brute_force_optima() -> None:
    rng = np.random.default_rng(11)
    bit = 0
    for _ in range(40):
        n = int(rng.integers(3, 6))
        a = np.sort(rng.random(n) * 6.0)
        w = rng.uniform(0.5, 3.0, n)
        v = rng.uniform(0.1, 2.0, n)
        gpus, concurrency = int(rng.integers(1, 3)), int(rng.integers(1, 3))
        d = float(rng.uniform(1.0, 4.0))
        hold = w * concurrency  # a slot holds a request concurrency x its work
        optimum = _brute_force_floor(a.tolist(), hold.tolist(), v.tolist(), gpus * concurrency, d)
        floor, _ = BoundIndex(a, v, w, windows_s=(1.0, 2.0, 5.0)).serverless_floor(gpus, d)
        assert floor <= optimum + 1e-9
        bit += floor > 1e-9
        total = lower_bound(
            a, v, w, gpus=gpus, hourly_usd=2.0, hours=1.0, max_delay_s=d, windows_s=(2.0,)
        )
        assert total <= 2.0 * gpus + optimum + 1e-9
    assert bit > 5  # the bound says something, not only zero


def test_the_router_policy_is_the_graphs_own(monkeypatch: pytest.MonkeyPatch) -> None:
    decisions = RouterDecisions(CATALOG, 0.8)
    small = CATALOG.ids().index(SMALL)
    big = CATALOG.ids().index(BIG)
    maverick = CATALOG.ids().index("llama-4-maverick-17b-128e-instruct-fp8")
    assert decisions.backend(small, small, True, busy=False, pool=True) == "gpu"
    assert decisions.backend(small, small, True, busy=True, pool=True) == "serverless"
    assert decisions.backend(small, small, False, busy=True, pool=True) == "gpu"
    assert decisions.backend(big, maverick, True, busy=False, pool=True) == "serverless"
    assert decisions.backend(big, maverick, False, busy=False, pool=True) == "gpu"
    assert decisions.backend(small, small, False, busy=False, pool=False) == "serverless"
    assert decisions.calls == 6

    w = workload(np.arange(600.0), duration_s=3600.0)
    config = PlanConfig(gpus=(1,), policies=("router",), capacity=one_second_model())
    assert run_of(plan(w, config, CATALOG), "router", 1).share_gpu == 1.0
    monkeypatch.setattr(choose_backend, "decide_backend", lambda *a: ("serverless", "patched"))
    assert run_of(plan(w, config, CATALOG), "router", 1).share_gpu == 0.0


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="hybrid-router")
    planner_cli.add_commands(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["simulate", *argv])


def test_the_simulate_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    chart = tmp_path / "cost.png"
    args = _parse(
        "--days", "2", "--peak-rps", "0.5", "--offpeak-rps", "0.05", "--weekend-rps", "0.05",
        "--gpus", "0-2", "--hourly-usd", "0.2", "--latency-target-ms", "3000",
        "--json", "--chart", str(chart), "--seed", "3",
    )  # fmt: skip
    assert args.gpus == (0, 1, 2)
    assert planner_cli.run(args) == 0
    data = json.loads(capsys.readouterr().out)
    assert {r["policy"] for r in data["runs"]} == {
        "router",
        "old_split",
        "all_gpu",
        "all_serverless",
    }
    assert data["config"]["hourly_usd"] == 0.2
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    assert planner_cli.run(_parse("--days", "1", "--peak-rps", "0.2", "--gpus", "0-1")) == 0
    text = capsys.readouterr().out
    assert "| router (ours) | 1 |" in text
    assert "## Recommendation" in text

    bad = tmp_path / "bad.csv"
    bad.write_text("timestamp,prompt_tokens,completion_tokens\n1,2,x\n")
    assert planner_cli.run(_parse("--trace", str(bad))) == 2
    assert "bad.csv, line 2" in capsys.readouterr().err


def test_a_trace_without_levels_is_scored_by_the_routers_own_weights(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text(
        "timestamp,prompt_tokens,completion_tokens\n"
        "2026-01-05T09:00:00,10,20\n"
        "2026-01-05T09:00:03,3000,4096\n"
        "2026-01-05T08:59:59,10,20\n"
    )
    w = load_trace(path, catalog=CATALOG)
    # prompt length (0.25) plus requested output (0.15) reach medium, never high, by tokens alone
    assert w.level.tolist() == [0, 0, 1]
    assert w.tier.tolist() == [1, 1, 2]
    assert w.arrival_s.tolist() == [0.0, 1.0, 4.0]  # sorted by time
    assert w.duration_s == 3600.0
