"""Deterministic answers: text, tool calls, JSON answers and their logprobs.

The same request always gets the same answer. Text says it comes from the
emulator and names the model, then talks about the prompt's keywords with
seeded filler; a tool call fills the function's required parameters from its
JSON schema; after a tool result the answer quotes it. ``stop`` strings and the
token limit cut the text as a model's sampler would. Answers are cached by model,
prompt digest and the parameters that shape them, so a repeated prompt costs a
dictionary lookup.
"""

from __future__ import annotations

import codecs
import functools
import hashlib
import math
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from backends.tokens import _encoding, message_text
from emulator.validation import ChatRequest

CACHE_LIMIT = 4096
_KEYWORD_SCAN_CHARS = 2000
_KEYWORD = re.compile(r"[A-Za-z][A-Za-z0-9'-]{2,}")
_STOPWORDS = frozenset(
    "the and for are but not you your with this that from have has was were what when "
    "where which who why how can could would should will about into than then them they "
    "there their our its it's please give tell me".split()
)
_FILLER = (
    "deterministic emulated output stands in for a real model while the router measures "
    "latency throughput cost and token accounting across serverless and dedicated backends "
    "each word here is filler chosen from a fixed list so the same prompt always yields the "
    "same reply and benchmarks stay repeatable"
).split()
_SCALARS: dict[str, Any] = {"integer": 1, "number": 1, "boolean": True, "null": None}


@dataclass(slots=True)
class Answer:
    """One generated answer, ready to serve.

    ``text`` is the message content, or the arguments of a tool call when
    ``tool_name`` is set; ``ids`` are its output tokens and ``pieces`` the
    JSON-encoded text of each token, in order.
    """

    text: str
    ids: list[int]
    finish_reason: str
    pieces: list[bytes]
    tool_name: str | None = None
    logprobs: dict[int, list[bytes]] = field(default_factory=dict)  # by top_logprobs

    @property
    def tokens(self) -> int:
        """The number of output tokens."""
        return len(self.ids)


def last_user_text(messages: Sequence[Mapping[str, Any]]) -> str:
    """Return the text of the last user message (else of the last message)."""
    for message in reversed(messages):
        if message.get("role") == "user":
            return message_text(message.get("content"))
    return message_text(messages[-1].get("content"))


def keywords(prompt: str) -> list[str]:
    """Return up to six distinct words of ``prompt`` worth talking about."""
    seen: list[str] = []
    for match in _KEYWORD.finditer(prompt[:_KEYWORD_SCAN_CHARS]):
        word = match.group().lower().strip("'-")
        if word and word not in _STOPWORDS and word not in seen:
            seen.append(word)
            if len(seen) == 6:
                break
    return seen


def natural_text(header: str, prompt: str, digest: int) -> str:
    """Return the untruncated answer: header, topic sentence, seeded filler sentences."""
    encode = _encoding().encode_ordinary
    topic = " ".join(keywords(prompt)) or "your message"
    text = f"{header}This is an emulated reply about: {topic}."
    target = len(encode(header)) + 12 + digest % 29  # 12..40 tokens after the header
    rng = random.Random(digest)
    while len(encode(text)) < target:
        words = rng.choices(_FILLER, k=rng.randint(5, 10))
        text += " " + " ".join(words).capitalize() + "."
    return text


def _value(schema: Any, word: str) -> Any:
    """Return a deterministic value that fits one property's JSON schema."""
    if not isinstance(schema, dict):
        return word
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    if "const" in schema:
        return schema["const"]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        options = schema.get("anyOf") or schema.get("oneOf")
        if isinstance(options, list) and options:
            return _value(options[0], word)
    if kind == "object":
        return {}
    if kind == "array":
        return []
    return _SCALARS.get(kind, word) if isinstance(kind, str) else word


def fill_object(schema: Any, prompt: str) -> dict[str, Any]:
    """Return an object holding the schema's required properties, filled deterministically.

    An enum gives its first value, a string a word of ``prompt``, an integer or a
    number 1, a boolean true, an object ``{}`` and an array ``[]``.
    """
    if not isinstance(schema, dict):
        return {}
    required = schema.get("required")
    properties = schema.get("properties")
    if not isinstance(required, list):
        return {}
    if not isinstance(properties, dict):
        properties = {}
    words = keywords(prompt) or prompt.split()[:1] or ["emulator"]
    filled: dict[str, Any] = {}
    for i, name in enumerate(n for n in required if isinstance(n, str)):
        filled[name] = _value(properties.get(name), words[i % len(words)])
    return filled


def cut_before_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """Cut ``text`` before the first stop string it holds; say whether one was found."""
    first = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return (text[:first], True) if first >= 0 else (text, False)


