"""Routing policies the planner compares, as per-request lookup tables.

- ``all_gpu``: every request the GPU pool can serve goes there and waits its
  turn (the rest, if any model fits only serverless, pays serverless).
- ``all_serverless``: every request goes to the serverless API; no GPUs.
- ``old_split``: the earlier setup: a request at or above a complexity level
  (``high`` by default) goes to serverless, which has the larger models; the
  rest is split at random, ``SERVERLESS_RATIO`` (80 %) to serverless and the
  remainder to the GPU pool, whatever the pool's load.
- ``router``: this project's own decision. It is not re-implemented here: the
  planner calls ``nodes.choose_backend.allowed_backends`` and
  ``decide_backend`` and ``nodes.select_model.pick_model`` /
  ``required_tier`` (through :mod:`planner.workloads`) with a small fake of
  ``state.context.Services`` whose ``gpu_pool`` answers "busy" or "has room"
  from the simulated capacity.

Memoisation: a month is about 26 million requests and the router's functions
cost microseconds each, so they are not called per request. Given no forced
backend and no routing override, ``decide_backend`` reads only the two
candidate models (which ``pick_model`` chooses from the tier, the model asked
for and which context windows hold the request), whether the pool exists,
whether it has spare capacity, and whether the request-id bucket falls under
``SERVERLESS_RATIO``. The planner calls it once for each distinct combination
(a few dozen at most), with a real request id on the right side of the ratio,
and maps the answers back to every request with NumPy. Each request's bucket
is a uniform draw, as the CRC-32 of a random request id is.

A policy's table gives, per request, the backend when the pool has a free slot
(``on_free``) and when every slot is taken (``on_busy``); the simulator in
:mod:`planner.capacity` applies whichever holds when the request arrives.
``overflow`` says whether a request sent to the busy pool that would wait past
its latency target, or finds the queue full, goes to serverless instead (the
graph's fallback edge); ``all_gpu`` has nowhere else to go.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from backends.catalog import Catalog
from nodes import choose_backend, select_model
from planner.workloads import LEVELS, Workload
from state.context import Services
from state.errors import NoBackendAvailableError
from state.schemas import Backend, RouterState

POLICIES: tuple[str, ...] = ("router", "old_split", "all_gpu", "all_serverless")
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class Candidates:
    """The model each backend would run for each request (catalog index, -1: none fits)."""

    gpu: npt.NDArray[np.int16]
    serverless: npt.NDArray[np.int16]


@dataclass(frozen=True)
class Routes:
    """A policy's answer for each request: GPU (True) or serverless, when free and when busy."""

    on_free: BoolArray
    on_busy: BoolArray
    refused: BoolArray
    overflow: bool


