"""An OpenAI-compatible chat-completions client over httpx.

One instance per backend base URL, all sharing the process's ``httpx.AsyncClient``
(its connection pool). The request body goes out as the caller built it, and
the answer comes back whole: the assistant message with its ``tool_calls``,
``refusal`` and any other field, ``logprobs``, ``system_fingerprint`` and the
finish reason. Token usage comes from the backend's response; a backend that
sends none gets an honest local count, flagged as estimated.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
from pydantic import SecretStr

from backends.errors import BackendError
from backends.tokens import count_message_tokens, count_text_tokens

# Statuses worth one more try on the same backend before falling back.
TRANSIENT_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
_ERROR_TEXT_LIMIT = 500
# vLLM's finish reason for an answer it cut short itself (it is stopping): not an answer
ABORTED = "abort"

# A streamed delta as the backend sent it (content, tool_calls, refusal, role),
# its logprobs and the chunk's system_fingerprint.
DeltaSink = Callable[[dict[str, Any], Any, str | None], Awaitable[None]]


@dataclass(slots=True)
class ChatResult:
    """The answer of one chat-completions call."""

    message: dict[str, Any]
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    model: str
    latency_s: float
    ttft_s: float | None = None
    usage_estimated: bool = False
    logprobs: dict[str, Any] | None = None
    system_fingerprint: str | None = None

    @property
    def content(self) -> str:
        """Return the answer's text ('' for a tool call)."""
        content = self.message.get("content")
        return content if isinstance(content, str) else ""


def _error_object(response: httpx.Response) -> dict[str, Any]:
    """Return the backend's OpenAI error object, short and with plain values only."""
    message: Any = None
    found: dict[str, Any] = {}
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        body = None
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict):
            found = error
            message = error.get("message") or error.get("detail")
        elif isinstance(error, str):
            message = error
    text = message if isinstance(message, str) else response.text
    text = " ".join(text.split())[:_ERROR_TEXT_LIMIT]
    result: dict[str, Any] = {"message": text or f"HTTP {response.status_code}"}
    for key in ("type", "param", "code"):
        value = found.get(key)
        if isinstance(value, str | int) and not isinstance(value, bool):
            result[key] = str(value)[:100]
    return result


def retry_after(response: httpx.Response) -> float | None:
    """Return the ``Retry-After`` header in seconds (a number of seconds only), or None."""
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: treated as "not soon"


def status_error(backend: str, model: str, response: httpx.Response) -> BackendError:
    """Describe a non-200 answer of the backend."""
    body = _error_object(response)
    return BackendError(
        backend,
        model,
        f"HTTP {response.status_code}: {body['message']}",
        status=response.status_code,
        transient=response.status_code in TRANSIENT_STATUSES,
        body=body,
        retry_after_s=retry_after(response),
    )


def _completion_tokens(message: dict[str, Any]) -> int:
    """Count an answer's tokens locally (text, refusal and tool-call arguments)."""
    total = 0
    for key in ("content", "refusal"):
        value = message.get(key)
        if isinstance(value, str):
            total += count_text_tokens(value)
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        total += count_text_tokens(str(function.get("name") or ""))
        total += count_text_tokens(str(function.get("arguments") or ""))
    return total