def _cut(tokens: list[int], limit: int) -> tuple[str, list[int]]:
    """Return the longest token-boundary prefix whose own encoding has <= ``limit`` tokens."""
    encoding = _encoding()
    for k in range(min(limit, len(tokens)), 0, -1):
        text = encoding.decode_bytes(tokens[:k]).decode("utf-8", "ignore")
        again = encoding.encode_ordinary(text)
        if len(again) <= limit:
            return text, again
    return "", []


def _pieces(tokens: list[int]) -> list[bytes]:
    """Split an answer into per-token text that concatenates back to the whole answer."""
    encoding = _encoding()
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pieces = [orjson.dumps(decoder.decode(encoding.decode_single_token_bytes(t))) for t in tokens]
    tail = decoder.decode(b"", final=True)
    if tail and pieces:
        pieces[-1] = orjson.dumps(orjson.loads(pieces[-1]) + tail)
    return pieces


def _finish(text: str, limit: int | None, finish: str, tool_name: str | None = None) -> Answer:
    tokens = _encoding().encode_ordinary(text)
    if limit is not None and limit < len(tokens):
        text, tokens = _cut(tokens, limit)
        finish = "length"
    return Answer(text, tokens, finish, _pieces(tokens), tool_name)


class Answers:
    """The answers of one emulator, cached by what shapes them."""

    def __init__(self, label: str) -> None:
        """Answer as ``label`` (shown in each text answer's header)."""
        self._label = label
        self._cache: dict[tuple[Any, ...], Answer] = {}

    def answer(self, request: ChatRequest) -> Answer:
        """Return the answer to a checked request."""
        messages = request.messages
        prompt = last_user_text(messages)
        digest = int.from_bytes(hashlib.blake2b(prompt.encode(), digest_size=8).digest(), "big")
        last = messages[-1]
        result = message_text(last.get("content")) if last.get("role") == "tool" else None
        key: tuple[Any, ...] = (request.model, digest, request.limit)
        if (
            request.tool is not None
            or request.response_format is not None
            or request.stops is not None
            or result is not None
        ):
            key += (
                orjson.dumps(
                    [request.tool, request.response_format, request.stops, result],
                    option=orjson.OPT_SORT_KEYS,
                ),
            )
        answer = self._cache.get(key)
        if answer is None:
            answer = self._make(request, prompt, digest, result)
            if len(self._cache) >= CACHE_LIMIT:
                self._cache.clear()
            self._cache[key] = answer
        return answer

    def _make(self, request: ChatRequest, prompt: str, digest: int, result: str | None) -> Answer:
        tool = request.tool
        if tool is not None:
            arguments = orjson.dumps(fill_object(tool.get("parameters"), prompt)).decode()
            return _finish(arguments, request.limit, "tool_calls", tool["name"])
        header = f"[{self._label} · {request.model}] "
        if result is not None:
            text = f"{header}The tool returned: {result}"
        else:
            text = natural_text(header, prompt, digest)
        fmt = request.response_format
        if fmt == "json_object":
            text = orjson.dumps({"answer": text}).decode()
        elif isinstance(fmt, dict):
            text = orjson.dumps(fill_object(fmt, prompt)).decode()
        if request.stops:
            text, _ = cut_before_stop(text, request.stops)
        return _finish(text, request.limit, "stop")


# -- logprobs ------------------------------------------------------------------------------


@functools.cache
def _alternatives() -> tuple[int, ...]:
    """Token ids offered as the less likely alternatives in ``top_logprobs``."""
    encode = _encoding().encode_ordinary
    return tuple(dict.fromkeys(encode(" " + word)[0] for word in _FILLER))


def _token(raw: bytes, logprob: float) -> dict[str, Any]:
    return {"token": raw.decode("utf-8", "replace"), "logprob": logprob, "bytes": list(raw)}


def logprob_entries(answer: Answer, top: int) -> list[bytes]:
    """Return the JSON of each output token's logprob entry, with ``top`` alternatives.

    The chosen token is the most likely one (probability 0.6 to 0.99, from its id
    and position); the alternatives share what is left, each half the one before,
    so the probabilities of one position sum to less than 1.
    """
    found = answer.logprobs.get(top)
    if found is not None:
        return found
    decode = _encoding().decode_single_token_bytes
    pool = _alternatives()
    entries: list[bytes] = []
    for position, token_id in enumerate(answer.ids):
        x = 0.01 + ((token_id * 2654435761 + position * 40503) % 4900) / 10000
        chosen = _token(decode(token_id), round(-x, 6))
        tops: list[dict[str, Any]] = []
        if top:
            tops.append(chosen)
            rest = 1.0 - math.exp(-x)
            start = (token_id + position) % len(pool)
            for i in range(len(pool)):
                if len(tops) == top:
                    break
                other = pool[(start + i) % len(pool)]
                if other != token_id:
                    logprob = round(math.log(rest * 0.9 * 0.5 ** len(tops)), 6)
                    tops.append(_token(decode(other), logprob))
        entry = {**chosen, "top_logprobs": tops}
        entries.append(orjson.dumps(entry))
    answer.logprobs[top] = entries
    return entries
