"""Prefix-cache affinity: which GPU endpoint last served a conversation's earlier turns.

vLLM keeps the KV cache of a prompt's prefix (automatic prefix caching), so the
endpoint that answered a conversation's last turn can start the next turn
without recomputing the turns it already holds. The pool remembers, for the
digest of each conversation it answered (its messages plus the answer), the
endpoint that answered it; the next turn's prefix (everything up to and
including that answer) has the same digest and finds that endpoint.

Keys are digests of the model's served name and each message's role, name,
text, tool calls and tool-call id, in a stable form: no message text is kept.
The map is a bounded LRU, a cache of routing hints in one process, not a
record.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import orjson

# Conversations remembered per process (a few hundred bytes each).
AFFINITY_ENTRIES = 10_000


def _arguments(raw: Any) -> Any:
    """Return tool-call arguments in one form, whether they came as a JSON string or not."""
    if isinstance(raw, str):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            return raw
    return raw


def _content(content: Any) -> Any:
    """Return a message's content with plain-text parts joined (both forms mean the same)."""
    if isinstance(content, list) and all(
        isinstance(p, Mapping) and p.get("type") == "text" for p in content
    ):
        return "".join(str(p.get("text") or "") for p in content)
    return content or ""


def canonical(message: Mapping[str, Any]) -> bytes:
    """Return the bytes that stand for one OpenAI-style message in a prefix key."""
    calls = [
        (
            call.get("id"),
            (call.get("function") or {}).get("name"),
            _arguments((call.get("function") or {}).get("arguments")),
        )
        for call in message.get("tool_calls") or ()
    ]
    shaped = (
        message.get("role"),
        message.get("name"),
        _content(message.get("content")),
        calls,
        message.get("tool_call_id"),
    )
    return orjson.dumps(shaped, option=orjson.OPT_SORT_KEYS)


def _start(model: str) -> Any:
    """Return a hash that has taken in the model's served name."""
    h = hashlib.sha256()  # OpenSSL's: faster here than blake2b on long conversations
    _feed(h, model.encode())
    return h


def _feed(h: Any, part: bytes) -> None:
    # length-framed, so no two different conversations run together into one byte string
    h.update(len(part).to_bytes(8, "little"))
    h.update(part)


def _key(h: Any) -> str:
    return str(h.hexdigest()[:32])


def digest(model: str, messages: Iterable[Mapping[str, Any]]) -> str:
    """Return the key of ``messages`` sent to ``model``: a digest, no text."""
    h = _start(model)
    for message in messages:
        _feed(h, canonical(message))
    return _key(h)


def prefix_cut(messages: Sequence[Mapping[str, Any]]) -> int:
    """Return how many leading messages are the conversation's earlier turns (0: none).

    The earlier turns end with the last assistant message (what follows is the
    new turn: a user message, or tool results); with no assistant message, they
    are the messages before the latest user message, when an earlier one exists.
    """
    roles = [m.get("role") for m in messages]
    for index in range(len(roles) - 1, -1, -1):
        if roles[index] == "assistant":
            return index + 1 if index + 1 < len(roles) else 0
    users = [i for i, role in enumerate(roles) if role == "user"]
    return users[-1] if len(users) > 1 else 0


def prefix_key(model: str, messages: Sequence[Mapping[str, Any]]) -> str | None:
    """Return the key of the conversation's earlier turns, or None for a first turn."""
    cut = prefix_cut(messages)
    return digest(model, messages[:cut]) if cut else None


def conversation_key(
    model: str, messages: Sequence[Mapping[str, Any]], answer: Mapping[str, Any]
) -> str:
    """Return the key the next turn's prefix will have: these messages and the answer."""
    return digest(model, [*messages, answer])


def affinity_keys(
    model: str, messages: Sequence[Mapping[str, Any]]
) -> tuple[str | None, Callable[[Mapping[str, Any]], str]]:
    """Return :func:`prefix_key` and a function of the answer giving :func:`conversation_key`.

    One pass over the conversation for both (a long one is most of the cost).
    """
    cut = prefix_cut(messages)
    h = _start(model)
    prefix = None
    for index, message in enumerate(messages):
        if index == cut and cut:
            prefix = _key(h.copy())
        _feed(h, canonical(message))

    def next_key(answer: Mapping[str, Any]) -> str:
        whole = h.copy()
        _feed(whole, canonical(answer))
        return _key(whole)

    return prefix, next_key


class AffinityMap:
    """The endpoint (its URL) that last answered each conversation: a bounded LRU."""

    def __init__(self, size: int = AFFINITY_ENTRIES) -> None:
        """Keep at most ``size`` conversations; the least recently used goes first."""
        self.size = size
        self._entries: OrderedDict[str, str] = OrderedDict()

    def __len__(self) -> int:
        """Return the conversations remembered."""
        return len(self._entries)

    def get(self, key: str) -> str | None:
        """Return the URL that served ``key`` last, if remembered (and mark it recent)."""
        url = self._entries.get(key)
        if url is not None:
            self._entries.move_to_end(key)
        return url

    def put(self, key: str, url: str) -> None:
        """Remember that ``url`` served ``key``, forgetting the oldest entry when full."""
        self._entries[key] = url
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
