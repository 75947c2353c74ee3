"""Workloads for the capacity planner: a seeded synthetic office-hours week, or a real trace.

A workload is a set of NumPy arrays, one entry per request, sorted by arrival:
arrival time (seconds from the start), prompt and output tokens, complexity
level (0 low, 1 medium, 2 high), the model tier the request needs, the model
it asked for by name (-1: ``auto``) and its request-id bucket (a uniform number
in [0, 1) standing in for the router's stable hash of the request id).

The synthetic generator has the shape platform teams describe: busy from 09:00
to 18:00 on weekdays in a chosen time zone, little at night and at weekends;
about 80 % short simple requests and 20 % long complex ones. Arrivals are a
Poisson process whose rate is constant within each hour; token counts are
log-normal around the given means. Every knob is a field of
:class:`SyntheticSpec`.

Traces are JSONL or CSV with the columns ``timestamp`` (epoch seconds or ISO
8601), ``prompt_tokens``, ``completion_tokens`` and optionally
``complexity_level`` (low/medium/high or 0/1/2) and ``model`` (a catalog id,
or ``auto``). Without a level, the level is the one the router's own scoring
(``nodes.analyze_complexity``) gives a request known only by its token counts
(the completion stands in for ``max_tokens``; the text features count as
absent). A timestamp without a zone is UTC. A bad line raises
:class:`TraceError` naming the file and the line.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt

from backends.catalog import Catalog, get_catalog
from nodes.analyze_complexity import complexity_level, complexity_score, score_features
from nodes.select_model import required_tier
from state.schemas import COST_PRIORITIES, ComplexityLevel, CostPriority

LEVELS: tuple[ComplexityLevel, ...] = ("low", "medium", "high")
FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Workload:
    """Requests as parallel arrays, sorted by arrival time."""

    arrival_s: FloatArray
    prompt_tokens: IntArray
    output_tokens: IntArray
    level: npt.NDArray[np.int8]
    tier: npt.NDArray[np.int8]
    model: npt.NDArray[np.int16]
    bucket: FloatArray
    duration_s: float
    start: datetime
    model_ids: tuple[str, ...]
    description: str = ""

    def __len__(self) -> int:
        """Return the number of requests."""
        return int(self.arrival_s.size)


@dataclass(frozen=True)
class SyntheticSpec:
    """Every knob of the synthetic workload; rates are requests per second."""

    days: int = 7
    start: date = date(2026, 1, 5)  # a Monday
    timezone: str = "UTC"
    peak_rps: float = 10.0
    offpeak_rps: float = 1.0
    weekend_rps: float = 0.5
    busy_hours: tuple[int, int] = (9, 18)
    complex_share: float = 0.2
    simple_tokens: tuple[float, float] = (300.0, 150.0)
    complex_tokens: tuple[float, float] = (2500.0, 800.0)
    token_sigma: float = 0.5
    cost_priority: CostPriority = "balanced"
    seed: int = 0

    def check(self) -> None:
        """Raise ValueError naming the first knob out of range."""
        if self.days < 1:
            raise ValueError(f"days must be at least 1, got {self.days}")
        for name in ("peak_rps", "offpeak_rps", "weekend_rps", "token_sigma"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}")
        if not 0.0 <= self.complex_share <= 1.0:
            raise ValueError(f"complex_share must be in [0, 1], got {self.complex_share}")
        first, last = self.busy_hours
        if not 0 <= first < last <= 24:
            raise ValueError(f"busy_hours must be 0 <= first < last <= 24, got {first}-{last}")
        if min(*self.simple_tokens, *self.complex_tokens) < 1:
            raise ValueError("token means must be at least 1")
        if self.cost_priority not in COST_PRIORITIES:
            raise ValueError(f"cost_priority must be one of {', '.join(COST_PRIORITIES)}")
        ZoneInfo(self.timezone)


def hourly_rates(spec: SyntheticSpec) -> tuple[datetime, FloatArray]:
    """Return the start (UTC) and the arrival rate of every hour of the workload.

    Hours are UTC hours; each is classed by its local weekday and hour in
    ``spec.timezone``, so a daylight-saving change moves the busy hours with
    the clock on the wall.
    """
    zone = ZoneInfo(spec.timezone)
    start = datetime.combine(spec.start, datetime.min.time(), zone).astimezone(UTC)
    end = datetime.combine(spec.start + timedelta(days=spec.days), datetime.min.time(), zone)
    hours = round((end.astimezone(UTC) - start).total_seconds() / 3600)
    first, last = spec.busy_hours
    rates = np.empty(hours)
    for h in range(hours):
        local = (start + timedelta(hours=h)).astimezone(zone)
        if local.weekday() >= 5:
            rates[h] = spec.weekend_rps
        elif first <= local.hour < last:
            rates[h] = spec.peak_rps
        else:
            rates[h] = spec.offpeak_rps
    return start, rates


def _lognormal(rng: np.random.Generator, mean: float, sigma: float, size: int) -> IntArray:
    """Draw integers >= 1 from a log-normal with the given mean."""
    mu = math.log(mean) - sigma * sigma / 2
    return np.maximum(1, np.rint(rng.lognormal(mu, sigma, size))).astype(np.int64)


def synthetic(spec: SyntheticSpec | None = None, catalog: Catalog | None = None) -> Workload:
    """Generate the synthetic workload of ``spec`` (the same seed gives the same arrays)."""
    spec = spec or SyntheticSpec()
    spec.check()
    catalog = catalog or get_catalog()
    rng = np.random.default_rng(spec.seed)
    start, rates = hourly_rates(spec)
    counts = rng.poisson(rates * 3600.0)
    total = int(counts.sum())
    arrival = np.repeat(np.arange(rates.size) * 3600.0, counts) + rng.random(total) * 3600.0
    arrival.sort()
    complex_ = rng.random(total) < spec.complex_share
    prompt = np.where(
        complex_,
        _lognormal(rng, spec.complex_tokens[0], spec.token_sigma, total),
        _lognormal(rng, spec.simple_tokens[0], spec.token_sigma, total),
    )
    output = np.where(
        complex_,
        _lognormal(rng, spec.complex_tokens[1], spec.token_sigma, total),
        _lognormal(rng, spec.simple_tokens[1], spec.token_sigma, total),
    )
    # nothing longer than the largest context window: the router would refuse it
    window = max(m.context_window for m in catalog.models)
    prompt = np.minimum(prompt, window // 2)
    output = np.minimum(output, window // 2)
    level = np.where(complex_, 2, 0).astype(np.int8)
    tiers = np.array([required_tier(lv, spec.cost_priority) for lv in LEVELS], dtype=np.int8)
    first, last = spec.busy_hours
    return Workload(
        arrival_s=arrival,
        prompt_tokens=prompt,
        output_tokens=output,
        level=level,
        tier=tiers[level],
        model=np.full(total, -1, dtype=np.int16),
        bucket=rng.random(total),
        duration_s=float(rates.size * 3600),
        start=start,
        model_ids=tuple(catalog.ids()),
        description=(
            f"synthetic: {spec.days} day{'s' if spec.days != 1 else ''} from {spec.start} "
            f"({spec.timezone}), "
            f"{spec.peak_rps:g} req/s on weekdays {first:02d}:00-{last:02d}:00, "
            f"{spec.offpeak_rps:g} req/s on weekday nights, {spec.weekend_rps:g} req/s at "
            f"weekends; {spec.complex_share:.0%} complex, seed {spec.seed}"
        ),
    )


class TraceError(ValueError):
    """A trace line that cannot be read; the message names the file and the line."""


def _level_from_tokens(prompt: IntArray, output: IntArray) -> npt.NDArray[np.int8]:
    """Score each distinct (prompt, output) pair with the router's own feature weights."""
    pairs, inverse = np.unique(np.stack([prompt, output]), axis=1, return_inverse=True)
    codes = np.empty(pairs.shape[1], dtype=np.int8)
    for k in range(pairs.shape[1]):
        features = score_features([], int(pairs[0, k]), int(pairs[1, k]))
        codes[k] = LEVELS.index(complexity_level(complexity_score(features)))
    return codes[inverse.reshape(-1)]


