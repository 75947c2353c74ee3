"""The GPU pool's capacity on a simulated clock: throughput, slots, a FIFO queue.

The model:

- An instance serves a model at a token throughput measured at full batch:
  ``prefill_tps`` prompt tokens/s and ``decode_tps`` output tokens/s. A
  request's *work* is ``prompt / prefill_tps + output / decode_tps``
  instance-seconds.
- An instance runs ``concurrency`` requests at once (the router's
  ``GPU_CONCURRENCY_PER_ENDPOINT``, 16: the load at which it calls an endpoint
  busy); each slot gets 1/concurrency of the instance, so a request holds its
  slot for ``concurrency * work`` seconds. The pool is ``instances *
  concurrency`` slots; a request that finds none free waits in one FIFO queue
  (the router sends it to the least-loaded endpoint, which the pooled queue
  approximates from below). ``queue_limit`` waiting requests per instance
  make the queue full.
- The router calls the pool busy when no slot is free (load, running plus
  waiting, at the concurrency on every endpoint), which is exactly "this
  request would wait".
- Every instance serves every GPU model of the catalog, as the router's one
  ``GPU_ENDPOINTS`` list assumes; a pool split by model is planned one model
  at a time.
- Latency: on the GPU, time to first token is the wait plus ``gpu_overhead_s``
  plus the prefill at the instance's full prefill speed (vLLM schedules
  prefills first); the answer ends ``concurrency * output / decode_tps``
  later. On serverless: ``serverless_ttft_s``, then ``serverless_decode_tps``
  per stream. Both are assumptions, stated below.

Default throughputs (one H100-class GPU such as a GH200, vLLM, batch 16) are
**assumptions** of the order that public vLLM benchmarks report (Llama 3.1 8B:
roughly 1,500-2,000 output tokens/s at 16 concurrent requests, up to ~12,500 at
high concurrency; Llama 3.1 70B FP8: ~460 output tokens/s at batch 64 on one
H100, so ~350 at 16). Measure yours with ``vllm bench serve
--max-concurrency 16`` and pass them in.

The simulation (:func:`simulate_pool`) is exact for this model: FIFO
assignment of each GPU-bound request to the slot that frees first. It goes by
chunks of up to half the slot count: when every request of a chunk finds a
free slot at its arrival (the usual case when the pool is not full), the
whole chunk is assigned with a few NumPy operations; otherwise that chunk is
replayed one request at a time on a binary heap of slot-free times.
"""

from __future__ import annotations

import gc
import heapq
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class Throughput:
    """One instance's token throughput for one model at full batch."""

    prefill_tps: float
    decode_tps: float
    source: str = "assumption"


DEFAULT_THROUGHPUT: dict[str, Throughput] = {
    "llama3.1-8b-instruct": Throughput(
        10_000.0,
        1_800.0,
        "assumption: one H100-class GPU, vLLM, 16 concurrent requests "
        "(public vLLM benchmarks: ~1.5-2k output tok/s at 16, ~12.5k at high concurrency)",
    ),
    "llama3.1-70b-instruct-fp8": Throughput(
        2_000.0,
        350.0,
        "assumption: one H100-class GPU, vLLM, FP8, 16 concurrent requests "
        "(public benchmarks: ~460 output tok/s at batch 64 on one H100)",
    ),
}


@dataclass(frozen=True)
class CapacityModel:
    """Everything the pool simulation assumes; every field is a knob."""

    throughput: Mapping[str, Throughput] = field(default_factory=lambda: dict(DEFAULT_THROUGHPUT))
    concurrency: int = 16
    queue_limit: int | None = None
    gpu_overhead_s: float = 0.05
    serverless_ttft_s: float = 0.5
    serverless_decode_tps: float = 80.0

    def rates(self, model_ids: tuple[str, ...]) -> tuple[FloatArray, FloatArray]:
        """Return prefill and decode rates per catalog index (NaN for a model with none)."""
        prefill = np.full(len(model_ids), np.nan)
        decode = np.full(len(model_ids), np.nan)
        for i, model in enumerate(model_ids):
            if model in self.throughput:
                prefill[i] = self.throughput[model].prefill_tps
                decode[i] = self.throughput[model].decode_tps
        return prefill, decode

    def gpu_times(
        self,
        model_ids: tuple[str, ...],
        model: npt.NDArray[np.int16],
        prompt: npt.NDArray[np.int64],
        output: npt.NDArray[np.int64],
    ) -> tuple[FloatArray, FloatArray, FloatArray]:
        """Return work (instance-seconds), prefill seconds and decode seconds per slot.

        Raises:
            ValueError: A GPU model has no throughput figure.
        """
        prefill_rate, decode_rate = self.rates(model_ids)
        used = np.unique(model[model >= 0])
        missing = [model_ids[i] for i in used if np.isnan(prefill_rate[i])]
        if missing:
            raise ValueError(
                f"no GPU throughput for {', '.join(missing)}: give it as MODEL=PREFILL/DECODE "
                "tokens per second per instance"
            )
        safe = np.maximum(model, 0)
        prefill_s = np.where(model >= 0, prompt / prefill_rate[safe], np.inf)
        decode_s = np.where(model >= 0, output / decode_rate[safe], np.inf)
        return prefill_s + decode_s, prefill_s, decode_s * self.concurrency


