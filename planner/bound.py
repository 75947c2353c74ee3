"""A lower bound on the cost of any routing policy, for a trace and a GPU count.

Setting. ``n`` instances are paid for the whole period whatever happens, so
every policy pays ``n * hourly * hours`` plus the serverless price ``v_i`` of
each request it does not run on the GPU pool. A request ``i`` run on the pool
uses ``w_i`` instance-seconds of work (:mod:`planner.capacity`: it holds one
of ``n * c`` slots for ``c * w_i`` seconds). A request no GPU model can serve
always pays ``v_i``; one no serverless model can serve counts ``v_i = 0``.

The bound. Cut time into windows ``[kL, (k+1)L)``. Let ``D`` be the longest
time any GPU request of the policy spends from arrival to the end of its
service (its wait plus its slot time). Then the slot time of the requests
that arrive in window ``k`` and run on the GPU lies inside ``[kL, (k+1)L + D)``,
where ``n * c`` slots offer ``n * c * (L + D)`` slot-seconds, so

    sum over GPU requests i arriving in window k of w_i  <=  n * (L + D).      (1)

Every policy whose GPU requests all finish within ``D`` of arriving, online or
not, satisfies (1) for every window, so its serverless spend is at least

    min  sum_i v_i (1 - x_i)   over x_i in [0, 1] with (1) for each window,

because the policy's own choice (``x_i = 1`` on the GPU, 0 otherwise) is one
of the candidates: keeping only constraints (1), dropping the coupling between
windows (the same slot-second counted in two overlapping windows) and letting
``x_i`` be fractional only enlarge the feasible set, so the minimum can only
fall. The windows do not share variables, so the minimum is the sum of each
window's minimum, and each window is a fractional knapsack, solved exactly by
the greedy rule: absorb the requests with the highest serverless price per
GPU-second first, up to ``n * (L + D)``, the last one in part. That is "in each
slice the GPUs absorb, up to their capacity, the work that costs most per
GPU-second on serverless, and only the rest pays serverless prices".

The bound counts money only: it may absorb on the pool a request that a
policy sends to serverless for a better model tier (the router does so for
complex requests), so part of such a policy's distance from it is the price of
that quality, not a loss to capacity.

The bound holds for every window length ``L``, so the planner takes the best
(largest) over a few lengths. A policy that lets requests wait for hours has a
large ``D`` and a weak bound; :mod:`planner.simulate` computes each run's bound
with that run's own ``D``, and the "meets the latency target" bound with
``D`` = the target plus the longest slot time.

The work is done once per window length (a sort by window and price density);
each (n, D) query is then a binary search per window, so sweeping GPU counts
and policies costs little even for a month of requests.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
WINDOWS_S: tuple[float, ...] = (60.0, 300.0, 900.0, 3600.0)


@dataclass(frozen=True)
class _Sorted:
    window_s: float
    work: FloatArray  # sorted by window, then price per GPU-second, high first
    value: FloatArray
    cum_work: FloatArray  # prefix sums, one longer
    cum_value: FloatArray
    first: npt.NDArray[np.int64]  # index of each window's first request
    last: npt.NDArray[np.int64]  # one past its last


class BoundIndex:
    """The sorted trace for :meth:`serverless_floor` queries."""

    def __init__(
        self,
        arrival_s: FloatArray,
        value_usd: FloatArray,
        work_s: FloatArray,
        windows_s: tuple[float, ...] = WINDOWS_S,
    ) -> None:
        """Sort the requests the GPU could absorb, once per window length.

        Args:
            arrival_s: Arrival times.
            value_usd: Each request's serverless price (0 when it has none).
            work_s: Its GPU work in instance-seconds (inf when no GPU model fits).
            windows_s: Window lengths to try.
        """
        absorbable = np.isfinite(work_s)
        self.must_pay = float(value_usd[~absorbable].sum())
        self.total = float(value_usd.sum())
        arrival, value, work = arrival_s[absorbable], value_usd[absorbable], work_s[absorbable]
        density = np.divide(value, work, out=np.full(value.size, np.inf), where=work > 0)
        # rank by price density once (high first); each window length then sorts one integer key
        rank = np.empty(value.size, dtype=np.int64)
        rank[np.argsort(-density)] = np.arange(value.size)
        self._sorted: list[_Sorted] = []
        for length in windows_s:
            window = np.floor(arrival / length).astype(np.int64)
            order = np.argsort(window * max(value.size, 1) + rank)
            w, v, win = work[order], value[order], window[order]
            starts = np.flatnonzero(np.r_[True, win[1:] != win[:-1]]) if win.size else np.array([])
            ends = np.r_[starts[1:], win.size].astype(np.int64)
            self._sorted.append(
                _Sorted(
                    window_s=length,
                    work=w,
                    value=v,
                    cum_work=np.concatenate(([0.0], np.cumsum(w))),
                    cum_value=np.concatenate(([0.0], np.cumsum(v))),
                    first=starts.astype(np.int64),
                    last=ends,
                )
            )

    def absorbed(self, gpus: int, max_delay_s: float) -> tuple[float, float]:
        """Return the most serverless spend ``gpus`` instances can absorb, and its window length."""
        best, best_window = 0.0, self._sorted[0].window_s if self._sorted else 0.0
        if gpus <= 0:
            return 0.0, best_window
        for s in self._sorted:
            if s.first.size == 0:
                continue
            capacity = gpus * (s.window_s + max_delay_s)
            target = s.cum_work[s.first] + capacity
            # whole requests absorbed: the prefix whose work fits the window's capacity
            full = np.searchsorted(s.cum_work, target, side="right") - 1
            full = np.minimum(full, s.last)
            value = s.cum_value[full] - s.cum_value[s.first]
            partial = full < s.last
            at = full[partial]
            value[partial] += s.value[at] * (target[partial] - s.cum_work[at]) / s.work[at]
            total = float(value.sum())
            # the weakest window length gives the most absorbed value: take the least
            if s is self._sorted[0] or total < best:
                best, best_window = total, s.window_s
        return best, best_window

    def serverless_floor(self, gpus: int, max_delay_s: float) -> tuple[float, float]:
        """Return the least serverless spend of any policy with this pool and delay, and L."""
        absorbed, window = self.absorbed(gpus, max_delay_s)
        return max(self.total - absorbed, self.must_pay), window


def lower_bound(
    arrival_s: FloatArray,
    value_usd: FloatArray,
    work_s: FloatArray,
    *,
    gpus: int,
    hourly_usd: float,
    hours: float,
    max_delay_s: float,
    windows_s: tuple[float, ...] = WINDOWS_S,
) -> float:
    """Return the cost no policy whose GPU requests finish within ``max_delay_s`` can beat."""
    index = BoundIndex(arrival_s, value_usd, work_s, windows_s)
    floor, _ = index.serverless_floor(gpus, max_delay_s)
    return gpus * hourly_usd * hours + floor
