"""Plan the route: the four decisions before any backend is called, as one graph step.

``analyze_complexity -> select_model -> check_budget -> choose_backend`` stay
four functions, one module each, tested one by one, and run here in that order,
each seeing the state the previous ones left. Together they do about 20 µs of
work on a short prompt, while LangGraph charges each graph step about 0.15 ms
of its own (BENCHMARKS.md); as one step they take three steps off every
request. The step's update holds every decision (``complexity``,
``candidates`` and ``selection_reason``, ``budget`` and ``reservation``,
``backend`` and ``backend_reason``), which is what LangGraph Studio shows for it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, cast

from langgraph.runtime import Runtime

from nodes.analyze_complexity import analyze_complexity
from nodes.check_budget import check_budget
from nodes.choose_backend import choose_backend
from nodes.select_model import select_model
from state.context import Context
from state.schemas import RouterState

Decision = Callable[[RouterState, Runtime[Context]], Awaitable[dict[str, Any]]]
DECISIONS: tuple[Decision, ...] = (analyze_complexity, select_model, check_budget, choose_backend)


async def plan_route(state: RouterState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Run the four decisions in order and return their updates as one."""
    current: dict[str, Any] = dict(state)
    update: dict[str, Any] = {}
    for decide in DECISIONS:
        step = await decide(cast(RouterState, current), runtime)
        # No decision writes a key twice or appends to one with a reducer
        # (``attempts`` starts empty here; only the generate nodes append to it).
        current.update(step)
        update.update(step)
    return update
