"""Read the newest user message of the chat and say what it asks (``nodes.detect_intent``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.messages import BaseMessage, HumanMessage
from langgraph.runtime import Runtime

from backends.tokens import message_text
from nodes.detect_intent import detect_intent
from state.context import Context, resolve_services
from state.errors import BadRequestError
from state.schemas import ChatState


def user_texts(messages: Sequence[BaseMessage]) -> list[str]:
    """Return the text of every user message, oldest first."""
    return [message_text(m.content) for m in messages if isinstance(m, HumanMessage)]


async def classify_message(state: ChatState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Detect the intent of the newest user message and its parameters."""
    services = await resolve_services(runtime.context)
    texts = user_texts(state.get("messages") or [])
    if not texts or not texts[-1].strip():
        raise BadRequestError(
            "the chat needs a user message with text, e.g. "
            '{"role": "user", "content": "Show Lambda usage for the last 7 days"}'
        )
    intent, params = detect_intent(texts[-1], services.catalog.ids())
    if intent == "cost_estimate" and "text" not in params:
        # "how much would this prompt cost?" is about the message before it, if any
        params["text"] = texts[-2] if len(texts) > 1 else texts[-1]
    return {"intent": intent, "params": params, "routing": None}