def small_unique(key: npt.NDArray[np.int64]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Return the distinct keys and each row's index among them (keys small and >= 0).

    A count per possible key instead of a sort: a month's keys take a fraction of a second.
    """
    if key.size == 0:
        return key, key
    present = np.flatnonzero(np.bincount(key))
    lookup = np.zeros(int(present[-1]) + 1, dtype=np.int64)
    lookup[present] = np.arange(present.size)
    return present, lookup[key]


def candidates(workload: Workload, catalog: Catalog) -> Candidates:
    """Return each request's model on each backend, as ``select_model`` would pick them."""
    models = catalog.models
    index = {m.id: i for i, m in enumerate(models)}
    if tuple(catalog.ids()) != workload.model_ids:
        raise ValueError("the workload was built with another catalog")
    windows = np.unique([m.context_window for m in models])
    total = workload.prompt_tokens + workload.output_tokens
    fit_class = np.searchsorted(windows, total, side="left")
    key = (workload.tier.astype(np.int64) * (len(models) + 1) + workload.model + 1) * (
        windows.size + 1
    ) + fit_class
    keys, inverse = small_unique(key.astype(np.int64))
    first = [int(np.argmax(key == k)) for k in keys]  # one request of each kind
    gpu = np.full(keys.size, -1, dtype=np.int16)
    serverless = np.full(keys.size, -1, dtype=np.int16)
    for k, row in enumerate(first):
        prompt, output = int(workload.prompt_tokens[row]), int(workload.output_tokens[row])
        asked = int(workload.model[row])
        pairs: tuple[tuple[Backend, npt.NDArray[np.int16]], ...] = (
            ("gpu", gpu),
            ("serverless", serverless),
        )
        for backend, column in pairs:
            if asked >= 0:
                # select_model's branch for a named model: that model wherever it is offered
                spec = models[asked]
                ok = spec.offered_on(backend) and select_model.fits(spec, prompt, output)
                column[k] = asked if ok else -1
            else:
                tier = int(workload.tier[row])
                chosen = select_model.pick_model(catalog, backend, tier, prompt, output)
                column[k] = index[chosen.id] if chosen is not None else -1
    return Candidates(gpu=gpu[inverse], serverless=serverless[inverse])


@dataclass
class _PlannerSettings:
    serverless_ratio: float
    disable_lambda_labs: bool = False


class SimulatedProviders:
    """Stands in for ``backends.providers.ServerlessProviders``: one that serves every model."""

    def serving(self, model_id: str, tokens: int | None = None) -> list[str]:
        """Return a provider for any model (simulated providers never fail)."""
        return ["simulated"]

    def why_none(self, model_id: str, tokens: int | None = None) -> str:
        """Never asked: a simulated provider serves every model."""
        return "no serverless provider"


class SimulatedPool:
    """Stands in for ``backends.gpu_pool.GpuPool``: up, and busy or not as the simulation says.

    Token counts are accepted and ignored: the candidates already fit their
    context windows, and simulated endpoints never fail.
    """

    def __init__(self, instances: int, busy: bool) -> None:
        """Hold the pool's size and whether every slot is taken."""
        self.instances = instances
        self.busy = busy

    def __bool__(self) -> bool:
        """A pool with no instances is no pool, as ``GPU_ENDPOINTS`` unset."""
        return self.instances > 0

    def pick(self, model: str, tokens: int | None = None) -> SimulatedPool | None:
        """Return an endpoint (the pool itself) when the pool has instances."""
        return self if self.instances > 0 else None

    def has_spare_capacity(self, model: str, tokens: int | None = None) -> bool:
        """Say whether some endpoint has a free slot."""
        return self.instances > 0 and not self.busy

    # a slot of the simulated pool is never chosen by prefix-cache affinity
    affinity = False

    def admit(
        self,
        model: str,
        tokens: int | None = None,
        request_id: str | None = None,
        prefix: str | None = None,
    ) -> SimulatedPool | None:
        """Take a slot when one is free (the simulator does the counting)."""
        return self if self.has_spare_capacity(model, tokens) else None

    def unavailable_reason(self, model: str | None = None, tokens: int | None = None) -> str:
        """Say why the pool cannot serve: it has no instances."""
        return "the simulated pool has no instances"


@dataclass
class _SimulatedServices:
    settings: _PlannerSettings
    catalog: Catalog
    gpu_pool: SimulatedPool
    providers: SimulatedProviders


def _request_id_under(ratio: float, under: bool) -> str | None:
    """Find a request id whose serverless bucket is under (or not under) ``ratio``."""
    for n in range(100_000):
        rid = f"planner-{n}"
        if (choose_backend.serverless_bucket(rid) < ratio) == under:
            return rid
    return None


class RouterDecisions:
    """``decide_backend`` answers, memoised by the few inputs it reads."""

    def __init__(self, catalog: Catalog, serverless_ratio: float) -> None:
        """Keep the catalog, the ratio and one request id on each side of it."""
        self.catalog = catalog
        self.ratio = serverless_ratio
        self.ids = {u: _request_id_under(serverless_ratio, u) for u in (True, False)}
        self.calls = 0
        self._memo: dict[tuple[int, int, bool, bool, bool], str | None] = {}

    def backend(self, gpu: int, serverless: int, under: bool, busy: bool, pool: bool) -> str | None:
        """Return the backend ``decide_backend`` picks, or None when none may serve."""
        key = (gpu, serverless, under, busy, pool)
        if key not in self._memo:
            self._memo[key] = self._decide(*key)
        return self._memo[key]

    def _decide(self, gpu: int, serverless: int, under: bool, busy: bool, pool: bool) -> str | None:
        self.calls += 1
        rid = self.ids[under]
        if rid is None:
            return None
        models = self.catalog.models
        cands = {}
        if gpu >= 0:
            cands["gpu"] = models[gpu].id
        if serverless >= 0:
            cands["serverless"] = models[serverless].id
        state = cast(
            RouterState,
            {
                "candidates": cands,
                "request_id": rid,
                "force_backend": None,
                # read by the pool's fit check only; the simulated pool takes any size
                "prompt_tokens_estimate": 1,
                "output_tokens_cap": 1,
            },
        )
        fake = _SimulatedServices(
            settings=_PlannerSettings(serverless_ratio=self.ratio),
            catalog=self.catalog,
            gpu_pool=SimulatedPool(1 if pool else 0, busy),
            providers=SimulatedProviders(),
        )
        services = cast(Services, fake)
        allowed, why_not = choose_backend.allowed_backends(state, services)
        try:
            backend, _ = choose_backend.decide_backend(state, services, allowed, why_not)
        except NoBackendAvailableError:
            return None
        return backend


def _table(
    cands: Candidates, under: BoolArray, decide: Callable[[int, int, bool], Any]
) -> tuple[npt.NDArray[np.int64], list[Any]]:
    """Evaluate ``decide(gpu, serverless, under)`` once per distinct triple."""
    width = int(max(cands.gpu.max(initial=0), cands.serverless.max(initial=0))) + 2
    key = ((cands.gpu.astype(np.int64) + 1) * width + cands.serverless + 1) * 2 + under
    keys, inverse = small_unique(key)
    answers = []
    for k in keys.tolist():
        flag, rest = bool(k % 2), k // 2
        answers.append(decide(int(rest // width) - 1, int(rest % width) - 1, flag))
    return inverse, answers


def routes(
    policy: str,
    workload: Workload,
    cands: Candidates,
    *,
    gpus: int,
    serverless_ratio: float,
    catalog: Catalog,
    old_threshold: str = "high",
    decisions: RouterDecisions | None = None,
) -> Routes:
    """Return ``policy``'s table for this workload and pool size."""
    has_gpu = cands.gpu >= 0
    has_sl = cands.serverless >= 0
    under = workload.bucket < serverless_ratio
    if policy == "router":
        memo = decisions or RouterDecisions(catalog, serverless_ratio)
        inverse, pairs = _table(
            cands,
            under,
            lambda g, s, u: (
                memo.backend(g, s, u, busy=False, pool=gpus > 0),
                memo.backend(g, s, u, busy=True, pool=gpus > 0),
            ),
        )
        free = np.array([p[0] == "gpu" for p in pairs])
        busy = np.array([p[1] == "gpu" for p in pairs])
        refused = np.array([p[0] is None or p[1] is None for p in pairs])
        return Routes(free[inverse], busy[inverse], refused[inverse], True)
    if gpus <= 0:
        return Routes(np.zeros_like(has_sl), np.zeros_like(has_sl), ~has_sl, False)
    if policy == "all_serverless":
        return Routes(np.zeros_like(has_sl), np.zeros_like(has_sl), ~has_sl, False)
    if policy == "all_gpu":
        return Routes(has_gpu, has_gpu, ~(has_gpu | has_sl), False)
    if policy == "old_split":
        threshold = [str(level) for level in LEVELS].index(old_threshold)
        to_serverless = (workload.level >= threshold) | under
        gpu = has_gpu & ~(to_serverless & has_sl)
        return Routes(gpu, gpu, ~(has_gpu | has_sl), True)
    raise ValueError(f"unknown policy {policy!r}; use one of {', '.join(POLICIES)}")
