"""An OpenAI-compatible chat-completions client over httpx.

One instance per backend base URL, all sharing the process's ``httpx.AsyncClient``
(its connection pool). Token usage comes from the backend's response; a backend
that sends none gets an honest local count, flagged as estimated.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
from pydantic import SecretStr

from backends.tokens import count_message_tokens, count_text_tokens
from state.errors import BackendError

# Statuses worth one more try on the same backend before falling back.
TRANSIENT_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
_ERROR_TEXT_LIMIT = 300


@dataclass(slots=True)
class ChatResult:
    """The answer of one chat-completions call."""

    content: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    model: str
    latency_s: float
    ttft_s: float | None = None
    usage_estimated: bool = False


def _error_text(response: httpx.Response) -> str:
    """Return the backend's error message, short, from an OpenAI-style error body."""
    try:
        body = orjson.loads(response.content)
        message = body.get("error", {}).get("message") if isinstance(body, dict) else None
    except (orjson.JSONDecodeError, AttributeError):
        message = None
    text = message if isinstance(message, str) else response.text
    text = " ".join(text.split())[:_ERROR_TEXT_LIMIT]
    return f"HTTP {response.status_code}" + (f": {text}" if text else "")


class OpenAICompatClient:
    """Chat completions against one OpenAI-compatible base URL."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        base_url: str,
        *,
        backend: str,
        api_key: SecretStr | None = None,
    ) -> None:
        """Bind the shared HTTP client to one base URL."""
        self.http = http
        self.base_url = base_url.rstrip("/")
        self.backend = backend
        self._url = f"{self.base_url}/chat/completions"
        self._headers = {"content-type": "application/json"}
        if api_key is not None:
            self._headers["authorization"] = f"Bearer {api_key.get_secret_value()}"

    def __repr__(self) -> str:
        """Show the backend and URL, never the key."""
        return f"OpenAICompatClient(backend={self.backend!r}, base_url={self.base_url!r})"

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
            raise BackendError(
                self.backend,
                model,
                _error_text(response),
                status=response.status_code,
                transient=response.status_code in TRANSIENT_STATUSES,
            )
        latency = time.perf_counter() - started
        try:
            body = orjson.loads(response.content)
            choice = body["choices"][0]
            content = choice["message"].get("content") or ""
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise BackendError(
                self.backend, model, f"answer is not an OpenAI chat completion ({exc!r})"
            ) from exc
        usage = body.get("usage") or {}
        estimated = not usage
        return ChatResult(
            content=content,
            finish_reason=choice.get("finish_reason"),
            prompt_tokens=int(
                usage.get("prompt_tokens") or count_message_tokens(payload["messages"])
            ),
            completion_tokens=int(usage.get("completion_tokens") or count_text_tokens(content)),
            model=str(body.get("model") or model),
            latency_s=latency,
            usage_estimated=estimated,
        )

    async def stream(self, payload: dict[str, Any], on_delta: Callable[[str], None]) -> ChatResult:
        """Stream one chat completion, handing each text delta to ``on_delta``."""
        model = str(payload["model"])
        body = {**payload, "stream": True, "stream_options": {"include_usage": True}}
        started = time.perf_counter()
        ttft: float | None = None
        parts: list[str] = []
        finish_reason: str | None = None
        usage: dict[str, Any] = {}
        try:
            async with self.http.stream(
                "POST", self._url, content=orjson.dumps(body), headers=self._headers
            ) as response:
                if response.status_code != 200:
                    await response.aread()
                    raise BackendError(
                        self.backend,
                        model,
                        _error_text(response),
                        status=response.status_code,
                        transient=response.status_code in TRANSIENT_STATUSES,
                    )
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    chunk = orjson.loads(data)
                    if chunk.get("usage"):
                        usage = chunk["usage"]
                    for choice in chunk.get("choices") or ():
                        text = (choice.get("delta") or {}).get("content")
                        if text:
                            if ttft is None:
                                ttft = time.perf_counter() - started
                            parts.append(text)
                            on_delta(text)
                        if choice.get("finish_reason"):
                            finish_reason = choice["finish_reason"]
        except httpx.HTTPError as exc:
            raise self._fail(model, exc) from exc
        except orjson.JSONDecodeError as exc:
            raise BackendError(self.backend, model, f"bad stream chunk ({exc})") from exc
        content = "".join(parts)
        return ChatResult(
            content=content,
            finish_reason=finish_reason,
            prompt_tokens=int(
                usage.get("prompt_tokens") or count_message_tokens(payload["messages"])
            ),
            completion_tokens=int(usage.get("completion_tokens") or count_text_tokens(content)),
            model=model,
            latency_s=time.perf_counter() - started,
            ttft_s=ttft,
            usage_estimated=not usage,
        )