def _timestamp(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("timestamp is a boolean")
    if isinstance(value, int | float):
        return float(value)
    text = str(value).strip()
    try:
        return float(text)
    except ValueError:
        pass
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _tokens(row: Mapping[str, Any], name: str) -> int:
    value = row.get(name)
    if value is None or value == "":
        raise ValueError(f"{name} is missing")
    number = float(value)
    if not number.is_integer() or number < 0:
        raise ValueError(f"{name} must be a whole number >= 0, got {value!r}")
    return int(number)


def _rows(path: Path) -> Iterator[tuple[int, Mapping[str, Any]]]:
    """Yield (line number, row) from a JSONL or CSV file (by suffix, else by first character)."""
    with path.open(encoding="utf-8", newline="") as handle:
        head = handle.read(1)
        handle.seek(0)
        if path.suffix.lower() in (".jsonl", ".ndjson", ".json") or head in ("{", "["):
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise TraceError(f"{path}, line {number}: not JSON ({exc.msg})") from None
                if not isinstance(row, dict):
                    raise TraceError(f"{path}, line {number}: expected a JSON object")
                yield number, row
            return
        reader = csv.DictReader(handle)
        for row in reader:
            yield reader.line_num, row


def load_trace(
    path: str | Path,
    *,
    catalog: Catalog | None = None,
    cost_priority: CostPriority = "balanced",
    seed: int = 0,
) -> Workload:
    """Read a JSONL or CSV trace into a workload; raise TraceError naming a bad line."""
    path = Path(path)
    return trace_workload(
        _rows(path), str(path), catalog=catalog, cost_priority=cost_priority, seed=seed
    )


def trace_workload(
    rows: Iterable[tuple[int, Mapping[str, Any]]],
    source: str,
    *,
    catalog: Catalog | None = None,
    cost_priority: CostPriority = "balanced",
    seed: int = 0,
) -> Workload:
    """Turn trace rows, ``(line number, row)``, into a workload; ``source`` names them in errors.

    The rows of a file (:func:`load_trace`) or of the ledger
    (:func:`state.reporting.trace.ledger_trace`) read the same way.
    """
    catalog = catalog or get_catalog()
    ids = catalog.ids()
    stamps: list[float] = []
    prompts: list[int] = []
    outputs: list[int] = []
    levels: list[int] = []
    models: list[int] = []
    for number, row in rows:
        try:
            stamps.append(_timestamp(row.get("timestamp")))
            prompts.append(_tokens(row, "prompt_tokens"))
            outputs.append(_tokens(row, "completion_tokens"))
            levels.append(_parse_level(row.get("complexity_level")))
            models.append(_parse_model(row.get("model"), ids))
        except (ValueError, TypeError) as exc:
            raise TraceError(f"{source}, line {number}: {exc}") from None
    if not stamps:
        raise TraceError(f"{source}: no requests (expected JSONL or CSV with a header line)")
    columns = (stamps, prompts, outputs, levels, models)
    return _from_columns(source, catalog, cost_priority, seed, *columns)


def _parse_level(value: Any) -> int:
    if value is None or value == "":
        return -1
    text = str(value).strip().lower()
    if text in LEVELS:
        return LEVELS.index(text)
    if text in ("0", "1", "2"):
        return int(text)
    raise ValueError(f"complexity_level must be low, medium, high or 0-2, got {value!r}")


def _parse_model(value: Any, ids: list[str]) -> int:
    if value is None or value == "" or value == "auto":
        return -1
    if value not in ids:
        raise ValueError(f"model {value!r} is not in the catalog ({', '.join(ids)}, or auto)")
    return ids.index(value)


def _from_columns(
    source: str,
    catalog: Catalog,
    cost_priority: CostPriority,
    seed: int,
    stamps: Iterable[float],
    prompts: Iterable[int],
    outputs: Iterable[int],
    levels: Iterable[int],
    models: Iterable[int],
) -> Workload:
    stamp = np.fromiter(stamps, dtype=np.float64)
    order = np.argsort(stamp, kind="stable")
    stamp = stamp[order]
    prompt = np.fromiter(prompts, dtype=np.int64)[order]
    output = np.fromiter(outputs, dtype=np.int64)[order]
    level = np.fromiter(levels, dtype=np.int8)[order]
    model = np.fromiter(models, dtype=np.int16)[order]
    unknown = level < 0
    if unknown.any():
        level[unknown] = _level_from_tokens(prompt[unknown], output[unknown])
    tiers = np.array([required_tier(lv, cost_priority) for lv in LEVELS], dtype=np.int8)
    model_tiers = np.array([m.tier for m in catalog.models], dtype=np.int8)
    tier = np.where(model >= 0, model_tiers[np.maximum(model, 0)], tiers[level]).astype(np.int8)
    arrival = stamp - stamp[0]
    # instances are billed by the hour: the trace covers whole hours
    duration = max(3600.0, math.ceil((float(arrival[-1]) + 1.0) / 3600.0) * 3600.0)
    return Workload(
        arrival_s=arrival,
        prompt_tokens=prompt,
        output_tokens=output,
        level=level,
        tier=tier,
        model=model,
        bucket=np.random.default_rng(seed).random(stamp.size),
        duration_s=duration,
        start=datetime.fromtimestamp(float(stamp[0]), UTC),
        model_ids=tuple(catalog.ids()),
        description=f"trace {Path(source).name}: {stamp.size} requests over "
        f"{duration / 3600:.0f} h",
    )
