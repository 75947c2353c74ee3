"""An OpenAI-compatible chat-completions server that emulates a model backend.

It stands in for Lambda's Inference API and for vLLM GPU servers in development,
tests and benchmarks. Answers are deterministic text that says it comes from the
emulator; token counts are honest (``backends.tokens``); latency (time to first
token, time per output token), injected failures, a concurrency limit with a
queue, an API key and vLLM-style ``/metrics`` make it behave like the real thing
from a client's point of view.

Routes: ``POST /v1/chat/completions`` (streaming or not), ``GET /v1/models``,
``GET /health`` and ``GET /metrics``. Start it in the current event loop with
:func:`serve_emulator`, or from the command line with :func:`run`.

The per-request path is kept lean (it is the ceiling in throughput benchmarks):
fixed answers and headers are serialized once, generated answers are cached by
prompt hash, and streaming chunks are assembled from byte templates.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import hashlib
import hmac
import random
import re
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import uvicorn
from pydantic import BaseModel, Field, field_validator
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from backends.tokens import _encoding, count_message_tokens, message_text

DEFAULT_MODELS = [
    "llama3.1-8b-instruct",
    "llama3.1-70b-instruct-fp8",
    "llama-4-scout-17b-16e-instruct",
    "llama-4-maverick-17b-128e-instruct-fp8",
]
VALID_ROLES = frozenset({"system", "user", "assistant", "tool", "developer"})

_JSON = "application/json"
_SSE = "text/event-stream"
_PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"
_CACHE_LIMIT = 4096
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


class EmulatorConfig(BaseModel):
    """How an emulator behaves: models served, latency, failures, limits, auth."""

    models: list[str] = Field(
        default_factory=lambda: list(DEFAULT_MODELS),
        min_length=1,
        description="Model ids served; requests for others get 404 model_not_found.",
    )
    ttft_ms: float = Field(default=0.0, ge=0.0, description="Time to first token, ms.")
    tpot_ms: float = Field(default=0.0, ge=0.0, description="Time per further output token, ms.")
    fail_rate: float = Field(
        default=0.0, ge=0.0, le=1.0, description="Share of chat requests answered fail_status."
    )
    fail_status: int = Field(default=500, ge=400, le=599, description="Status of failures.")
    max_concurrency: int = Field(
        default=0, ge=0, description="Requests run at once (0 = unlimited); the rest queue."
    )
    api_key: str | None = Field(
        default=None, description="When set, chat and models routes require this bearer key."
    )
    seed: int | None = Field(default=None, description="Seed of the fail-rate RNG.")
    name: str = Field(default="emulator", min_length=1, description="Name shown in answers.")

    @field_validator("models")
    @classmethod
    def _models_are_named(cls, models: list[str]) -> list[str]:
        if any(not m.strip() for m in models):
            raise ValueError("model ids must be non-empty strings")
        return models


@dataclass(slots=True)
class _Answer:
    """One generated answer, ready to serve: text, token count and stream pieces."""

    text: str
    tokens: int
    finish_reason: str
    pieces: list[bytes]  # JSON-encoded text of each output token, in order


@dataclass(slots=True)
class _ModelStats:
    """Live gauges and counters of one served model."""

    running: int = 0
    waiting: int = 0
    prompt_tokens: int = 0
    generation_tokens: int = 0
    success: int = 0


class _BadRequest(Exception):
    """A request the emulator refuses; carries the OpenAI error fields."""

    def __init__(
        self, message: str, *, param: str | None = None, code: str | None = None, status: int = 400
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.status = status


def _error_body(
    message: str, error_type: str, param: str | None = None, code: str | None = None
) -> bytes:
    return orjson.dumps(
        {"error": {"message": message, "type": error_type, "param": param, "code": code}}
    )


def _error_type(status: int) -> str:
    if status == 429:
        return "rate_limit_exceeded"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


def _max_tokens(body: Mapping[str, Any]) -> int | None:
    limit: int | None = None
    for param in ("max_tokens", "max_completion_tokens"):
        value = body.get(param)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise _BadRequest(
                f"'{param}' must be a positive integer (the most output tokens to generate), "
                f"got {value!r}.",
                param=param,
                code="invalid_value",
            )
        limit = value if limit is None else min(limit, value)
    return limit


def _check_messages(messages: Any) -> list[dict[str, Any]]:
    if not isinstance(messages, list) or not messages:
        raise _BadRequest(
            "'messages' must be a non-empty list of chat messages, e.g. "
            '[{"role": "user", "content": "Hello"}].',
            param="messages",
            code="missing_required_parameter" if messages is None else "invalid_value",
        )
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _BadRequest(
                f"'{where}' must be an object with 'role' and 'content', got {message!r:.80}.",
                param=where,
                code="invalid_value",
            )
        role = message.get("role")
        if role not in VALID_ROLES:
            raise _BadRequest(
                f"'{where}.role' must be one of {', '.join(sorted(VALID_ROLES))}, "
                f"got {role!r:.80}.",
                param=f"{where}.role",
                code="invalid_value",
            )
        if "content" not in message:
            if role == "assistant" and ("tool_calls" in message or "function_call" in message):
                continue
            raise _BadRequest(
                f"'{where}' has no 'content': give a string, a list of text parts or null.",
                param=f"{where}.content",
                code="missing_required_parameter",
            )
        content = message["content"]
        if content is None or isinstance(content, str):
            continue
        if not isinstance(content, list):
            raise _BadRequest(
                f"'{where}.content' must be a string, a list of text parts or null, "
                f"got {type(content).__name__}.",
                param=f"{where}.content",
                code="invalid_value",
            )
        for j, part in enumerate(content):
            if not (
                isinstance(part, dict)
                and part.get("type") == "text"
                and isinstance(part.get("text"), str)
            ):
                raise _BadRequest(
                    f"'{where}.content[{j}]' must be a text part "
                    '{"type": "text", "text": "..."}; the emulator accepts text only.',
                    param=f"{where}.content[{j}]",
                    code="invalid_value",
                )
    return messages


def _last_user_text(messages: Sequence[Mapping[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            return message_text(message.get("content"))
    return message_text(messages[-1].get("content"))


def _keywords(prompt: str) -> list[str]:
    seen: list[str] = []
    for match in _KEYWORD.finditer(prompt[:_KEYWORD_SCAN_CHARS]):
        word = match.group().lower().strip("'-")
        if word and word not in _STOPWORDS and word not in seen:
            seen.append(word)
            if len(seen) == 6:
                break
    return seen


def _natural_text(header: str, prompt: str, digest: int) -> str:
    """Return the untruncated answer: header, topic sentence, seeded filler sentences."""
    encode = _encoding().encode_ordinary
    topic = " ".join(_keywords(prompt)) or "your message"
    text = f"{header}This is an emulated reply about: {topic}."
    target = len(encode(header)) + 12 + digest % 29  # 12..40 tokens after the header
    rng = random.Random(digest)
    while len(encode(text)) < target:
        words = rng.choices(_FILLER, k=rng.randint(5, 10))
        text += " " + " ".join(words).capitalize() + "."
    return text


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


class _Emulator:
    """The state behind one app: config, precomputed bytes, cache, gauges, counters."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.name = config.name
        label = config.name if "emulator" in config.name.lower() else f"{config.name} emulator"
        self._label = label
        self._models = frozenset(config.models)
        self._stats = {model: _ModelStats() for model in config.models}
        self._headers = {"x-emulator": config.name}
        self._auth = f"Bearer {config.api_key}".encode() if config.api_key is not None else None
        self._fail_rate = config.fail_rate
        self._rng = random.Random(config.seed)
        self._semaphore = (
            asyncio.Semaphore(config.max_concurrency) if config.max_concurrency > 0 else None
        )
        self._ttft_s = config.ttft_ms / 1000.0
        self._tpot_s = config.tpot_ms / 1000.0
        self._cache: dict[tuple[str, int, int | None], _Answer] = {}
        created = int(time.time())
        self._models_body = orjson.dumps(
            {
                "object": "list",
                "data": [
                    {"id": m, "object": "model", "created": created, "owned_by": "emulator"}
                    for m in config.models
                ],
            }
        )
        self._health_body = orjson.dumps(
            {"status": "ok", "emulator": True, "name": config.name, "models": config.models}
        )
        status = config.fail_status
        self._fail_body = _error_body(
            f"Injected failure: emulator '{config.name}' answers HTTP {status} to "
            f"{config.fail_rate:.0%} of chat requests (fail_rate={config.fail_rate}). "
            "Retry, or start it with a lower fail_rate.",
            _error_type(status),
            code="rate_limit_exceeded" if status == 429 else "injected_failure",
        )
        self._unauthorized_body = _error_body(
            f"Missing or incorrect API key for emulator '{config.name}': send the header "
            "'Authorization: Bearer <key>' with the key the emulator was started with.",
            "invalid_request_error",
            code="invalid_api_key",
        )
        self._served = ", ".join(config.models)

    # -- helpers -------------------------------------------------------------------------

    def _error(self, status: int, body: bytes) -> Response:
        return Response(body, status_code=status, media_type=_JSON, headers=self._headers)

    def _authorized(self, request: Request) -> bool:
        if self._auth is None:
            return True
        given = request.headers.get("authorization")
        return given is not None and hmac.compare_digest(given.encode(), self._auth)

    def _answer(self, model: str, prompt: str, limit: int | None) -> _Answer:
        digest = int.from_bytes(hashlib.blake2b(prompt.encode(), digest_size=8).digest(), "big")
        key = (model, digest, limit)
        answer = self._cache.get(key)
        if answer is not None:
            return answer
        text = _natural_text(f"[{self._label} · {model}] ", prompt, digest)
        tokens = _encoding().encode_ordinary(text)
        finish = "stop"
        if limit is not None and limit < len(tokens):
            text, tokens = _cut(tokens, limit)
            finish = "length"
        answer = _Answer(text, len(tokens), finish, _pieces(tokens))
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[key] = answer
        return answer

    @contextlib.asynccontextmanager
    async def _slot(self, stats: _ModelStats) -> AsyncIterator[None]:
        """Hold a concurrency slot (queueing for it), counted as running or waiting."""
        semaphore = self._semaphore
        if semaphore is not None:
            if semaphore.locked():
                stats.waiting += 1
                try:
                    await semaphore.acquire()
                finally:
                    stats.waiting -= 1
            else:
                await semaphore.acquire()
        stats.running += 1
        try:
            yield
        finally:
            stats.running -= 1
            if semaphore is not None:
                semaphore.release()

    # -- routes --------------------------------------------------------------------------

    async def chat(self, request: Request) -> Response:
        """Answer ``POST /v1/chat/completions``."""
        if not self._authorized(request):
            return self._error(401, self._unauthorized_body)
        if self._fail_rate and self._rng.random() < self._fail_rate:
            return self._error(self.config.fail_status, self._fail_body)
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError as exc:
            return self._error(
                400,
                _error_body(
                    f"The request body is not valid JSON ({exc}). Send a JSON object with "
                    "'model' and 'messages'.",
                    "invalid_request_error",
                    code="invalid_json",
                ),
            )
        try:
            return self._complete(body)
        except _BadRequest as bad:
            return self._error(
                bad.status,
                _error_body(bad.message, _error_type(bad.status), bad.param, bad.code),
            )

    def _complete(self, body: Any) -> Response:
        if not isinstance(body, dict):
            raise _BadRequest(
                f"The request body must be a JSON object, got {type(body).__name__}. "
                "Send an object with 'model' and 'messages'.",
                code="invalid_value",
            )
        model = body.get("model")
        if not isinstance(model, str):
            raise _BadRequest(
                f"'model' must be a string naming a served model ({self._served}).",
                param="model",
                code="missing_required_parameter" if model is None else "invalid_value",
            )
        messages = _check_messages(body.get("messages"))
        if model not in self._models:
            raise _BadRequest(
                f"The model '{model:.100}' does not exist on emulator '{self.name}'. "
                f"Served models: {self._served}.",
                param="model",
                code="model_not_found",
                status=404,
            )
        limit = _max_tokens(body)
        temperature = body.get("temperature")
        if temperature is not None and (
            isinstance(temperature, bool)
            or not isinstance(temperature, int | float)
            or not 0 <= temperature <= 2
        ):
            raise _BadRequest(
                f"'temperature' must be a number from 0 to 2, got {temperature!r:.40}.",
                param="temperature",
                code="invalid_value",
            )
        stream = body.get("stream")
        if stream is not None and not isinstance(stream, bool):
            raise _BadRequest(
                f"'stream' must be true or false, got {stream!r:.40}.",
                param="stream",
                code="invalid_value",
            )
        include_usage = False
        options = body.get("stream_options")
        if options is not None:
            value = options.get("include_usage") if isinstance(options, dict) else options
            if not isinstance(options, dict) or not isinstance(value, bool | None):
                raise _BadRequest(
                    "'stream_options' must be an object like {\"include_usage\": true}.",
                    param="stream_options",
                    code="invalid_value",
                )
            include_usage = bool(value)

        prompt_tokens = count_message_tokens(messages)
        answer = self._answer(model, _last_user_text(messages), limit)
        stats = self._stats[model]
        completion_id = f"chatcmpl-emu-{uuid.uuid4().hex}"
        created = int(time.time())
        if stream:
            return self._stream(
                stats, answer, completion_id, created, model, prompt_tokens, include_usage
            )
        return self._whole(stats, answer, completion_id, created, model, prompt_tokens)

    def _usage(self, prompt_tokens: int, answer: _Answer) -> dict[str, int]:
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": answer.tokens,
            "total_tokens": prompt_tokens + answer.tokens,
        }

    def _count(self, stats: _ModelStats, prompt_tokens: int, answer: _Answer) -> None:
        stats.prompt_tokens += prompt_tokens
        stats.generation_tokens += answer.tokens
        stats.success += 1

    def _whole(
        self,
        stats: _ModelStats,
        answer: _Answer,
        completion_id: str,
        created: int,
        model: str,
        prompt_tokens: int,
    ) -> Response:
        content = orjson.dumps(
            {
                "id": completion_id,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "system_fingerprint": "emulator",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": answer.text},
                        "logprobs": None,
                        "finish_reason": answer.finish_reason,
                    }
                ],
                "usage": self._usage(prompt_tokens, answer),
            }
        )
        delay = self._ttft_s + max(answer.tokens - 1, 0) * self._tpot_s
        if delay <= 0:
            self._count(stats, prompt_tokens, answer)
            return Response(content, media_type=_JSON, headers=self._headers)
        return _DelayedResponse(self, stats, delay, prompt_tokens, answer, content)

    def _stream(
        self,
        stats: _ModelStats,
        answer: _Answer,
        completion_id: str,
        created: int,
        model: str,
        prompt_tokens: int,
        include_usage: bool,
    ) -> Response:
        head = b'data: {"id":"%s","object":"chat.completion.chunk","created":%d,"model":%s,' % (
            completion_id.encode(),
            created,
            orjson.dumps(model),
        )
        usage_null = b',"usage":null' if include_usage else b""
        choice = head + b'"system_fingerprint":"emulator","choices":[{"index":0,"delta":'
        role = choice + b'{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]'
        token_head = choice + b'{"content":'
        token_tail = b'},"logprobs":null,"finish_reason":null}]' + usage_null + b"}\n\n"
        first = role + usage_null + b"}\n\n"
        tokens = [token_head + piece + token_tail for piece in answer.pieces]
        end = [
            choice
            + b'{},"logprobs":null,"finish_reason":"'
            + answer.finish_reason.encode()
            + b'"}]'
            + usage_null
            + b"}\n\n"
        ]
        if include_usage:
            end.append(
                head
                + b'"system_fingerprint":"emulator","choices":[],"usage":'
                + orjson.dumps(self._usage(prompt_tokens, answer))
                + b"}\n\n"
            )
        end.append(b"data: [DONE]\n\n")
        if self._ttft_s <= 0 and self._tpot_s <= 0:
            self._count(stats, prompt_tokens, answer)
            return Response(
                b"".join([first, *tokens, *end]), media_type=_SSE, headers=self._headers
            )
        return StreamingResponse(
            self._events(stats, prompt_tokens, answer, first, tokens, end),
            media_type=_SSE,
            headers=self._headers,
        )

    async def _events(
        self,
        stats: _ModelStats,
        prompt_tokens: int,
        answer: _Answer,
        first: bytes,
        tokens: list[bytes],
        end: list[bytes],
    ) -> AsyncIterator[bytes]:
        async with self._slot(stats):
            if self._ttft_s > 0:
                await asyncio.sleep(self._ttft_s)
            if self._tpot_s > 0 and len(tokens) > 1:
                yield first + tokens[0]
                for chunk in tokens[1:]:
                    await asyncio.sleep(self._tpot_s)
                    yield chunk
                yield b"".join(end)
            else:
                yield b"".join([first, *tokens, *end])
            self._count(stats, prompt_tokens, answer)

    async def models(self, request: Request) -> Response:
        """Answer ``GET /v1/models``."""
        if not self._authorized(request):
            return self._error(401, self._unauthorized_body)
        return Response(self._models_body, media_type=_JSON, headers=self._headers)

    async def health(self, request: Request) -> Response:
        """Answer ``GET /health``."""
        return Response(self._health_body, media_type=_JSON, headers=self._headers)

    async def metrics(self, request: Request) -> Response:
        """Answer ``GET /metrics`` in Prometheus text format, with vLLM's metric names."""
        families: list[tuple[str, str, str, Callable[[_ModelStats], int]]] = [
            (
                "vllm:num_requests_running",
                "gauge",
                "Number of requests currently running (holding a concurrency slot).",
                lambda s: s.running,
            ),
            (
                "vllm:num_requests_waiting",
                "gauge",
                "Number of requests waiting for a concurrency slot.",
                lambda s: s.waiting,
            ),
            (
                "vllm:prompt_tokens_total",
                "counter",
                "Number of prefill tokens processed.",
                lambda s: s.prompt_tokens,
            ),
            (
                "vllm:generation_tokens_total",
                "counter",
                "Number of generation tokens processed.",
                lambda s: s.generation_tokens,
            ),
            (
                "vllm:request_success_total",
                "counter",
                "Count of successfully processed requests.",
                lambda s: s.success,
            ),
        ]
        lines: list[str] = []
        for metric, kind, help_text, value in families:
            lines.append(f"# HELP {metric} {help_text}")
            lines.append(f"# TYPE {metric} {kind}")
            for model, stats in self._stats.items():
                label = model.replace("\\", "\\\\").replace('"', '\\"')
                lines.append(f'{metric}{{model_name="{label}"}} {float(value(stats))}')
        return Response(("\n".join(lines) + "\n").encode(), media_type=_PROMETHEUS)

    async def not_found(self, request: Request, exc: Exception) -> Response:
        """Answer unknown routes and wrong methods with an OpenAI error."""
        status = exc.status_code if isinstance(exc, HTTPException) else 404
        if status == 405:
            message = f"Method {request.method} is not allowed on {request.url.path}."
        else:
            message = (
                f"Unknown route {request.method} {request.url.path} on emulator '{self.name}'. "
                "Routes: POST /v1/chat/completions, GET /v1/models, GET /health, GET /metrics."
            )
        return self._error(
            status,
            _error_body(
                message,
                "invalid_request_error",
                code="method_not_allowed" if status == 405 else "unknown_url",
            ),
        )


