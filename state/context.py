"""The graph's runtime context: the dependencies every node reads.

Nodes never reach for module globals; they read ``runtime.context``. A caller
may pass its own :class:`Context` (tests pass their settings, ledger, clock);
with none, the process default is built from settings, once per process and
event loop: HTTP clients (one per serverless provider), the GPU pool, the
ledger engine, the pool's membership heartbeat (:mod:`state.pool_membership`)
and, when neither a serverless provider nor GPU endpoints are configured, two
local emulators standing in for the two backends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import httpx
from pydantic import ConfigDict
from pydantic.json_schema import SkipJsonSchema

from backends.catalog import Catalog, get_catalog
from backends.gpu_pool import GpuPool
from backends.providers import ServerlessProviders
from backends.tokens import warm_tokenizer
from state.alerts import AlertNotifier
from state.budgets import BudgetBook
from state.ledger import Ledger, build_engine
from state.overrides import RoutingOverrides
from state.pool_membership import PoolHeartbeat, members_of
from state.reservations import Reservations, expiry_interval
from state.response_cache import ResponseCache, build_cache
from state.settings import Settings, get_settings

logger = logging.getLogger(__name__)


def utc_now() -> datetime:
    """Return the current time in UTC."""
    return datetime.now(UTC)


@dataclass(slots=True)
class Services:
    """What a node needs to do its work, built once per process and event loop."""

    settings: Settings
    catalog: Catalog
    http: httpx.AsyncClient
    providers: ServerlessProviders
    gpu_pool: GpuPool
    ledger: Ledger
    budgets: BudgetBook
    reservations: Reservations
    overrides: RoutingOverrides
    cache: ResponseCache
    alerts: AlertNotifier
    clock: Callable[[], datetime] = utc_now
    emulated: bool = False
    heartbeat: PoolHeartbeat | None = None
    _exit_stack: contextlib.AsyncExitStack | None = None

    async def aclose(self) -> None:
        """Close clients, the probe task, emulators and the engine."""
        await self.alerts.drain()
        await self.reservations.aclose()
        await self.gpu_pool.aclose()
        if self.heartbeat is not None:
            await self.heartbeat.aclose()
        await self.http.aclose()
        await self.cache.aclose()
        await self.ledger.aclose()
        if self._exit_stack is not None:
            await self._exit_stack.aclose()


def http_client(settings: Settings) -> httpx.AsyncClient:
    """Build the shared HTTP client (TLS verification stays on).

    Idle connections are dropped after ``HTTP_KEEPALIVE_S`` (4 s), before the
    backends' own idle timeout (5 s on vLLM's uvicorn server): with equal
    timeouts a request could go out on a connection the server was closing and
    fail with a ``ReadError`` on a healthy endpoint.
    """
    return httpx.AsyncClient(
        timeout=httpx.Timeout(settings.request_timeout_s, connect=settings.connect_timeout_s),
        limits=httpx.Limits(
            max_connections=512,
            max_keepalive_connections=128,
            keepalive_expiry=settings.http_keepalive_s,
        ),
    )


async def build_services(
    settings: Settings,
    *,
    catalog: Catalog | None = None,
    ledger: Ledger | None = None,
    clock: Callable[[], datetime] = utc_now,
) -> Services:
    """Build the services for ``settings``, starting emulators when nothing is configured."""
    # Files are read off the event loop (the LangGraph server forbids blocking I/O there).
    if catalog is None:
        catalog = await asyncio.to_thread(get_catalog)
    await asyncio.to_thread(warm_tokenizer)
    stack: contextlib.AsyncExitStack | None = None
    emulated = settings.emulated
    if emulated:
        # Imported here: the emulator pulls in the server stack, which only the
        # offline default needs.
        from emulator import EmulatorConfig, serve_emulator

        stack = contextlib.AsyncExitStack()
        ttft, tpot = settings.emulator_ttft_ms, settings.emulator_tpot_ms
        serverless_url = await stack.enter_async_context(
            serve_emulator(
                EmulatorConfig(
                    name="serverless",
                    models=[m.id for m in catalog.offered("serverless")],
                    ttft_ms=ttft,
                    tpot_ms=tpot,
                )
            )
        )
        gpu_url = await stack.enter_async_context(
            serve_emulator(
                EmulatorConfig(
                    name="gpu",
                    models=[m.served_name("gpu") for m in catalog.offered("gpu")],
                    ttft_ms=ttft,
                    tpot_ms=tpot,
                )
            )
        )
        settings = settings.model_copy(
            update={"lambda_api_base": serverless_url, "gpu_endpoints": [gpu_url]}
        )
        logger.warning(
            "No serverless provider and no GPU_ENDPOINTS set: using two local emulators "
            "(serverless at %s, gpu at %s). Answers are emulated, not real model output.",
            serverless_url,
            gpu_url,
        )
    http = http_client(settings)
    # the emulator stands in for the lambda provider (no key: it asks for none)
    specs = [settings.lambda_provider()] if emulated else settings.provider_specs()
    for spec in specs:
        if spec.ends_on is not None and not emulated:
            logger.warning(
                "Serverless provider %s is winding down (announced end %s); configure another "
                "in SERVERLESS_PROVIDERS (see the README).",
                spec.name,
                spec.ends_on,
            )
    providers = ServerlessProviders(http, specs)
    pool = GpuPool(
        http,
        settings.gpu_endpoints,
        api_key=settings.gpu_api_key,
        concurrency_per_endpoint=settings.gpu_concurrency_per_endpoint,
        cooldown_s=settings.gpu_cooldown_s,
        probe_interval_s=settings.gpu_health_interval_s,
        kv_cache_busy=settings.gpu_kv_cache_busy,
        affinity_margin=settings.gpu_affinity_margin,
    )
    if ledger is None:
        ledger = Ledger(await asyncio.to_thread(build_engine, settings), settings)
    budgets = BudgetBook(ledger, settings, clock)
    reservations = Reservations(budgets, ledger, settings.budget_estimate_margin)
    reservations.start_expiry(expiry_interval(settings.reservation_ttl_s))
    # the hours the pool is charged for: recorded in the background, off the request path
    heartbeat = PoolHeartbeat(ledger, members_of(settings), clock, settings.gpu_heartbeat_s)
    await heartbeat.start()
    return Services(
        settings=settings,
        catalog=catalog,
        http=http,
        providers=providers,
        gpu_pool=pool,
        ledger=ledger,
        budgets=budgets,
        reservations=reservations,
        overrides=RoutingOverrides(ledger, clock),
        cache=build_cache(settings, ledger),
        alerts=AlertNotifier(http, settings.alert_webhook_url, ledger),
        clock=clock,
        emulated=emulated,
        heartbeat=heartbeat,
        _exit_stack=stack,
    )


_default_services: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Services] = (
    weakref.WeakKeyDictionary()
)
_default_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
    weakref.WeakKeyDictionary()
)


async def default_services() -> Services:
    """Return the process default services for the running event loop, built once."""
    loop = asyncio.get_running_loop()
    services = _default_services.get(loop)
    if services is not None:
        return services
    lock = _default_locks.setdefault(loop, asyncio.Lock())
    async with lock:
        services = _default_services.get(loop)
        if services is None:
            services = await build_services(await asyncio.to_thread(get_settings))
            _default_services[loop] = services
    return services


async def close_default_services() -> None:
    """Close the running loop's default services, if any were built."""
    services = _default_services.pop(asyncio.get_running_loop(), None)
    if services is not None:
        await services.aclose()


@dataclass(kw_only=True)
class Context:
    """Runtime context of the router graph.

    Pass ``Context(services=...)`` to run the graph on your own backends,
    ledger and clock; leave it out to use the process default built from
    settings (``LAMBDA_API_KEY``, ``GPU_ENDPOINTS``, ``DATABASE_URL``, ...).
    """

    __pydantic_config__ = ConfigDict(arbitrary_types_allowed=True)

    services: SkipJsonSchema[Services | None] = field(
        default=None,
        metadata={
            "description": "Backends, GPU pool, ledger, catalog, settings and clock; "
            "None uses the process default built from the environment."
        },
    )
    cancelled: SkipJsonSchema[asyncio.Event | None] = field(
        default=None,
        metadata={
            "description": "Set when the caller went away mid-stream: the answer stops at "
            "the next token and is recorded as cancelled, with the tokens produced so far."
        },
    )


async def resolve_services(context: Context | None) -> Services:
    """Return the context's services, or the process default."""
    if context is not None and context.services is not None:
        return context.services
    return await default_services()
