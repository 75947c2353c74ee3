"""Validate the request and score how demanding it is.

The score in [0, 1] is a weighted sum of cheap, deterministic features of the
request; the level (low / medium / high) applies thresholds to the score, so
each can be tested on its own.
"""

from __future__ import annotations

import math
import re
import time
import uuid
from collections.abc import Mapping
from typing import Any

from langgraph.runtime import Runtime

from backends.tokens import count_message_tokens, message_text
from state.context import Context, resolve_services
from state.errors import BadRequestError
from state.schemas import (
    BACKENDS,
    COST_PRIORITIES,
    ChatMessage,
    Complexity,
    ComplexityLevel,
    RouterState,
)

ROLES = frozenset({"system", "user", "assistant", "tool", "developer"})

# Feature weights: they add up to more than one, so a request strong on a few
# dimensions reaches "high" without needing all of them.
WEIGHTS: dict[str, float] = {
    "prompt_length": 0.25,
    "requested_output": 0.15,
    "turns": 0.05,
    "code": 0.2,
    "math": 0.2,
    "multi_step": 0.3,
    "reasoning": 0.25,
    "structured_output": 0.1,
}
MEDIUM_THRESHOLD = 0.25
SCAN_CHARS = 4096
HIGH_THRESHOLD = 0.55

_CODE = re.compile(
    r"```|\bdef\s+\w+\(|\bclass\s+\w+|\bfunction\s+\w+\(|\bimport\s+\w+|#include|"
    r"\bSELECT\b.+\bFROM\b|=>|\bconsole\.log\b|\b(?:python|javascript|typescript|rust|golang|sql|"
    r"regex|refactor|debug|stack trace|compile|unit tests?)\b",
    re.IGNORECASE | re.DOTALL,
)
_MATH = re.compile(
    r"\b(?:prove|proof|theorem|integral|derivative|equation|matrix|probability|"
    r"eigen\w*|lemma|optimi[sz]e|calculate|compute)\b|[=<>]\s*\d|\d\s*[\^*/+-]\s*\d|[∑∫√π]",
    re.IGNORECASE,
)
_STEPS = re.compile(
    r"\bstep[- ]by[- ]step\b|\bsteps?\b|\bfirst\b|\bthen\b|\bfinally\b|\bafter that\b|"
    r"\bnext\b|^\s*(?:\d+[.)]|[-*•])\s+",
    re.IGNORECASE | re.MULTILINE,
)
_REASONING = re.compile(
    r"\b(?:analy[sz]e|analysis|compare|comparison|evaluate|assess|trade-?offs?|pros and cons|"
    r"critique|justify|explain why|design|architecture|strategy|recommend|implications?|"
    r"in depth|detailed|comprehensive|root cause)\b",
    re.IGNORECASE,
)
_STRUCTURED = re.compile(
    r"\b(?:json|yaml|xml|csv|schema|table|markdown table|structured)\b", re.IGNORECASE
)


def _message_dict(message: Any) -> ChatMessage:
    """Return an OpenAI-style dict for a dict or a LangChain message."""
    if isinstance(message, Mapping):
        return dict(message)  # type: ignore[return-value]
    role = getattr(message, "type", None)
    if role is not None and hasattr(message, "content"):
        roles = {"human": "user", "ai": "assistant", "system": "system", "tool": "tool"}
        return {"role": roles.get(role, role), "content": message.content}
    raise BadRequestError(
        f"each message must be an object with 'role' and 'content', got {type(message).__name__}"
    )