class _DelayedResponse(Response):
    """A JSON answer sent after the emulated generation time, holding a concurrency slot."""

    def __init__(
        self,
        emulator: _Emulator,
        stats: _ModelStats,
        delay: float,
        prompt_tokens: int,
        answer: _Answer,
        content: bytes,
    ) -> None:
        super().__init__(content, media_type=_JSON, headers=emulator._headers)
        self._emulator = emulator
        self._stats = stats
        self._delay = delay
        self._prompt_tokens = prompt_tokens
        self._answer = answer

    async def __call__(
        self,
        scope: Any,
        receive: Callable[[], Awaitable[Any]],
        send: Callable[[Any], Awaitable[None]],
    ) -> None:
        """Wait the generation time in a slot, then send the answer."""
        async with self._emulator._slot(self._stats):
            await asyncio.sleep(self._delay)
        self._emulator._count(self._stats, self._prompt_tokens, self._answer)
        await super().__call__(scope, receive, send)


def create_app(config: EmulatorConfig) -> Starlette:
    """Build the emulator's ASGI app.

    Args:
        config: What to serve and how to behave.

    Returns:
        A Starlette app with the chat-completions, models, health and metrics routes.
    """
    _encoding()  # load the BPE ranks now, not in the first request
    emulator = _Emulator(config)
    app = Starlette(
        routes=[
            Route("/v1/chat/completions", emulator.chat, methods=["POST"]),
            Route("/v1/models", emulator.models, methods=["GET"]),
            Route("/health", emulator.health, methods=["GET"]),
            Route("/metrics", emulator.metrics, methods=["GET"]),
        ],
        exception_handlers={404: emulator.not_found, 405: emulator.not_found},
    )
    app.state.emulator = emulator
    return app


