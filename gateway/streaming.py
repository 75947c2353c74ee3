"""Streaming answers: a graph run pumped into a queue, and its SSE events.

The gateway answers ``stream: true`` with OpenAI ``chat.completion.chunk``
events. A task of its own (the pump) drives the graph run, so a client that
goes away cancels only the reader. The run is told (the context's ``cancelled``
signal): the generate step stops reading the backend at the next token, which
closes that connection so the server stops generating, and the run ends as
usual: its ledger row says ``cancelled`` with the tokens produced until then,
and its reservation is settled with their cost. Nothing is left half done.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from gateway.openai_format import ChunkWriter, error_event
from state.errors import RouterError

logger = logging.getLogger(__name__)

# Background drains of interrupted streams (a reference keeps each task alive).
draining: set[asyncio.Task[None]] = set()


class StreamInterruptedError(RouterError):
    """The streaming backend failed after sending tokens and another one took over."""

    status_code = 502
    code = "stream_interrupted"

    def __init__(self, first: str, second: str) -> None:
        """Name the backend that broke off and the one that took over."""
        super().__init__(
            f"the {first} backend failed after part of the answer was streamed, and the "
            f"router fell back to {second}, whose answer cannot be appended to it; "
            "the answer above is incomplete: send the request again"
        )


_END = object()


class StreamRun:
    """One streaming graph run, driven by a task of its own.

    The task (the pump) moves the graph's events into a queue; the response
    reads them from there. A client that goes away cancels only the reader, so
    the run can finish without a listener (:meth:`detach`): its reservation is
    settled and its ledger row written.
    """

    __slots__ = ("_cancel", "_pump", "_queue", "_request_id", "events", "values")

    def __init__(
        self, source: AsyncIterator[tuple[str, Any]], cancel: asyncio.Event | None = None
    ) -> None:
        """Start pumping ``source`` (the graph's stream) into the queue.

        Args:
            source: The graph's stream.
            cancel: The run's context's ``cancelled`` signal, set when the client
                goes away (:meth:`detach`).
        """
        self.values: Mapping[str, Any] = {}
        self._cancel = cancel
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._request_id: str | None = None
        self._pump = asyncio.create_task(self._run(source))
        self.events = self._read()

    async def _run(self, source: AsyncIterator[tuple[str, Any]]) -> None:
        try:
            async for item in source:
                if self._request_id is None:
                    self._queue.put_nowait(item)
        except Exception as exc:
            if self._request_id is not None:
                logger.warning("stream %s ended with %r", self._request_id, exc)
            self._queue.put_nowait(exc)
        else:
            self._queue.put_nowait(_END)

    async def _read(self) -> AsyncIterator[tuple[str, Any]]:
        while True:
            item = await self._queue.get()
            if item is _END:
                return
            if isinstance(item, Exception):
                raise item
            yield item

    async def first_delta(self) -> dict[str, Any] | None:
        """Advance to the answer's first delta (text or tool call); None at the end."""
        async for mode, payload in self.events:
            if mode == "custom":
                if isinstance(payload, dict) and payload.get("event") == "delta":
                    return payload
            elif mode == "values":
                self.values = payload
        return None

    async def aclose(self) -> None:
        """Stop the run (it cancels the graph's tasks if it is still going)."""
        self._pump.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._pump

    def detach(self, request_id: str, *, client_gone: bool = False) -> None:
        """Let the run finish with nobody listening (failures are logged).

        Args:
            request_id: The request's id, for the log.
            client_gone: The client went away: tell the run to stop generating.
        """
        if client_gone and self._cancel is not None:
            self._cancel.set()
        self._request_id = request_id
        draining.add(self._pump)
        self._pump.add_done_callback(draining.discard)


StreamEnd = Callable[[BaseException | None, str | None], None]
"""Told how a stream ended: None (answered), or the error (and a status label)."""


class ClientClosedError(Exception):
    """The client went away before the stream's end (for the metrics only)."""


async def sse_events(
    run: StreamRun,
    writer: ChunkWriter,
    backend: str,
    first: dict[str, Any],
    include_usage: bool,
    request_id: str,
    *,
    on_end: StreamEnd | None = None,
) -> AsyncIterator[bytes]:
    """Yield the SSE events of a stream whose first token has arrived."""
    drained = False
    ended = False

    def end(outcome: BaseException | None, status: str | None = None) -> None:
        nonlocal ended
        ended = True
        if on_end is not None:
            on_end(outcome, status)

    try:
        yield writer.role() + writer.delta(first)
        try:
            async for mode, payload in run.events:
                if mode == "custom":
                    if isinstance(payload, dict) and payload.get("event") == "delta":
                        if payload["backend"] != backend:
                            # A fallback after partial output: it cannot be spliced on.
                            interrupted = StreamInterruptedError(backend, payload["backend"])
                            end(interrupted)
                            yield error_event(interrupted, request_id)
                            run.detach(request_id)
                            drained = True
                            return
                        yield writer.delta(payload)
                elif mode == "values":
                    run.values = payload
        except Exception as exc:
            end(exc)
            yield error_event(exc, request_id)
            return
        end(None)
        yield writer.end(run.values, include_usage)
    finally:
        if not ended:
            end(ClientClosedError(), "cancelled")
            # The client went away: the run stops generating at the next token and
            # ends as usual, so its reservation is settled and its ledger row
            # written (status cancelled, with the tokens produced so far).
            run.detach(request_id, client_gone=True)
        elif not drained:
            await run.aclose()
