"""Detect what a chat message asks of the router, with its parameters.

The unified chat answers questions about routing and money from the ledger and
takes routing instructions; everything else is an ordinary chat message for
the router graph. Detection is a few word-set rules over the lowercased
message (no model, no I/O: a few microseconds), checked in a fixed order:

1. ``routing_override``: a routing verb (route, send, direct, force, use, ...)
   with a backend (GPU, serverless, Lambda) and what to route (queries,
   requests, prompts, everything), or "back to normal routing";
2. ``cost_estimate``: how much / estimate / price, about a prompt, a quoted
   text or a named model;
3. ``budget_status``: "budget" with a word that makes it ours (my, our,
   left, remaining, status, limit, reset, ...);
4. ``cost_comparison``: compare / versus / savings / cheaper, with money and
   a backend or the router;
5. ``optimize``: optimise / reduce / cut / lower / tune, with money and the
   router's domain (Lambda, serverless, GPU, inference, LLM, router, workload);
6. ``usage_report``: usage / spend / traffic / requests / tokens, with the
   router's domain or a period ("last 7 days", "this week").

A rule needs the router's own words, never a generic one alone: "how do I
reduce costs in my AWS account?" and "what was the budget of the film
Titanic?" stay ``chat``. When no rule is sure, it is ``chat``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

INTENTS = (
    "chat",
    "usage_report",
    "budget_status",
    "cost_comparison",
    "optimize",
    "routing_override",
    "cost_estimate",
)

_WORD = re.compile(r"[a-z0-9]+(?:[.'][a-z0-9]+)*")
# straight and typographic quotes (U+2018, U+2019, U+201C, U+201D)
_QUOTED = re.compile("[\"'\u2018\u201c]([^\"'\u2019\u201d]{3,})[\"'\u2019\u201d]")
_NUMBERS = {
    name: value
    for value, name in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen "
        "fourteen fifteen sixteen seventeen eighteen nineteen twenty".split()
    )
} | {"thirty": 30, "forty": 40, "fifty": 50, "hundred": 100, "a": 1}

DOMAIN = frozenset(
    "lambda serverless gpu gpus router routing inference llm llms token tokens workload "
    "workloads vllm".split()
)
BACKEND_WORDS = {
    "gpu": "gpu",
    "gpus": "gpu",
    "dedicated": "gpu",
    "vllm": "gpu",
    "serverless": "serverless",
    "lambda": "serverless",
}
MONEY = frozenset(
    "cost costs price prices pricing cheaper cheap expensive saving savings saved save "
    "spend spending spent money bill bills".split()
)
ROUTE_VERBS = frozenset("route send direct force switch use put move".split())
ROUTED_THINGS = frozenset(
    "queries query requests request prompts prompt traffic everything all calls messages".split()
)
CLEAR_WORDS = frozenset("normal default reset stop cancel clear remove end".split())
HIGH_WORDS = frozenset("complex hard difficult demanding heavy".split())
LOW_WORDS = frozenset("simple easy short light trivial".split())
OURS = frozenset(
    "my our we us status left remaining remain remains limit limits reset resets close "
    "hit used daily monthly current team".split()
)
COMPARE = frozenset("compare compared comparison versus vs cheaper savings saving saved".split())
OPTIMIZE = frozenset(
    "optimize optimise optimizing optimising reduce cut lower minimize minimise tune "
    "cheaper less trim".split()
)
USAGE = frozenset(
    "usage spend spent spending traffic requests queries tokens report stats statistics".split()
)
ESTIMATE = frozenset("estimate estimated estimation".split())
PROMPTISH = frozenset("prompt request this".split())
GROUPS = {"model": "model", "models": "model", "backend": "backend", "backends": "backend"} | {
    "user": "user",
    "users": "user",
    "day": "day",
    "daily": "day",
}
_UNIT_DAYS = {"hour": 1 / 24, "day": 1, "week": 7, "month": 30}
_PERIODS = ("today", "yesterday", "this week", "last week", "this month", "last month")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _number(word: str) -> int | None:
    if word.isdigit():
        return int(word)
    return _NUMBERS.get(word)


def model_aliases(model_ids: Iterable[str]) -> dict[str, str]:
    """Map each distinctive part of a model id (``maverick``, ``70b``) and the id to the id."""
    ids = list(model_ids)
    owners: dict[str, set[str]] = {}
    for model_id in ids:
        for part in re.split(r"[-.]", model_id.lower()):
            owners.setdefault(part, set()).add(model_id)
    aliases = {part: next(iter(found)) for part, found in owners.items() if len(found) == 1}
    aliases.update({model_id.lower(): model_id for model_id in ids})
    return aliases


def _period(words: list[str], text: str) -> dict[str, Any]:
    """Find "last 7 days", "past 2 weeks", "last 24 hours", "this week", "today"..."""
    for i, word in enumerate(words[:-1]):
        if word in ("last", "past", "previous"):
            count = _number(words[i + 1])
            unit_at = i + 2
            if count is None:
                count, unit_at = 1, i + 1
            unit = words[unit_at].rstrip("s") if unit_at < len(words) else ""
            if unit in _UNIT_DAYS and count:
                days = max(1, round(count * _UNIT_DAYS[unit]))
                if unit_at == i + 1 and unit in ("week", "month"):
                    return {"period": f"last {unit}"}
                return {"days": days}
    for period in _PERIODS:
        if period in text:
            return {"period": period}
    return {}


def _backend(words: list[str]) -> str | None:
    """Return the backend a routing instruction names (the one after "to", else the first)."""
    named = [(i, BACKEND_WORDS[w]) for i, w in enumerate(words) if w in BACKEND_WORDS]
    if not named:
        return None
    after_to = [b for i, b in named if i > 0 and words[i - 1] in ("to", "the") and "to" in words]
    return after_to[-1] if after_to else named[0][1]


def _override(words: list[str], present: set[str], text: str) -> dict[str, Any] | None:
    if ("routing" in present or "override" in present or "overriding" in present) and (
        present & CLEAR_WORDS
    ):
        return {"action": "clear"}
    if not present & ROUTE_VERBS or not present & ROUTED_THINGS:
        return None
    backend = _backend(words)
    if backend is None:
        return None
    params: dict[str, Any] = {"action": "set", "backend": backend}
    for i, word in enumerate(words[:-1]):
        if word == "next":
            count = _number(words[i + 1])
            if count:
                params["count"] = count
    if present & HIGH_WORDS:
        params["condition"] = "high"
    elif present & LOW_WORDS:
        params["condition"] = "low"
    return params


def _estimate(
    words: list[str], present: set[str], text: str, aliases: Mapping[str, str]
) -> dict[str, Any] | None:
    asks_price = (
        bool(present & ESTIMATE)
        or "how much" in text
        or "how expensive" in text
        or "price of" in text
        or "what would it cost" in text
    )
    if not asks_price:
        return None
    model = next((aliases[w] for w in words if w in aliases), None)
    quoted = _QUOTED.search(text)
    subject = quoted.group(1) if quoted else None
    if subject is None and ":" in text:
        subject = text.split(":", 1)[1].strip() or None
    if model is None and subject is None and not present & PROMPTISH:
        return None
    params: dict[str, Any] = {}
    if model is not None:
        params["model"] = model
    if subject is not None:
        params["text"] = subject
    return params


def _after_for(text: str) -> str | None:
    match = re.search(r"\bfor (.+?)[?.!]*$", text.strip())
    return match.group(1).strip() if match else None


def detect_intent(text: str, model_ids: Iterable[str] = ()) -> tuple[str, dict[str, Any]]:
    """Return the intent of one chat message and its parameters (``chat`` when unsure)."""
    lowered = " ".join(text.lower().split())
    words = _words(lowered)
    present = set(words)
    domain = bool(present & DOMAIN)

    override = _override(words, present, lowered)
    if override is not None:
        return "routing_override", override
    estimate = _estimate(words, present, lowered, model_aliases(model_ids))
    if estimate is not None and not present & COMPARE and "budget" not in present:
        return "cost_estimate", estimate
    if "budget" in present and (domain or present & OURS):
        return "budget_status", {}
    money = bool(present & MONEY)
    backendish = bool(present & set(BACKEND_WORDS)) or "router" in present
    if (
        money
        and backendish
        and (present & COMPARE or {"if", "instead"} & present or "baseline" in present)
    ):
        return "cost_comparison", {}
    if (present & OPTIMIZE) and (money or "routing" in present) and (domain or "workload" in text):
        workload = _after_for(lowered)
        return "optimize", {"workload": workload} if workload else {}
    period = _period(words, lowered)
    if present & USAGE and (domain or period):
        params = dict(period)
        for i, word in enumerate(words[:-1]):
            if word in ("by", "per") and words[i + 1] in GROUPS:
                params["group_by"] = GROUPS[words[i + 1]]
        return "usage_report", params
    return "chat", {}