class _StreamedAnswer:
    """The assistant message put back together from streamed deltas."""

    __slots__ = ("content", "extra", "logprobs", "refusal", "tool_calls")

    def __init__(self) -> None:
        self.content: list[str] = []
        self.refusal: list[str] = []
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.logprobs: dict[str, list[Any]] = {}
        self.extra: dict[str, Any] = {}

    def add(self, delta: dict[str, Any], logprobs: Any) -> bool:
        """Fold one delta in; say whether it carried any of the answer."""
        carried = False
        for key, value in delta.items():
            if value is None or key == "role":
                continue
            if key == "content":
                if value:
                    self.content.append(value)
                    carried = True
            elif key == "refusal":
                self.refusal.append(value)
                carried = True
            elif key == "tool_calls":
                for piece in value:
                    self._add_tool_call(piece)
                carried = True
            else:
                self.extra[key] = value
        if isinstance(logprobs, dict):
            for key, items in logprobs.items():
                if isinstance(items, list):
                    self.logprobs.setdefault(key, []).extend(items)
        return carried

    def _add_tool_call(self, piece: dict[str, Any]) -> None:
        index = int(piece.get("index", len(self.tool_calls)))
        call = self.tool_calls.setdefault(
            index, {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
        )
        if piece.get("id"):
            call["id"] = piece["id"]
        if piece.get("type"):
            call["type"] = piece["type"]
        function = piece.get("function") or {}
        if function.get("name"):
            call["function"]["name"] += function["name"]
        if function.get("arguments"):
            call["function"]["arguments"] += function["arguments"]

    def message(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant"}
        message["content"] = "".join(self.content) if self.content or not self.tool_calls else None
        if self.refusal:
            message["refusal"] = "".join(self.refusal)
        if self.tool_calls:
            message["tool_calls"] = [self.tool_calls[i] for i in sorted(self.tool_calls)]
        message.update(self.extra)
        return message


@dataclass(slots=True)
class OpenAICompatClient:
    """Chat completions against one OpenAI-compatible base URL."""

    http: httpx.AsyncClient
    base_url: str
    backend: str
    api_key: SecretStr | None = field(default=None, repr=False)
    _url: str = field(init=False, repr=False)
    _headers: dict[str, str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        """Build the URL and the headers once."""
        self.base_url = self.base_url.rstrip("/")
        self._url = f"{self.base_url}/chat/completions"
        self._headers = {"content-type": "application/json"}
        if self.api_key is not None:
            self._headers["authorization"] = f"Bearer {self.api_key.get_secret_value()}"

    def _fail(self, model: str, exc: Exception) -> BackendError:
        if isinstance(exc, httpx.TimeoutException):
            return BackendError(
                self.backend, model, f"timed out ({type(exc).__name__})", transient=False
            )
        if isinstance(exc, httpx.TransportError):
            reason = str(exc) or type(exc).__name__
            return BackendError(
                self.backend, model, f"cannot reach {self.base_url}: {reason}", transient=True
            )
        return BackendError(self.backend, model, f"{type(exc).__name__}: {exc}")

    def _aborted(self, model: str, tokens: int) -> BackendError:
        # vLLM answers every request in flight this way when it is stopped (SIGTERM with its
        # default --shutdown-timeout 0: a rolling restart, a scale-down): a 200 whose answer
        # was cut short. An outage of that server: another endpoint or backend takes it.
        return BackendError(
            self.backend,
            model,
            f"the server aborted the answer after {tokens} tokens (finish_reason 'abort': "
            "it was stopping or restarting)",
            status=503,
            transient=True,
        )

    def _malformed(self, model: str, what: str) -> BackendError:
        # a backend answering garbage is an outage of that backend, not the caller's fault
        return BackendError(self.backend, model, what, status=502, transient=True)

    async def complete(self, payload: dict[str, Any]) -> ChatResult:
        """Send one non-streaming chat completion and return its answer."""
        model = str(payload["model"])
        started = time.perf_counter()
        try:
            response = await self.http.post(
                self._url, content=orjson.dumps(payload), headers=self._headers
            )
        except httpx.HTTPError as exc:
            raise self._fail(model, exc) from exc
        if response.status_code != 200:
            raise status_error(self.backend, model, response)
        latency = time.perf_counter() - started
        try:
            body = orjson.loads(response.content)
            choice = body["choices"][0]
            message = dict(choice["message"])
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, ValueError) as exc:
            raise self._malformed(
                model, f"answer is not an OpenAI chat completion ({type(exc).__name__})"
            ) from exc
        message.setdefault("role", "assistant")
        usage = body.get("usage") or {}
        if choice.get("finish_reason") == ABORTED:
            raise self._aborted(model, int(usage.get("completion_tokens") or 0))
        return ChatResult(
            message=message,
            finish_reason=choice.get("finish_reason"),
            prompt_tokens=int(
                usage.get("prompt_tokens") or count_message_tokens(payload["messages"])
            ),
            completion_tokens=int(usage.get("completion_tokens") or _completion_tokens(message)),
            model=str(body.get("model") or model),
            latency_s=latency,
            usage_estimated=not usage,
            logprobs=choice.get("logprobs"),
            system_fingerprint=body.get("system_fingerprint"),
        )

    async def stream(self, payload: dict[str, Any], on_delta: DeltaSink) -> ChatResult:
        """Stream one chat completion, handing each delta that carries answer to ``on_delta``."""
        model = str(payload["model"])
        body = {**payload, "stream": True, "stream_options": {"include_usage": True}}
        started = time.perf_counter()
        ttft: float | None = None
        answer = _StreamedAnswer()
        finish_reason: str | None = None
        fingerprint: str | None = None
        usage: dict[str, Any] = {}
        try:
            async with self.http.stream(
                "POST", self._url, content=orjson.dumps(body), headers=self._headers
            ) as response:
                if response.status_code != 200:
                    await response.aread()
                    raise status_error(self.backend, model, response)
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    chunk = orjson.loads(data)
                    if chunk.get("usage"):
                        usage = chunk["usage"]
                    fingerprint = chunk.get("system_fingerprint") or fingerprint
                    for choice in chunk.get("choices") or ():
                        delta = choice.get("delta") or {}
                        logprobs = choice.get("logprobs")
                        if answer.add(delta, logprobs) or logprobs:
                            if ttft is None:
                                ttft = time.perf_counter() - started
                            await on_delta(delta, logprobs, fingerprint)
                        if choice.get("finish_reason"):
                            finish_reason = choice["finish_reason"]
        except httpx.HTTPError as exc:
            raise self._fail(model, exc) from exc
        except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError) as exc:
            raise self._malformed(model, f"bad stream chunk ({type(exc).__name__})") from exc
        message = answer.message()
        if finish_reason == ABORTED:
            raise self._aborted(model, int(usage.get("completion_tokens") or 0))
        return ChatResult(
            message=message,
            finish_reason=finish_reason,
            prompt_tokens=int(
                usage.get("prompt_tokens") or count_message_tokens(payload["messages"])
            ),
            completion_tokens=int(usage.get("completion_tokens") or _completion_tokens(message)),
            model=model,
            latency_s=time.perf_counter() - started,
            ttft_s=ttft,
            usage_estimated=not usage,
            logprobs=answer.logprobs or None,
            system_fingerprint=fingerprint,
        )
