"""The ``chat`` graph: talk to the router about routing and money, or just chat.

START -> classify_message -> (chat)              answer_with_router -> END
                          -> (usage, budget, ...) answer_from_ledger -> END
                          -> (routing_override)   change_routing -> END

``classify_message`` detects what the newest user message asks
(``nodes.detect_intent``). An ordinary message is answered by the ``router``
graph as a subgraph, on the whole conversation; a question about usage,
budgets, costs or savings is answered from the ledger; a routing instruction
becomes an override in the ledger that every router process obeys.

``messages`` use LangGraph's message reducer, so on a thread the conversation
grows run by run. The LangGraph server serves ``graph`` with its own thread
store; Python callers compile ``builder`` with ``state.checkpoints``.
"""

from __future__ import annotations

from typing import Literal

from langgraph.graph import END, START, StateGraph

from graphs.router import graph as router
from nodes.answer_from_ledger import answer_from_ledger
from nodes.answer_with_router import router_answer
from nodes.change_routing import change_routing
from nodes.classify_message import classify_message
from state.context import Context
from state.schemas import ChatInput, ChatState

LEDGER_INTENTS = frozenset(
    {"usage_report", "budget_status", "cost_comparison", "optimize", "cost_estimate"}
)


def route_intent(
    state: ChatState,
) -> Literal["answer_with_router", "answer_from_ledger", "change_routing"]:
    """Which step answers this intent?"""
    intent = state.get("intent")
    if intent == "chat":
        return "answer_with_router"
    if intent in LEDGER_INTENTS:
        return "answer_from_ledger"
    if intent == "routing_override":
        return "change_routing"
    raise ValueError(f"classify_message left an unknown intent {intent!r}")


builder = StateGraph(ChatState, input_schema=ChatInput, context_schema=Context)
builder.add_node(classify_message)
builder.add_node(router_answer(router))
builder.add_node(answer_from_ledger)
builder.add_node(change_routing)

builder.add_edge(START, "classify_message")
builder.add_conditional_edges(
    "classify_message",
    route_intent,
    ["answer_with_router", "answer_from_ledger", "change_routing"],
)
builder.add_edge("answer_with_router", END)
builder.add_edge("answer_from_ledger", END)
builder.add_edge("change_routing", END)

graph = builder.compile(name="chat")
