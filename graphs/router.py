"""The ``router`` graph: one chat request from analysis to ledger row.

START -> plan_route -> generate_serverless --(failed: fall back)--> generate_gpu
                    -> generate_gpu        --(failed: fall back)--> generate_serverless
      -> track_usage -> END

``plan_route`` runs the four decisions, analyze_complexity -> select_model ->
check_budget -> choose_backend, in one step (nodes/plan_route.py says why).
"""

from __future__ import annotations

from typing import Literal

from langgraph.graph import END, START, StateGraph

from nodes.fallback import fall_back_from_gpu, fall_back_from_serverless
from nodes.generate_gpu import generate_gpu
from nodes.generate_serverless import generate_serverless
from nodes.generation import GENERATE_RETRY
from nodes.plan_route import plan_route
from nodes.track_usage import track_usage
from state.context import Context
from state.schemas import RouterInput, RouterOutput, RouterState


def route_to_backend(state: RouterState) -> Literal["generate_serverless", "generate_gpu"]:
    """Which generate node takes the first attempt (``choose_backend``'s choice)?"""
    backend = state.get("backend")
    if backend == "serverless":
        return "generate_serverless"
    if backend == "gpu":
        return "generate_gpu"
    raise ValueError(f"choose_backend left no backend in the state (got {backend!r})")


builder = StateGraph(
    RouterState, input_schema=RouterInput, output_schema=RouterOutput, context_schema=Context
)
builder.add_node(plan_route)
builder.add_node(
    generate_serverless,
    retry_policy=GENERATE_RETRY,
    error_handler=fall_back_from_serverless,
    destinations=("generate_gpu", "track_usage"),
)
builder.add_node(
    generate_gpu,
    retry_policy=GENERATE_RETRY,
    error_handler=fall_back_from_gpu,
    destinations=("generate_serverless", "track_usage"),
)
builder.add_node(track_usage)

builder.add_edge(START, "plan_route")
builder.add_conditional_edges(
    "plan_route", route_to_backend, ["generate_serverless", "generate_gpu"]
)
builder.add_edge("generate_serverless", "track_usage")
builder.add_edge("generate_gpu", "track_usage")
builder.add_edge("track_usage", END)

graph = builder.compile(name="router")
