"""The emulated load: generation time, concurrency slots and per-model counters.

An answer takes ``ttft_ms`` for its first token and ``tpot_ms`` for each one
after; while it is generated it holds one of ``max_concurrency`` slots, and the
requests beyond the limit queue for one. Gauges of running and waiting requests
and counters of tokens and successes feed the vLLM-style ``/metrics``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.responses import Response

from emulator.wire import JSON, Chunks


@dataclass(slots=True)
class ModelStats:
    """Live gauges and counters of one served model."""

    running: int = 0
    waiting: int = 0
    prompt_tokens: int = 0
    generation_tokens: int = 0
    success: int = 0

    def count(self, prompt_tokens: int, completion_tokens: int) -> None:
        """Count one successful request."""
        self.prompt_tokens += prompt_tokens
        self.generation_tokens += completion_tokens
        self.success += 1


class Load:
    """The latency model and the concurrency limit shared by an emulator's requests."""

    def __init__(self, ttft_ms: float, tpot_ms: float, max_concurrency: int) -> None:
        """Emulate these latencies; ``max_concurrency`` 0 runs every request at once."""
        self.ttft_s = ttft_ms / 1000.0
        self.tpot_s = tpot_ms / 1000.0
        self.instant = self.ttft_s <= 0 and self.tpot_s <= 0
        self._semaphore = asyncio.Semaphore(max_concurrency) if max_concurrency > 0 else None
        self.running = 0
        self.peak_running = 0  # most requests generating at once, over every model

    def generation_s(self, tokens: int) -> float:
        """Return the time to generate ``tokens`` output tokens."""
        return self.ttft_s + max(tokens - 1, 0) * self.tpot_s

    @contextlib.asynccontextmanager
    async def slot(self, stats: ModelStats) -> AsyncIterator[None]:
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
        self.running += 1
        self.peak_running = max(self.peak_running, self.running)
        try:
            yield
        finally:
            stats.running -= 1
            self.running -= 1
            if semaphore is not None:
                semaphore.release()

    async def events(
        self, stats: ModelStats, prompt_tokens: int, completion_tokens: int, chunks: Chunks
    ) -> AsyncIterator[bytes]:
        """Yield a streamed answer's events at the emulated pace, holding a slot."""
        async with self.slot(stats):
            if self.ttft_s > 0:
                await asyncio.sleep(self.ttft_s)
            if self.tpot_s > 0 and len(chunks.tokens) > 1:
                yield chunks.first + chunks.tokens[0]
                for chunk in chunks.tokens[1:]:
                    await asyncio.sleep(self.tpot_s)
                    yield chunk
                yield b"".join(chunks.end)
            else:
                yield chunks.whole()
            stats.count(prompt_tokens, completion_tokens)


class DelayedResponse(Response):
    """A JSON answer sent after the emulated generation time, holding a concurrency slot."""

    def __init__(
        self,
        content: bytes,
        headers: dict[str, str],
        *,
        load: Load,
        stats: ModelStats,
        prompt_tokens: int,
        completion_tokens: int,
    ) -> None:
        """Send ``content`` after generating ``completion_tokens``, then count the request."""
        super().__init__(content, media_type=JSON, headers=headers)
        self._load = load
        self._stats = stats
        self._prompt_tokens = prompt_tokens
        self._completion_tokens = completion_tokens

    async def __call__(
        self,
        scope: Any,
        receive: Callable[[], Awaitable[Any]],
        send: Callable[[Any], Awaitable[None]],
    ) -> None:
        """Wait the generation time in a slot, then send the answer."""
        async with self._load.slot(self._stats):
            await asyncio.sleep(self._load.generation_s(self._completion_tokens))
        self._stats.count(self._prompt_tokens, self._completion_tokens)
        await super().__call__(scope, receive, send)