@dataclass
class PoolOutcome:
    """Where each request ran and when it started."""

    on_gpu: BoolArray
    wait_s: FloatArray
    max_sojourn_s: float
    chunks_vectorised: int
    chunks_replayed: int
    seconds: float

    def _timed(self, started: float) -> PoolOutcome:
        self.seconds = time.perf_counter() - started
        return self


def simulate_pool(
    arrival: FloatArray,
    hold_s: FloatArray,
    ttft_idle_s: FloatArray,
    on_free: BoolArray,
    on_busy: BoolArray,
    *,
    slots: int,
    queue_limit: int | None,
    overflow: bool,
    max_wait_s: float,
) -> PoolOutcome:
    """Replay arrivals through ``slots`` FIFO slots; return who ran on the GPU and their waits.

    Args:
        arrival: Arrival times, sorted.
        hold_s: How long each request holds its slot once started.
        ttft_idle_s: Each request's time to first token on an idle GPU.
        on_free: GPU (True) when a slot is free at arrival.
        on_busy: GPU, waiting in the queue, when no slot is free.
        slots: Instances times concurrency.
        queue_limit: Most requests waiting in the whole pool (None: no limit).
        overflow: A request that would wait so its first token comes after
            ``max_wait_s``, or finds the queue full, goes to serverless.
        max_wait_s: The latency target for ``overflow``.
    """
    started = time.perf_counter()
    collecting = gc.isenabled()
    gc.disable()  # the replay makes millions of short-lived tuples and no cycles
    try:
        return _simulate(
            arrival, hold_s, ttft_idle_s, on_free, on_busy, slots, queue_limit, overflow, max_wait_s
        )._timed(started)
    finally:
        if collecting:
            gc.enable()


def _simulate(
    arrival: FloatArray,
    hold_s: FloatArray,
    ttft_idle_s: FloatArray,
    on_free: BoolArray,
    on_busy: BoolArray,
    slots: int,
    queue_limit: int | None,
    overflow: bool,
    max_wait_s: float,
) -> PoolOutcome:
    n = arrival.size
    on_gpu = np.zeros(n, dtype=bool)
    wait = np.zeros(n)
    if np.any(on_busy & ~on_free):
        raise ValueError("a policy may not send a request to a busy pool it would skip when free")
    if slots <= 0 or n == 0:
        return PoolOutcome(on_gpu, wait, 0.0, 0, 0, 0.0)
    want = np.flatnonzero(on_free)
    free = np.zeros(slots)  # slot-free times, kept sorted between chunks
    pending: deque[float] = deque()  # start times of queued requests, nondecreasing
    limit = float("inf") if queue_limit is None else queue_limit
    chunk = max(1, slots // 2)
    fast = slow = 0
    sojourn = 0.0
    a_all, h_all = arrival[want], hold_s[want]
    for lo in range(0, want.size, chunk):
        hi = min(lo + chunk, want.size)
        a, h = a_all[lo:hi], h_all[lo:hi]
        k = hi - lo
        while pending and pending[0] <= a[0]:
            pending.popleft()
        if not pending and np.all(free[:k] <= a):
            # every request of the chunk finds a free slot: no waits, no decisions change
            on_gpu[want[lo:hi]] = True
            ends = a + h
            free = np.sort(np.concatenate((free[k:], ends)))
            sojourn = max(sojourn, float(h.max()))
            fast += 1
            continue
        slow += 1
        heap = free.tolist()  # sorted, so already a heap
        idx = want[lo:hi]
        busy_ok = on_busy[idx].tolist()
        ttft0 = ttft_idle_s[idx].tolist()
        for j, (aj, hj) in enumerate(zip(a.tolist(), h.tolist(), strict=True)):
            while pending and pending[0] <= aj:
                pending.popleft()
            f = heap[0]
            if f <= aj:
                start = aj
            else:
                if not busy_ok[j]:
                    continue
                if overflow and (f - aj + ttft0[j] > max_wait_s or len(pending) >= limit):
                    continue
                start = f
                pending.append(start)
            heapq.heapreplace(heap, start + hj)
            on_gpu[idx[j]] = True
            wait[idx[j]] = start - aj
            sojourn = max(sojourn, start - aj + hj)
        free = np.sort(np.asarray(heap))
    return PoolOutcome(on_gpu, wait, sojourn, fast, slow, 0.0)
