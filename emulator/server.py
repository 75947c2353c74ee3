"""The emulator's HTTP server: its routes, :func:`create_app`, :func:`serve_emulator`, :func:`run`.

Routes: ``POST /v1/chat/completions`` (streaming or not), ``GET /v1/models``,
``GET /v1/_received`` (the last request bodies received, newest last) and
``DELETE /v1/_received`` (forget them), ``GET /health`` and ``GET /metrics``.
Errors are OpenAI's error JSON. Several emulators can serve in one event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import random
import re
import socket
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from backends.tokens import _encoding, count_message_tokens
from emulator.answers import Answers, logprob_entries
from emulator.config import EmulatorConfig
from emulator.load import DelayedResponse, Load, ModelStats
from emulator.metrics import PROMETHEUS, render
from emulator.validation import BadRequest, error_body, error_type, parse_request
from emulator.wire import JSON, SSE, chunks, completion

RECEIVED_LIMIT = 256
ROUTES = (
    "POST /v1/chat/completions, GET /v1/models, GET or DELETE /v1/_received, "
    "GET /health, GET /metrics"
)


class _Emulator:
    """The state behind one app: config, precomputed bytes, answers, load, received bodies."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.name = config.name
        label = config.name if "emulator" in config.name.lower() else f"{config.name} emulator"
        self._answers = Answers(label)
        self._models = frozenset(config.models)
        self._vision = frozenset(config.vision_models)
        self._served = ", ".join(config.models)
        self._stats = {model: ModelStats() for model in config.models}
        self._load = Load(config.ttft_ms, config.tpot_ms, config.max_concurrency)
        self._received: deque[Any] = deque(maxlen=RECEIVED_LIMIT)
        self._headers = {"x-emulator": config.name}
        self._auth = f"Bearer {config.api_key}".encode() if config.api_key is not None else None
        self._fail_rate = config.fail_rate
        self._rng = random.Random(config.seed)
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
        self._fail_body = error_body(
            f"Injected failure: emulator '{config.name}' answers HTTP {status} to "
            f"{config.fail_rate:.0%} of chat requests (fail_rate={config.fail_rate}). "
            "Retry, or start it with a lower fail_rate.",
            error_type(status),
            code="rate_limit_exceeded" if status == 429 else "injected_failure",
        )
        self._unauthorized_body = error_body(
            f"Missing or incorrect API key for emulator '{config.name}': send the header "
            "'Authorization: Bearer <key>' with the key the emulator was started with.",
            "invalid_request_error",
            code="invalid_api_key",
        )

    def _error(self, status: int, body: bytes) -> Response:
        return Response(body, status_code=status, media_type=JSON, headers=self._headers)

    def _authorized(self, request: Request) -> bool:
        if self._auth is None:
            return True
        given = request.headers.get("authorization")
        return given is not None and hmac.compare_digest(given.encode(), self._auth)

    async def chat(self, request: Request) -> Response:
        """Answer ``POST /v1/chat/completions``."""
        if not self._authorized(request):
            return self._error(401, self._unauthorized_body)
        problem: orjson.JSONDecodeError | None = None
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError as exc:
            problem = exc
        else:
            self._received.append(body)
        if self._fail_rate and self._rng.random() < self._fail_rate:
            failed = self._error(self.config.fail_status, self._fail_body)
            if self.config.retry_after_s is not None:
                failed.headers["retry-after"] = f"{self.config.retry_after_s:g}"
            return failed
        if self.config.fault != "none" and problem is None:
            return await self._misbehave(body)
        if problem is not None:
            return self._error(
                400,
                error_body(
                    f"The request body is not valid JSON ({problem}). Send a JSON object with "
                    "'model' and 'messages'.",
                    "invalid_request_error",
                    code="invalid_json",
                ),
            )
        try:
            return self._complete(body)
        except BadRequest as bad:
            # The client's fault: answered, and counted nowhere (not a server failure).
            return self._error(
                bad.status, error_body(bad.message, error_type(bad.status), bad.param, bad.code)
            )

    async def _misbehave(self, body: Any) -> Response:
        """Answer the way ``fault`` says a broken backend does."""
        fault = self.config.fault
        if fault == "hang":
            await asyncio.sleep(3600)  # the client's timeout ends it
        if fault == "bad_json":
            return Response(b'{"id": "chatcmpl-broken", "choices": [', media_type=JSON)
        if fault == "no_usage" and isinstance(body, dict):
            body = {**body, "stream_options": {"include_usage": False}}
        answer = self._complete(body)
        streamed = isinstance(body, dict) and bool(body.get("stream"))
        if fault == "abort":
            return Response(await _aborted(answer), media_type=SSE if streamed else JSON)
        if fault == "no_usage":
            if streamed:
                return answer  # asked without include_usage above: no usage chunk
            data = orjson.loads(bytes(answer.body))
            data.pop("usage", None)
            return Response(orjson.dumps(data), media_type=JSON)
        return StreamingResponse(_cut(answer, streamed), media_type=SSE if streamed else JSON)

    def _complete(self, body: Any) -> Response:
        checked = parse_request(
            body,
            models=self._models,
            vision_models=self._vision,
            served=self._served,
            where=self.name,
        )
        answer = self._answers.answer(checked)
        prompt_tokens = count_message_tokens(checked.messages)
        stats = self._stats[checked.model]
        call_id = None if answer.tool_name is None else f"call_{uuid.uuid4().hex[:24]}"
        logprobs = logprob_entries(answer, checked.top_logprobs) if checked.logprobs else None
        completion_id = f"chatcmpl-emu-{uuid.uuid4().hex}"
        created = int(time.time())
        load = self._load
        if checked.stream:
            events = chunks(
                answer,
                completion_id=completion_id,
                created=created,
                model=checked.model,
                prompt_tokens=prompt_tokens,
                include_usage=checked.include_usage,
                call_id=call_id,
                logprobs=logprobs,
            )
            if load.instant:
                stats.count(prompt_tokens, answer.tokens)
                return Response(events.whole(), media_type=SSE, headers=self._headers)
            return StreamingResponse(
                load.events(stats, prompt_tokens, answer.tokens, events),
                media_type=SSE,
                headers=self._headers,
            )
        content = completion(
            answer,
            completion_id=completion_id,
            created=created,
            model=checked.model,
            prompt_tokens=prompt_tokens,
            call_id=call_id,
            logprobs=logprobs,
        )
        if load.instant:
            stats.count(prompt_tokens, answer.tokens)
            return Response(content, media_type=JSON, headers=self._headers)
        return DelayedResponse(
            content,
            self._headers,
            load=load,
            stats=stats,
            prompt_tokens=prompt_tokens,
            completion_tokens=answer.tokens,
        )

    async def models(self, request: Request) -> Response:
        """Answer ``GET /v1/models``."""
        if not self._authorized(request):
            return self._error(401, self._unauthorized_body)
        return Response(self._models_body, media_type=JSON, headers=self._headers)

    async def received(self, request: Request) -> Response:
        """Answer ``GET /v1/_received`` (the last bodies, newest last) and ``DELETE`` (forget)."""
        if not self._authorized(request):
            return self._error(401, self._unauthorized_body)
        if request.method == "DELETE":
            self._received.clear()
        return Response(
            orjson.dumps({"data": list(self._received)}), media_type=JSON, headers=self._headers
        )

    async def health(self, request: Request) -> Response:
        """Answer ``GET /health``."""
        return Response(self._health_body, media_type=JSON, headers=self._headers)

    async def metrics(self, request: Request) -> Response:
        """Answer ``GET /metrics`` in Prometheus text format, with vLLM's metric names."""
        return Response(render(self._stats, self._load.peak_running), media_type=PROMETHEUS)

    async def not_found(self, request: Request, exc: Exception) -> Response:
        """Answer unknown routes and wrong methods with an OpenAI error."""
        status = exc.status_code if isinstance(exc, HTTPException) else 404
        if status == 405:
            message = f"Method {request.method} is not allowed on {request.url.path}."
        else:
            message = (
                f"Unknown route {request.method} {request.url.path} on emulator '{self.name}'. "
                f"Routes: {ROUTES}."
            )
        return self._error(
            status,
            error_body(
                message,
                "invalid_request_error",
                code="method_not_allowed" if status == 405 else "unknown_url",
            ),
        )


