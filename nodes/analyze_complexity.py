"""Validate the request and score how demanding it is.

The score in [0, 1] is a weighted sum of cheap, deterministic features of the
request; the level (low / medium / high) applies thresholds to the score, so
each can be tested on its own.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
import uuid
from collections import Counter
from collections.abc import Mapping
from typing import Any

from langchain_core.messages import convert_to_openai_messages
from langgraph.runtime import Runtime

from backends.tokens import count_message_tokens, message_text
from state.chat_fields import check_params, required_capabilities
from state.context import Context, resolve_services
from state.errors import BadRequestError
from state.schemas import BACKENDS, COST_PRIORITIES, Complexity, ComplexityLevel, RouterState

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
    "tools": 0.15,
}
MEDIUM_THRESHOLD = 0.25
SCAN_CHARS = 4096
HIGH_THRESHOLD = 0.55

# The features read the lowercased text once as words (set lookups) and run
# only a few regexes whose first character lets the engine skip ahead. Case-
# insensitive alternations behind a leading ``\b`` cost 0.1-0.2 µs per character
# each, 1-5 ms per long prompt (BENCHMARKS.md); this reads the same features in
# a tenth to a half of that. tests/unit/test_nodes.py checks it against the plain
# regexes.
_WORD = re.compile(r"\w+")
_CUES = {
    "code": "python javascript typescript rust golang sql regex refactor debug compile",
    "math": "prove proof theorem integral derivative equation matrix probability lemma "
    "optimise optimize calculate compute",
    "multi_step": "step steps first then finally next",
    "reasoning": "analyse analyze analysis compare comparison evaluate assess tradeoff "
    "tradeoffs critique justify design architecture strategy recommend implication "
    "implications detailed comprehensive",
    "structured_output": "json yaml xml csv schema table structured",
}
_FEATURE_WORDS = {name: tuple(words.split()) for name, words in _CUES.items()}
_EIGEN = re.compile(r"\beigen\w*")
_CODE_SYNTAX = re.compile(
    r"```|def\s+\w+\(|class\s+\w+|function\s+\w+\(|import\s+\w+|#include|select\b.+\bfrom\b|"
    r"=>|console\.log\b",
    re.DOTALL,
)
_CODE_WORD_START = ("def", "class", "function", "import", "select", "console")
_MATH_SYMBOLS = re.compile(r"[=<>∑∫√π\d](?:(?<=[=<>])\s*\d|(?<=\d)\s*[\^*/+-]\s*\d|(?<=[∑∫√π]))")
_MATH_SYMBOL_CHARS = "=<>∑∫√π0123456789"  # every match holds one of them
_LIST_ITEM = re.compile(r"^\s*(?:\d+[.)]|[-*•])\s+", re.MULTILINE)
_STEP_BY_STEP = re.compile(r"\bstep[- ]by[- ]step\b")
# phrases: a substring test first (fast), the bounded regex only when one is there
_CODE_PHRASES = (("stack trace", "unit test"), re.compile(r"\b(?:stack trace|unit tests?)\b"))
_STEP_PHRASES = (("after that",), re.compile(r"\bafter that\b"))
_REASONING_PHRASES = (
    ("trade-off", "pros and cons", "explain why", "in depth", "root cause"),
    re.compile(r"\b(?:trade-offs?|pros and cons|explain why|in depth|root cause)\b"),
)


# Above this many characters, tokens are counted in a worker thread: a huge
# prompt must not hold up the other requests on the event loop.
THREAD_COUNT_CHARS = 32_768


def _has_content(message: Mapping[str, Any]) -> bool:
    """Say whether a message says anything: text, a tool call, or a part such as an image."""
    content = message.get("content")
    if message_text(content).strip() or message.get("tool_calls"):
        return True
    return isinstance(content, list) and any(
        isinstance(part, Mapping) and part.get("type") not in (None, "text") for part in content
    )


def validate_request(state: RouterState) -> list[dict[str, Any]]:
    """Check the caller's input and return the conversation as OpenAI-style dicts."""
    raw = state.get("messages")
    if not isinstance(raw, list) or not raw:
        raise BadRequestError(
            '\'messages\' must be a non-empty list such as [{"role": "user", "content": "Hello!"}]'
        )
    messages: list[dict[str, Any]] = convert_to_openai_messages(raw)
    for index, message in enumerate(messages):
        content = message.get("content")
        if content is not None and not isinstance(content, str | list):
            raise BadRequestError(
                f"messages[{index}].content must be a string or a list of content parts"
            )
    if not any(_has_content(m) for m in messages):
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
    params = state.get("params")
    if params is not None:
        if not isinstance(params, Mapping):
            raise BadRequestError(
                "params must be an object of OpenAI chat-completions fields, "
                'e.g. {"tools": [...], "stop": ["\\n"]}'
            )
        check_params(params)
    return messages


def scanned_text(messages: list[dict[str, Any]]) -> str:
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


def _phrases(phrases: tuple[tuple[str, ...], re.Pattern[str]], text: str, cap: int) -> int:
    literals, pattern = phrases
    if not any(literal in text for literal in literals):
        return 0
    return _count(pattern, text, cap)


