"""The pool of dedicated GPU servers (vLLM): health, load, admission and cool-down.

A background task probes every endpoint's ``/health``, ``/metrics`` (running
and waiting requests, KV-cache usage: :mod:`backends.vllm_metrics`) and
``/v1/models`` (the served models and their ``max_model_len``) every few
seconds, so choosing an endpoint on the request path costs no I/O. The first
use waits for the first probe, so no request goes to a server before the pool
knows what it serves.

Admission: ``choose_backend`` takes a :class:`Slot` with :meth:`GpuPool.admit`,
which counts it in flight on its endpoint at once (no ``await`` between the
check and the count, so concurrent requests cannot all pass on the same free
room). The slot waits for ``generate_gpu`` in a registry keyed by request id
(graph state holds plain data only); :meth:`GpuPool.checkout` hands it over and
:meth:`GpuPool.lease` releases it when the call ends. A slot nobody takes is
released after ``RESERVATION_TTL_S``.

Cool-down, a circuit breaker per endpoint: two failed requests in a row (a
connection error, timeout, 401, 403, 408, 425, 429 or 5xx; never another 4xx) open
it for ``cooldown_s``. A healthy probe, or the end of the cool-down, half-opens
it: one trial request at a time; a success closes it, a failure opens it again.

Prefix-cache affinity (:mod:`backends.gpu_pool.affinity`): a later turn of a
conversation goes back to the endpoint that answered its earlier turns (its
prefix cache holds them) when that endpoint may take it and its load is within
``affinity_margin`` requests of the least-loaded one; otherwise load decides.

These figures are a cache of the servers' live state, not a record: the
ledger holds the record.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import httpx
import orjson
from pydantic import SecretStr

from backends.errors import BackendError
from backends.gpu_pool.affinity import AffinityMap
from backends.gpu_pool.endpoint import GpuEndpoint, Slot, Ticket, shown_url
from backends.openai_compat import OpenAICompatClient
from backends.vllm_metrics import parse_load, parse_models

if TYPE_CHECKING:
    from state.schemas import Attempt

logger = logging.getLogger(__name__)

# One failure may be a blip (the node's retry takes it); two in a row cool the endpoint off.
FAILURES_BEFORE_COOLDOWN = 2
# A slot admitted for a request that never reaches generate_gpu is released after this.
RESERVATION_TTL_S = 30.0
# The longest the first request waits for the pool's first probe.
FIRST_PROBE_WAIT_S = 5.0


class GpuPool:
    """Endpoints of the GPU pool, chosen by health, load and what they serve."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        urls: list[str],
        *,
        api_key: SecretStr | None = None,
        concurrency_per_endpoint: int = 16,
        cooldown_s: float = 30.0,
        probe_interval_s: float = 5.0,
        kv_cache_busy: float = 0.9,
        affinity_margin: int = 2,
    ) -> None:
        """Build one client per endpoint; probing starts on first use."""
        self.http = http
        self.endpoints = [
            GpuEndpoint(
                url=url, client=OpenAICompatClient(http, url, backend="gpu", api_key=api_key)
            )
            for url in urls
        ]
        # vLLM does not publish --max-num-seqs (see backends.vllm_metrics): the setting rules
        self.concurrency_per_endpoint = concurrency_per_endpoint
        self.cooldown_s = cooldown_s
        self.probe_interval_s = probe_interval_s
        self.kv_cache_busy = kv_cache_busy
        self.affinity_margin = affinity_margin
        self.affinity = AffinityMap()
        self._headers = {"authorization": f"Bearer {api_key.get_secret_value()}"} if api_key else {}
        self._probe_task: asyncio.Task[None] | None = None
        self._first_probe: asyncio.Future[None] | None = None
        self._probed = False
        self._tickets: dict[str, Ticket] = {}

    def __bool__(self) -> bool:
        """A pool is truthy when it has endpoints."""
        return bool(self.endpoints)

    # -- choosing ---------------------------------------------------------------------

    def busy(self, endpoint: GpuEndpoint) -> bool:
        """Say whether the endpoint is full: its concurrency limit, or its KV cache."""
        kv = endpoint.kv_cache_usage
        full_cache = kv is not None and kv > self.kv_cache_busy
        return full_cache or endpoint.load() >= self.concurrency_per_endpoint

    def candidates(
        self,
        model: str,
        tokens: int | None = None,
        now: float | None = None,
        exclude: set[str] | frozenset[str] = frozenset(),
    ) -> list[GpuEndpoint]:
        """Return the endpoints that may serve ``model`` now: free ones first, least loaded first.

        ``exclude`` (URLs as shown, without credentials: the endpoints a request
        failed on) is ignored when it
        would leave nothing, so a one-endpoint pool still retries a blip.
        """
        now = time.monotonic() if now is None else now
        ready = [
            e
            for e in self.endpoints
            if e.available(now) and e.serves(model) and e.fits(model, tokens)
        ]
        ready = [e for e in ready if e.shown not in exclude] or ready
        ready.sort(key=lambda e: (self.busy(e), e.load(), e.failures))
        return ready

    def another(
        self, model: str, tokens: int | None, tried: set[str] | frozenset[str]
    ) -> GpuEndpoint | None:
        """Return an endpoint not in ``tried`` (URLs) that may serve ``model`` now, if any."""
        return next(
            (e for e in self.candidates(model, tokens, exclude=tried) if e.shown not in tried), None
        )

    def has_spare_capacity(self, model: str, tokens: int | None = None) -> bool:
        """Say whether some endpoint serving ``model`` has room for one more request."""
        return any(not self.busy(e) for e in self.candidates(model, tokens))

    def pick(self, model: str, tokens: int | None = None) -> GpuEndpoint | None:
        """Return the endpoint that would take ``model`` now (busy or not), if any."""
        ready = self.candidates(model, tokens)
        return ready[0] if ready else None

    def context_limit(self, model: str) -> int | None:
        """Return the longest ``max_model_len`` of the endpoints up for ``model``.

        None when none is up, or one publishes no limit.
        """
        limits = [e.max_model_len.get(model) for e in self.candidates(model)]
        if not limits or None in limits:
            return None
        return max(n for n in limits if n is not None)

    def preferred(self, ready: list[GpuEndpoint], prefix: str | None) -> tuple[GpuEndpoint, bool]:
        """Return the endpoint to take of ``ready`` (best first), and whether affinity chose it.

        The endpoint that answered the conversation's earlier turns (``prefix``,
        a key of :mod:`backends.gpu_pool.affinity`) is taken when it is among
        ``ready``, is not busy while a better one is free, and its load is
        within ``affinity_margin`` of the first's; otherwise the first.
        """
        first = ready[0]
        url = self.affinity.get(prefix) if prefix is not None else None
        if url is None:
            return first, False
        held = next((e for e in ready if e.shown == url), None)
        if held is None:
            return first, False
        if held is not first and (
            (self.busy(held) and not self.busy(first))
            or held.load() > first.load() + self.affinity_margin
        ):
            return first, False
        return held, True

    def remember(self, key: str, endpoint: GpuEndpoint) -> None:
        """Note that ``endpoint`` answered the conversation whose next prefix is ``key``."""
        self.affinity.put(key, endpoint.shown)

    def admit(
        self,
        model: str,
        tokens: int | None,
        request_id: str | None = None,
        prefix: str | None = None,
    ) -> Slot | None:
        """Take a slot on the least-loaded endpoint with room, counted in flight at once.

        With ``prefix`` (the key of the conversation's earlier turns), the
        endpoint that answered them is preferred within ``affinity_margin``.
        With ``request_id``, the slot waits for that request's :meth:`checkout`
        (or ``RESERVATION_TTL_S``). None when every endpoint is busy or unusable.
        """
        now = time.monotonic()
        self._sweep(now)
        free = [e for e in self.candidates(model, tokens, now) if not self.busy(e)]
        if not free:
            return None
        endpoint, affine = self.preferred(free, prefix)
        slot = self._take(endpoint, now, affinity=affine)
        if request_id is not None:
            old = self._tickets.pop(request_id, None)
            if old is not None and old.slot is not None:
                self.release(old.slot)
            earlier = old.attempts if old is not None else []
            self._tickets[request_id] = Ticket(request_id, slot, earlier, now + RESERVATION_TTL_S)
        return slot

    def checkout(
        self,
        request_id: str,
        model: str,
        tokens: int | None = None,
        avoid: set[str] | frozenset[str] = frozenset(),
        prefix: str | None = None,
    ) -> Ticket:
        """Take a request's ticket: its admitted slot, or a new one (busy or not), and history.

        A new slot prefers the endpoint that answered ``prefix`` as :meth:`admit`
        does, and avoids the endpoints the request already failed on (its
        ticket's, and ``avoid``: URLs) while another may serve it. The ticket's
        slot is None when no endpoint may serve it.
        """
        now = time.monotonic()
        self._sweep(now)
        ticket = self._tickets.pop(request_id, None) or Ticket(request_id)
        slot = ticket.slot
        if slot is not None and (
            slot.endpoint.shown in avoid or not self._still_good(slot, model, tokens, now)
        ):
            self.release(slot)
            slot = None
        if slot is None:
            ready = self.candidates(model, tokens, now, exclude=ticket.tried | avoid)
            if ready:
                endpoint, affine = self.preferred(ready, prefix)
                slot = self._take(endpoint, now, affinity=affine)
        ticket.slot = slot
        return ticket

    def carry_over(self, ticket: Ticket, attempt: Attempt) -> None:
        """Keep a failed attempt for the next run of ``generate_gpu`` (the node's retry)."""
        now = time.monotonic()
        self._sweep(now)
        if ticket.slot is not None:
            self.release(ticket.slot)
        ticket.slot = None
        ticket.record(attempt)
        ticket.expires = now + RESERVATION_TTL_S
        self._tickets[ticket.request_id] = ticket

    def reserved(self) -> int:
        """Return the requests holding a ticket (admitted slots and retries to come)."""
        return len(self._tickets)

    def _still_good(self, slot: Slot, model: str, tokens: int | None, now: float) -> bool:
        endpoint = slot.endpoint
        if slot.released or endpoint.healthy is False or now < endpoint.cooling_until:
            return False
        if endpoint.tripped and not slot.trial:
            return False  # it failed since: only its trial request may go there now
        return endpoint.serves(model) and endpoint.fits(model, tokens)

    def _take(self, endpoint: GpuEndpoint, now: float, affinity: bool = False) -> Slot:
        slot = Slot(endpoint, trial=endpoint.half_open(now), affinity=affinity)
        if slot.trial:
            endpoint.on_trial = True
        endpoint.in_flight += 1
        endpoint.peak_in_flight = max(endpoint.peak_in_flight, endpoint.in_flight)
        return slot

    def release(self, slot: Slot) -> None:
        """Give a slot back (once; a second release does nothing)."""
        if slot.released:
            return
        slot.released = True
        slot.endpoint.in_flight -= 1
        if slot.trial:
            slot.endpoint.on_trial = False

    def _sweep(self, now: float) -> None:
        """Drop tickets nobody came back for, releasing their slots."""
        while self._tickets:
            request_id, ticket = next(iter(self._tickets.items()))
            if ticket.expires > now:
                return
            del self._tickets[request_id]
            if ticket.slot is not None:
                self.release(ticket.slot)

    # -- learning from calls ------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def lease(self, slot: Slot) -> AsyncIterator[GpuEndpoint]:
        """Hold ``slot`` for one call, learn from how the call ended, then release it.

        A success closes the endpoint's circuit; a connection error, timeout,
        401, 403, 408, 425, 429 or 5xx counts against it; a client error (another
        4xx: the request's fault) and a cancelled call do not.
        """
        endpoint = slot.endpoint
        endpoint.requests += 1
        endpoint.affinity_requests += int(slot.affinity)
        try:
            yield endpoint
        except BackendError as error:
            if not error.client_error:
                self.mark_failure(endpoint, error.detail)
            raise
        else:
            self.mark_success(endpoint)
        finally:
            self.release(slot)

    def mark_failure(self, endpoint: GpuEndpoint, error: str) -> None:
        """Count a failure; a second in a row, or a failed trial, opens the cool-down."""
        now = time.monotonic()
        endpoint.failures += 1
        endpoint.failed_requests += 1
        endpoint.last_error = error
        endpoint.last_failure_at = now
        if endpoint.tripped or endpoint.failures >= FAILURES_BEFORE_COOLDOWN:
            if now >= endpoint.cooling_until:
                endpoint.cooldowns += 1
            endpoint.cooling_until = now + self.cooldown_s
            endpoint.tripped = True

    def mark_success(self, endpoint: GpuEndpoint) -> None:
        """Close the endpoint's circuit: no failures, no cool-down."""
        endpoint.cooling_until = 0.0
        endpoint.failures = 0
        endpoint.tripped = False
        endpoint.healthy = True
        endpoint.last_error = None

    def unavailable_reason(self, model: str | None = None, tokens: int | None = None) -> str:
        """Say why no endpoint may take a request for ``model``, naming each one's reason."""
        if not self.endpoints:
            return "no GPU endpoints are configured"
        now = time.monotonic()
        down = [e for e in self.endpoints if not e.available(now)]
        up = [e for e in self.endpoints if e.available(now)]
        other = [e for e in up if model is not None and not e.serves(model)]
        short = [e for e in up if model is not None and e.serves(model)]
        short = [e for e in short if model is not None and not e.fits(model, tokens)]
        parts = []
        if down:
            listed = "; ".join(f"{shown_url(e.url)} {e.status_reason(now)}" for e in down)
            parts.append(f"{len(down)} down or cooling off ({listed})")
        if other:
            listed = "; ".join(
                f"{shown_url(e.url)} serves {', '.join(sorted(e.models or ()))}" for e in other
            )
            parts.append(f"{len(other)} up but serving other models ({listed})")
        if short:
            assert model is not None
            listed = "; ".join(
                f"{shown_url(e.url)} has max_model_len {e.max_model_len[model]}" for e in short
            )
            parts.append(f"{len(short)} with a context under {tokens} tokens ({listed})")
        what = f"model {model}" if model is not None else "a request"
        return f"no GPU endpoint may take {what}: {'; '.join(parts) or 'none is usable'}"

    # -- probing --------------------------------------------------------------------------

    def ensure_probing(self) -> None:
        """Start the background probe in the running loop, once."""
        if self._probe_task is None and self.endpoints:
            loop = asyncio.get_running_loop()
            self._first_probe = loop.create_future()
            self._probe_task = loop.create_task(self._probe_forever(), name="gpu-pool-probe")

    async def ensure_probed(self) -> None:
        """Start probing, and wait (up to ``FIRST_PROBE_WAIT_S``) until a first probe ended."""
        self.ensure_probing()
        first = self._first_probe
        if self._probed or first is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(first), FIRST_PROBE_WAIT_S)

    async def _probe_forever(self) -> None:
        while True:
            try:
                await self.probe()
            except Exception:  # the probe must outlive any surprise
                logger.exception("probe of the GPU pool failed")
            if self._first_probe is not None and not self._first_probe.done():
                self._first_probe.set_result(None)
            self._sweep(time.monotonic())
            await asyncio.sleep(self.probe_interval_s)

    async def probe(self) -> None:
        """Probe every endpoint once, concurrently."""
        await asyncio.gather(*(self._probe(e) for e in self.endpoints))
        self._probed = True

    async def _get(self, url: str) -> httpx.Response:
        timeout = httpx.Timeout(min(2.0, self.probe_interval_s))
        return await self.http.get(url, headers=self._headers, timeout=timeout)

    async def _probe(self, endpoint: GpuEndpoint) -> None:
        started = time.monotonic()
        try:
            health = await self._get(f"{endpoint.root_url}/health")
            endpoint.latency_ms = (time.monotonic() - started) * 1000
            if health.status_code != 200:
                endpoint.healthy = False
                endpoint.last_error = f"/health answered HTTP {health.status_code}"
                return
            metrics, models = await asyncio.gather(
                self._get(f"{endpoint.root_url}/metrics"), self._get(f"{endpoint.url}/models")
            )
            if models.status_code in (401, 403):
                # every request would be refused: the router's key is wrong for this server
                endpoint.healthy = False
                endpoint.last_error = f"/v1/models answered HTTP {models.status_code}"
                return
            if metrics.status_code == 200:
                self._read_load(endpoint, metrics.text)
            if models.status_code == 200:
                served = parse_models(orjson.loads(models.content))
                endpoint.models = frozenset(served)
                endpoint.max_model_len = {m: n for m, n in served.items() if n is not None}
        except (httpx.HTTPError, orjson.JSONDecodeError) as exc:
            endpoint.healthy = False
            endpoint.last_error = f"probe failed: {type(exc).__name__}"
            logger.debug("probe of %s failed: %s", endpoint.shown, type(exc).__name__)
            return
        finally:
            endpoint.last_probe = time.monotonic()
        endpoint.healthy = True
        if endpoint.last_failure_at < started:
            # up again since its last failure: forget the failures, end any cool-down
            # (the circuit stays half-open until a request succeeds)
            endpoint.failures = 0
            endpoint.cooling_until = min(endpoint.cooling_until, time.monotonic())

    def _read_load(self, endpoint: GpuEndpoint, text: str) -> None:
        try:
            load = parse_load(text)
        except ValueError as exc:
            logger.warning("unreadable /metrics from %s: %s", endpoint.shown, exc)
            return
        endpoint.running, endpoint.waiting = load.running, load.waiting
        endpoint.kv_cache_usage = load.kv_cache_usage
        endpoint.external = max(load.running + load.waiting - endpoint.in_flight, 0)

    async def aclose(self) -> None:
        """Stop the background probe and release every slot still waiting."""
        if self._probe_task is not None:
            self._probe_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe_task
            self._probe_task = None
        self._sweep(float("inf"))