def validate_request(state: RouterState) -> list[ChatMessage]:
    """Check the caller's input and return the messages as plain dicts."""
    raw = state.get("messages")
    if not isinstance(raw, list) or not raw:
        raise BadRequestError(
            '\'messages\' must be a non-empty list such as [{"role": "user", "content": "Hello!"}]'
        )
    messages = [_message_dict(m) for m in raw]
    for index, message in enumerate(messages):
        role = message.get("role")
        if role not in ROLES:
            raise BadRequestError(
                f"messages[{index}].role is {role!r}; use one of {', '.join(sorted(ROLES))}"
            )
        content = message.get("content")
        if content is not None and not isinstance(content, str | list):
            raise BadRequestError(
                f"messages[{index}].content must be a string or a list of text parts"
            )
    if not any(message_text(m.get("content")).strip() for m in messages):
        raise BadRequestError("every message is empty: send at least one message with text")
    max_tokens = state.get("max_tokens")
    if max_tokens is not None and (
        isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1
    ):
        raise BadRequestError(f"max_tokens must be a positive integer, got {max_tokens!r}")
    temperature = state.get("temperature")
    if temperature is not None and (
        isinstance(temperature, bool)
        or not isinstance(temperature, int | float)
        or not 0 <= temperature <= 2
    ):
        raise BadRequestError(f"temperature must be a number from 0 to 2, got {temperature!r}")
    priority = state.get("cost_priority")
    if priority is not None and priority not in COST_PRIORITIES:
        raise BadRequestError(
            f"cost_priority is {priority!r}; use one of {', '.join(COST_PRIORITIES)}"
        )
    forced = state.get("force_backend")
    if forced is not None and forced not in BACKENDS:
        raise BadRequestError(f"force_backend is {forced!r}; use one of {', '.join(BACKENDS)}")
    model = state.get("model")
    if model is not None and not isinstance(model, str):
        raise BadRequestError(f"model must be a model id string or 'auto', got {model!r}")
    return messages


def scanned_text(messages: list[ChatMessage]) -> str:
    """Return the text the features read: all of it, or its head and tail when long.

    Instructions sit at the start and the end of a prompt; a long document
    pasted in between counts through ``prompt_length`` (in tokens), while
    scanning all of it with the regexes would cost milliseconds per request.
    """
    text = "\n".join(message_text(m.get("content")) for m in messages)
    if len(text) <= 2 * SCAN_CHARS:
        return text
    return f"{text[:SCAN_CHARS]}\n{text[-SCAN_CHARS:]}"


def _count(pattern: re.Pattern[str], text: str, saturation: int) -> int:
    """Count matches up to ``saturation`` (the feature is at 1.0 from there on)."""
    found = 0
    for _ in pattern.finditer(text):
        found += 1
        if found >= saturation:
            break
    return found


def score_features(
    messages: list[ChatMessage], prompt_tokens: int, max_tokens: int | None
) -> dict[str, float]:
    """Return each feature's strength in [0, 1]."""
    text = scanned_text(messages)
    user_turns = sum(1 for m in messages if m.get("role") == "user")
    steps = _count(_STEPS, text, 4)
    reasoning = _count(_REASONING, text, 3)
    return {
        # log scale: 20 tokens is nothing, 3000 tokens is a long document
        "prompt_length": min(1.0, math.log1p(max(prompt_tokens - 20, 0) / 60) / math.log1p(50)),
        "requested_output": min(1.0, (max_tokens or 0) / 4096),
        "turns": min(1.0, max(user_turns - 1, 0) / 8),
        "code": 1.0 if _CODE.search(text) else 0.0,
        "math": min(1.0, _count(_MATH, text, 3) / 3),
        "multi_step": min(1.0, steps / 4),
        "reasoning": min(1.0, reasoning / 3),
        "structured_output": 1.0 if _STRUCTURED.search(text) else 0.0,
    }


def complexity_score(features: Mapping[str, float]) -> float:
    """Combine feature strengths into one score in [0, 1]."""
    return round(min(1.0, sum(WEIGHTS[name] * value for name, value in features.items())), 4)


def complexity_level(score: float) -> ComplexityLevel:
    """Map a score to a level."""
    if score >= HIGH_THRESHOLD:
        return "high"
    if score >= MEDIUM_THRESHOLD:
        return "medium"
    return "low"


async def analyze_complexity(state: RouterState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Validate the request, count its tokens and score its complexity."""
    services = await resolve_services(runtime.context)
    messages = validate_request(state)
    prompt_tokens = count_message_tokens(messages)
    max_tokens = state.get("max_tokens")
    features = score_features(messages, prompt_tokens, max_tokens)
    score = complexity_score(features)
    complexity: Complexity = {
        "score": score,
        "level": complexity_level(score),
        "features": {k: round(v, 4) for k, v in features.items() if v},
    }
    return {
        "request_id": state.get("request_id") or uuid.uuid4().hex,
        "started_at": time.time(),
        "messages": messages,
        "prompt_tokens_estimate": prompt_tokens,
        "output_tokens_cap": max_tokens or services.settings.default_max_tokens,
        "complexity": complexity,
        "attempts": [],
    }