def _has_code_syntax(text: str) -> bool:
    """Find code syntax; ``def``, ``class`` and the like only at the start of a word."""
    for match in _CODE_SYNTAX.finditer(text):
        start = match.start()
        if start == 0 or (not text[start - 1].isalnum() and text[start - 1] != "_"):
            return True
        if not text.startswith(_CODE_WORD_START, start):
            return True
    return False


def feature_counts(text: str) -> dict[str, int]:
    """Count each feature's cues in ``text`` (lowercased), saturating where it stops mattering."""
    words = Counter(_WORD.findall(text))
    hits = {name: sum(words[w] for w in cues) for name, cues in _FEATURE_WORDS.items()}
    if "eigen" in text:
        hits["math"] += _count(_EIGEN, text, 3)
    if hits["math"] < 3 and any(symbol in text for symbol in _MATH_SYMBOL_CHARS):
        hits["math"] += _count(_MATH_SYMBOLS, text, 3)
    if not hits["code"]:
        hits["code"] = _phrases(_CODE_PHRASES, text, 1) or int(_has_code_syntax(text))
    # "step by step" is one cue, not the two "step" words in it
    if hits["multi_step"] >= 2 and "by" in text:
        hits["multi_step"] -= _count(_STEP_BY_STEP, text, 1_000_000)
    if hits["multi_step"] < 4:
        hits["multi_step"] += _phrases(_STEP_PHRASES, text, 4) + _count(_LIST_ITEM, text, 4)
    if hits["reasoning"] < 3:
        hits["reasoning"] += _phrases(_REASONING_PHRASES, text, 3)
    return hits


def score_features(
    messages: list[dict[str, Any]],
    prompt_tokens: int,
    max_tokens: int | None,
    params: Mapping[str, Any] | None = None,
) -> dict[str, float]:
    """Return each feature's strength in [0, 1]."""
    hits = feature_counts(scanned_text(messages).lower())
    params = params or {}
    tools = params.get("tools") or []
    fmt = params.get("response_format")
    structured = isinstance(fmt, Mapping) and fmt.get("type") in ("json_object", "json_schema")
    user_turns = sum(1 for m in messages if m.get("role") == "user")
    return {
        # log scale: 20 tokens is nothing, 3000 tokens is a long document
        "prompt_length": min(1.0, math.log1p(max(prompt_tokens - 20, 0) / 60) / math.log1p(50)),
        "requested_output": min(1.0, (max_tokens or 0) / 4096),
        "turns": min(1.0, max(user_turns - 1, 0) / 8),
        "code": 1.0 if hits["code"] else 0.0,
        "math": min(1.0, hits["math"] / 3),
        "multi_step": min(1.0, hits["multi_step"] / 4),
        "reasoning": min(1.0, hits["reasoning"] / 3),
        "structured_output": 1.0 if hits["structured_output"] or structured else 0.0,
        "tools": min(1.0, len(tools) / 4) if tools else 0.0,
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


def run_request_id(state: RouterState) -> str:
    """Return this run's request id: the caller's, unless it is the previous run's.

    On a LangGraph thread the last run's id stays in the state; a run that
    passes none (or passes that same one again) gets a fresh id, so every run
    is one request with one ledger row.
    """
    given = state.get("request_id")
    if given and given != state.get("last_request_id"):
        return given
    return uuid.uuid4().hex


async def count_prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """Count the prompt's tokens, in a worker thread when the prompt is large."""
    chars = sum(len(message_text(m.get("content"))) for m in messages)
    if chars > THREAD_COUNT_CHARS:
        return await asyncio.to_thread(count_message_tokens, messages)
    return count_message_tokens(messages)


async def analyze_complexity(state: RouterState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Validate the request, count its tokens and score its complexity."""
    services = await resolve_services(runtime.context)
    messages = validate_request(state)
    prompt_tokens = await count_prompt_tokens(messages)
    max_tokens = state.get("max_tokens")
    params = state.get("params") or {}
    requires = required_capabilities(params, messages)
    features = score_features(messages, prompt_tokens, max_tokens, params)
    score = complexity_score(features)
    complexity: Complexity = {
        "score": score,
        "level": complexity_level(score),
        "features": {k: round(v, 4) for k, v in features.items() if v},
    }
    request_id = run_request_id(state)
    update: dict[str, Any] = {
        "request_id": request_id,
        "last_request_id": request_id,
        "started_at": time.time(),
        "prompt_messages": messages,
        "prompt_tokens_estimate": prompt_tokens,
        "output_tokens_cap": max_tokens or services.settings.default_max_tokens,
        "requires": requires,
        "complexity": complexity,
        "attempts": None,  # a new run's attempt list
        "decisions": {
            "analyze_complexity": {
                "request_id": request_id,
                "prompt_tokens": prompt_tokens,
                "complexity": complexity,
                "requires": sorted(requires),
            }
        },
    }
    # what an earlier run on this thread left must not pass for this run's answer
    for stale in ("response", "completion", "reservation", "budget", "budget_refused", "refusal"):
        if state.get(stale) is not None:
            update[stale] = None
    return update