async def _aborted(answer: Response) -> bytes:
    """Return the whole answer with each finish_reason made 'abort' (vLLM stopped mid-answer)."""
    if isinstance(answer, StreamingResponse):
        parts = [p if isinstance(p, bytes) else str(p).encode() async for p in answer.body_iterator]
        whole = b"".join(parts)
    else:
        whole = bytes(answer.body)
    return _FINISHED.sub(b'"finish_reason":"abort"', whole)


_FINISHED = re.compile(rb'"finish_reason":\s*"[a-z_]+"')


async def _cut(answer: Response, streamed: bool) -> AsyncIterator[bytes]:
    """Send the first part of an answer (three events of a stream), then break the connection."""
    if isinstance(answer, StreamingResponse):
        async for part in answer.body_iterator:
            first = part if isinstance(part, bytes) else str(part).encode()
            break
    else:
        first = bytes(answer.body)
    if streamed:
        for event in first.split(b"\n\n")[:3]:
            if event:
                yield event + b"\n\n"
    else:
        yield first[: len(first) // 2]
    raise ConnectionResetError("the emulator cut the answer off on purpose (fault=cut_stream)")


def create_app(config: EmulatorConfig) -> Starlette:
    """Build the emulator's ASGI app.

    Args:
        config: What to serve and how to behave.

    Returns:
        A Starlette app with the chat-completions, models, received, health and metrics routes.
    """
    _encoding()  # load the BPE ranks now, not in the first request
    emulator = _Emulator(config)
    app = Starlette(
        routes=[
            Route("/v1/chat/completions", emulator.chat, methods=["POST"]),
            Route("/v1/models", emulator.models, methods=["GET"]),
            Route("/v1/_received", emulator.received, methods=["GET", "DELETE"]),
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
