"""The ``simulate`` and ``export-trace`` commands: the capacity planner from the command line.

``cli/main.py`` registers them with :func:`add_commands` and runs them with
:func:`run` and :func:`run_export`; this module imports NumPy and the planner
only when a command runs, so the other commands start no slower.

``export-trace`` writes the ledger's answered requests as a trace
(:mod:`state.reporting.trace`); ``simulate --trace FILE`` reads it, and
``simulate --from-ledger`` reads the ledger directly and keeps the plan's chart
data in the ledger, where the dashboard draws it.

Examples::

    hybrid-router simulate --gpus 0-8
    hybrid-router simulate --peak-rps 25 --timezone Europe/Paris --days 14 --chart cost.png
    hybrid-router simulate --trace requests.jsonl --policy router --policy old_split --json
    hybrid-router export-trace --since 2026-11-01 --output november.jsonl
    hybrid-router simulate --from-ledger --since 2026-11-01 --gpus 0-4
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

POLICY_CHOICES = ("router", "old_split", "all_gpu", "all_serverless")


def _pair(text: str) -> tuple[float, float]:
    first, sep, second = text.partition("/")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected PROMPT/OUTPUT, e.g. 300/150, got {text!r}")
    return float(first), float(second)


def _hours(text: str) -> tuple[int, int]:
    first, sep, last = text.partition("-")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected FIRST-LAST hours, e.g. 9-18, got {text!r}")
    return int(first), int(last)


def parse_moment(text: str) -> datetime:
    """Parse an ISO 8601 date or time (a time without a zone is UTC)."""
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an ISO 8601 date or time such as 2026-11-01 or 2026-11-01T09:00+01:00, "
            f"got {text!r}"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _add_range(parser: Any) -> None:
    parser.add_argument(
        "--since",
        type=parse_moment,
        metavar="WHEN",
        help="from this moment (ISO 8601; UTC if bare)",
    )
    parser.add_argument(
        "--until", type=parse_moment, metavar="WHEN", help="before this moment (ISO 8601)"
    )


def parse_gpus(text: str) -> tuple[int, ...]:
    """Parse ``0-8``, ``0,2,4`` or ``3`` into GPU counts."""
    counts: set[int] = set()
    for part in text.split(","):
        first, sep, last = part.strip().partition("-")
        try:
            lo = int(first)
            hi = int(last) if sep else lo
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"--gpus takes counts such as 0-8 or 0,2,4; got {text!r}"
            ) from None
        if lo < 0 or hi < lo:
            raise argparse.ArgumentTypeError(f"--gpus range {part!r} is empty or negative")
        counts.update(range(lo, hi + 1))
    return tuple(sorted(counts))


def add_commands(subparsers: Any) -> None:
    """Register ``simulate`` on the ``hybrid-router`` subcommands."""
    sim = subparsers.add_parser(
        "simulate",
        help="plan GPU capacity: replay a workload through the routing policies",
        description="Replay a synthetic or recorded workload through each routing policy for "
        "a range of GPU counts; print the monthly cost, latency and a recommendation.",
    )
    src = sim.add_argument_group("workload (synthetic unless --trace or --from-ledger is given)")
    src.add_argument("--trace", metavar="FILE", help="JSONL or CSV trace of requests")
    src.add_argument(
        "--from-ledger",
        action="store_true",
        help="the ledger's own requests (DATABASE_URL); the plan is kept for the dashboard",
    )
    _add_range(src)
    src.add_argument("--synthetic", action="store_true", help="the synthetic workload (default)")
    src.add_argument("--days", type=int, default=7)
    src.add_argument("--start", type=date.fromisoformat, default=date(2026, 1, 5))
    src.add_argument("--timezone", default="UTC", help="time zone of the office hours")
    src.add_argument("--peak-rps", type=float, default=10.0, help="weekday office hours")
    src.add_argument("--offpeak-rps", type=float, default=1.0, help="weekday nights")
    src.add_argument("--weekend-rps", type=float, default=0.5)
    src.add_argument("--busy-hours", type=_hours, default=(9, 18), metavar="FIRST-LAST")
    src.add_argument("--complex-share", type=float, default=0.2)
    src.add_argument("--simple-tokens", type=_pair, default=(300.0, 150.0), metavar="IN/OUT")
    src.add_argument("--complex-tokens", type=_pair, default=(2500.0, 800.0), metavar="IN/OUT")
    src.add_argument("--token-sigma", type=float, default=0.5, help="log-normal spread")
    src.add_argument(
        "--cost-priority",
        default="balanced",
        choices=["low_cost", "balanced", "performance", "latency_critical"],
    )
    src.add_argument("--seed", type=int, default=0)
    sweep = sim.add_argument_group("what to compare")
    sweep.add_argument("--gpus", type=parse_gpus, default=tuple(range(9)), help="e.g. 0-8")
    sweep.add_argument(
        "--policy", action="append", choices=POLICY_CHOICES, help="repeat; default: all"
    )
    sweep.add_argument("--current", metavar="POLICY:N", help="today's setup (old_split:MAX)")
    model = sim.add_argument_group("costs and capacity (defaults from the router's settings)")
    model.add_argument("--hourly-usd", type=float, help="price of one GPU instance an hour")
    model.add_argument("--latency-target-ms", type=float, default=2000.0, help="to first token")
    model.add_argument("--serverless-ratio", type=float)
    model.add_argument("--concurrency", type=int, help="requests per instance at once")
    model.add_argument("--queue-limit", type=int, help="waiting requests per instance")
    model.add_argument(
        "--throughput",
        action="append",
        default=[],
        metavar="MODEL=PREFILL/DECODE",
        help="tokens/s per instance at full batch; repeat per model",
    )
    model.add_argument("--month-days", type=float, default=30.0)
    out = sim.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="print the data as JSON")
    out.add_argument("--chart", metavar="FILE", help="write a PNG chart of cost by GPU count")

    export = subparsers.add_parser(
        "export-trace",
        help="write the ledger's requests as a trace for simulate --trace (JSONL or CSV)",
        description="Write the ledger's answered requests (DATABASE_URL) as a trace: "
        "timestamp, prompt and completion tokens, complexity level, and the backend and "
        "model that answered. No message content, users or keys.",
    )
    _add_range(export)
    export.add_argument(
        "--format", choices=["jsonl", "csv"], help="default: from --output's suffix, else jsonl"
    )
    export.add_argument(
        "--output", "-o", metavar="FILE", help="the file to write (default: standard output)"
    )


async def _ledger_trace(settings: Any, args: argparse.Namespace) -> list[dict[str, Any]]:
    from state.ledger import Ledger, build_engine
    from state.reporting.trace import ledger_trace

    ledger = Ledger(build_engine(settings), settings)
    try:
        return await ledger_trace(ledger, args.since, args.until)
    finally:
        await ledger.aclose()


async def _save_plan(settings: Any, source: str, data: dict[str, Any]) -> None:
    from state.ledger import Ledger, build_engine
    from state.reporting.trace import save_plan

    ledger = Ledger(build_engine(settings), settings)
    try:
        await save_plan(ledger, source, data, datetime.now(UTC))
    finally:
        await ledger.aclose()


def _range_text(args: argparse.Namespace) -> str:
    since = args.since.isoformat() if args.since else "the first request"
    until = args.until.isoformat() if args.until else "the last"
    return f"the ledger's requests from {since} to {until}"


def run_export(args: argparse.Namespace) -> int:
    """Run ``export-trace``; return the exit status (2 for a bad input)."""
    from state.reporting.trace import TraceFormat, write_trace
    from state.settings import get_settings

    if args.since and args.until and args.until <= args.since:
        print("export-trace: --until must come after --since", file=sys.stderr)
        return 2
    fmt: TraceFormat = args.format or (
        "csv" if args.output and Path(args.output).suffix.lower() == ".csv" else "jsonl"
    )
    rows = asyncio.run(_ledger_trace(get_settings(), args))
    if args.output:
        with Path(args.output).open("w", encoding="utf-8", newline="") as handle:
            count = write_trace(rows, handle, fmt)
        print(f"{count} requests written to {args.output} ({fmt})", file=sys.stderr)
    else:
        write_trace(rows, sys.stdout, fmt)
    return 0


def _capacity(args: argparse.Namespace, concurrency: int) -> Any:
    from planner.capacity import DEFAULT_THROUGHPUT, CapacityModel, Throughput

    throughput = dict(DEFAULT_THROUGHPUT)
    for item in args.throughput:
        name, sep, rates = item.partition("=")
        if not sep:
            raise ValueError(f"--throughput {item!r}: expected MODEL=PREFILL/DECODE")
        prefill, decode = _pair(rates)
        throughput[name] = Throughput(prefill, decode, "given on the command line")
    return CapacityModel(
        throughput=throughput, concurrency=concurrency, queue_limit=args.queue_limit
    )


def run(args: argparse.Namespace) -> int:
    """Run ``simulate``; return the exit status (2 for a bad input)."""
    from backends.catalog import get_catalog
    from planner import report, workloads
    from planner.simulate import PlanConfig, plan
    from state.settings import Settings, get_settings

    try:
        settings = get_settings()
    except ValueError as error:  # a bad environment must not stop a what-if
        print(f"warning: router settings unreadable, using defaults ({error})", file=sys.stderr)
        settings = Settings.model_construct()
    catalog = get_catalog()
    try:
        if args.trace and args.from_ledger:
            raise ValueError("give --trace FILE or --from-ledger, not both")
        if (args.since or args.until) and not args.from_ledger:
            raise ValueError("--since and --until choose the ledger's requests: add --from-ledger")
        if args.trace:
            workload = workloads.load_trace(
                args.trace, catalog=catalog, cost_priority=args.cost_priority, seed=args.seed
            )
        elif args.from_ledger:
            rows = asyncio.run(_ledger_trace(settings, args))
            if not rows:
                raise ValueError(
                    f"{_range_text(args)}: none answered, nothing to simulate "
                    "(widen --since/--until, or send traffic first)"
                )
            workload = workloads.trace_workload(
                enumerate(rows, start=1),
                "the ledger",
                catalog=catalog,
                cost_priority=args.cost_priority,
                seed=args.seed,
            )
        else:
            spec = workloads.SyntheticSpec(
                days=args.days,
                start=args.start,
                timezone=args.timezone,
                peak_rps=args.peak_rps,
                offpeak_rps=args.offpeak_rps,
                weekend_rps=args.weekend_rps,
                busy_hours=args.busy_hours,
                complex_share=args.complex_share,
                simple_tokens=args.simple_tokens,
                complex_tokens=args.complex_tokens,
                token_sigma=args.token_sigma,
                cost_priority=args.cost_priority,
                seed=args.seed,
            )
            workload = workloads.synthetic(spec, catalog)
        current = None
        if args.current:
            name, _, count = args.current.partition(":")
            current = (name, int(count or 0))
        config = PlanConfig(
            gpus=args.gpus,
            policies=tuple(args.policy or POLICY_CHOICES),
            hourly_usd=settings.gpu_hourly_cost_usd if args.hourly_usd is None else args.hourly_usd,
            latency_target_s=args.latency_target_ms / 1000.0,
            serverless_ratio=(
                settings.serverless_ratio
                if args.serverless_ratio is None
                else args.serverless_ratio
            ),
            capacity=_capacity(args, args.concurrency or settings.gpu_concurrency_per_endpoint),
            current=current,
            month_days=args.month_days,
        )
        planned = config.runs()
        with report.progress_bar(len(planned)) as bar:
            result = plan(workload, config, catalog, on_run=lambda _run: bar.update(1))
    except (ValueError, OSError) as error:
        print(f"simulate: {error}", file=sys.stderr)
        return 2
    if args.from_ledger:
        asyncio.run(_save_plan(settings, _range_text(args), report.chart_data(result)))
        print("plan kept in the ledger: the dashboard draws it", file=sys.stderr)
    if args.chart:
        path = report.chart(result, args.chart)
        print(f"chart written to {path}", file=sys.stderr)
    if args.json:
        print(json.dumps(report.to_json(result), indent=2, default=str))
    else:
        print(report.markdown(result))
    return 0