class _EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to its host process."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Install no signal handlers (several servers share one loop and process)."""
        yield


def _bind(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def _base_url(sock: socket.socket, host: str) -> str:
    port = sock.getsockname()[1]
    if host in ("", "0.0.0.0", "::", "localhost"):
        host = "127.0.0.1"
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/v1"


def _uvicorn_config(app: Starlette, embedded: bool) -> uvicorn.Config:
    # Embedded in someone else's process, the emulator leaves logging alone: a
    # log level would lower the host's own uvicorn loggers, which are shared.
    extra: dict[str, Any] = (
        {"log_config": None, "log_level": None, "access_log": False}
        if embedded
        else {"log_level": "warning"}
    )
    return uvicorn.Config(app, lifespan="off", timeout_graceful_shutdown=3, **extra)


async def _start(server: uvicorn.Server, sock: socket.socket) -> asyncio.Task[None]:
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("the emulator's server stopped while starting")
        await asyncio.sleep(0.002)
    return task


@contextlib.asynccontextmanager
async def serve_emulator(
    config: EmulatorConfig, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[str]:
    """Serve an emulator in the current event loop for the duration of the block.

    Several emulators can run at once in one loop; leaving the block stops only
    this one (it stops accepting connections and finishes open requests).

    Args:
        config: What to serve and how to behave.
        host: Interface to listen on.
        port: Port to listen on; 0 picks a free one.

    Yields:
        The base URL of the OpenAI-compatible API, ``http://127.0.0.1:<port>/v1``.
    """
    sock = _bind(host, port)
    server = _EmbeddedServer(_uvicorn_config(create_app(config), embedded=True))
    try:
        task = await _start(server, sock)
    except BaseException:
        sock.close()
        raise
    try:
        yield _base_url(sock, host)
    finally:
        server.should_exit = True
        await task
        sock.close()


def run(config: EmulatorConfig, host: str, port: int) -> None:
    """Serve an emulator until interrupted (for the command line).

    Args:
        config: What to serve and how to behave.
        host: Interface to listen on.
        port: Port to listen on; 0 picks a free one.
    """
    sock = _bind(host, port)
    server = uvicorn.Server(_uvicorn_config(create_app(config), embedded=False))

    async def main() -> None:
        task = await _start(server, sock)
        print(
            f"Emulator '{config.name}' (emulated answers, not a real model) serving an "
            f"OpenAI-compatible API at {_base_url(sock, host)} "
            f"for models: {', '.join(config.models)}",
            flush=True,
        )
        await task

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
