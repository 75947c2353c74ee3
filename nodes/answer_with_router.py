"""Answer an ordinary chat message with the router graph, on the whole conversation."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from langchain_core.messages import AIMessage
from langgraph.graph.state import CompiledStateGraph
from langgraph.runtime import Runtime

from state.context import Context
from state.schemas import ChatState

# (state, runtime) -> update; typed loosely: LangGraph reads the signature at run time
ChatNode = Callable[..., Awaitable[dict[str, Any]]]


def router_answer(router: CompiledStateGraph[Any, Any, Any, Any]) -> ChatNode:
    """Return the chat node that runs ``router`` as a subgraph (the graph file passes it in)."""

    async def answer_with_router(state: ChatState, runtime: Runtime[Context]) -> dict[str, Any]:
        """Run the router on the conversation; its answer joins the chat with its routing."""
        request: dict[str, Any] = {"messages": state["messages"]}
        for key in ("user", "team"):
            if state.get(key):
                request[key] = state[key]
        # the node's config (callbacks, stream writers) reaches the subgraph by itself
        result = await router.ainvoke(request, context=runtime.context)
        answer = result["messages"][-1]
        assert isinstance(answer, AIMessage)
        routing = result["routing"]
        answer.response_metadata = {
            **answer.response_metadata,
            "routing": {k: routing[k] for k in ("backend", "model", "reason")},
            "cost_usd": result["cost_usd"],
        }
        return {"messages": [answer], "routing": routing}

    return answer_with_router
