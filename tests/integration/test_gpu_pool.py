"""The GPU pool's bookkeeping against several emulated vLLM servers over real HTTP.

Each GPU endpoint is an emulator, some behind a thin ASGI wrapper that adds
what vLLM publishes and the emulator does not (``vllm:kv_cache_usage_perc``,
``max_model_len`` in ``/v1/models``) and counts the chat requests it holds at
once (the server's own concurrency peak).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import orjson
import pytest
import uvicorn
from langgraph.checkpoint.memory import InMemorySaver

import backends.gpu_pool.pool as pool_module
from backends.errors import BackendError
from backends.gpu_pool import GpuPool, Slot, _parse_gauges
from backends.vllm_metrics import parse_load, parse_models
from emulator import EmulatorConfig
from emulator.server import _bind, _EmbeddedServer, _start, create_app
from graphs.router import builder, graph
from state.context import Context, Services
from state.errors import BackendRejectedError
from tests.conftest import GPU_MODELS, TEST_KEY, Harness, StartGateway, received

MODEL = "llama3.1-8b-instruct"  # the GPU pool's served name of the greeting's model
GREETING = {"messages": [{"role": "user", "content": "Hello!"}]}

# What a real vLLM 0.32 server (--max-num-seqs 4) published with 40 requests sent:
# the waiting requests appear twice, in total and by reason.
ENGINE_0 = 'engine="0",model_name="llama3.1-8b-instruct"'
VLLM_METRICS = f"""\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{{{ENGINE_0}}} 4.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{{{ENGINE_0}}} 36.0
# HELP vllm:num_requests_waiting_by_reason Number of waiting requests by reason.
# TYPE vllm:num_requests_waiting_by_reason gauge
vllm:num_requests_waiting_by_reason{{{ENGINE_0},reason="capacity"}} 36.0
vllm:num_requests_waiting_by_reason{{{ENGINE_0},reason="deferred"}} 0.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{{{ENGINE_0}}} 0.0009768009768009733
"""

Send = Callable[[dict[str, Any]], Awaitable[None]]


class VllmLike:
    """ASGI wrapper: adds KV-cache usage and max_model_len, and counts concurrent chats."""

    def __init__(
        self,
        app: Any,
        kv_cache_usage: float | None = None,
        max_model_len: int | None = None,
        models_delay_s: float = 0.0,
    ) -> None:
        self.app = app
        self.kv_cache_usage = kv_cache_usage
        self.max_model_len = max_model_len
        self.models_delay_s = models_delay_s
        self.active = 0
        self.peak = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Send) -> None:
        path = scope.get("path")
        if scope["type"] == "http" and path == "/v1/chat/completions":
            self.active += 1
            self.peak = max(self.peak, self.active)
            try:
                await self.app(scope, receive, send)
            finally:
                self.active -= 1
        elif scope["type"] == "http" and path in ("/metrics", "/v1/models"):
            await self._rewritten(scope, receive, send, path)
        else:
            await self.app(scope, receive, send)

    async def _rewritten(self, scope: dict[str, Any], receive: Any, send: Send, path: str) -> None:
        if path == "/v1/models":
            await asyncio.sleep(self.models_delay_s)
        messages: list[dict[str, Any]] = []

        async def keep(message: dict[str, Any]) -> None:
            messages.append(message)

        await self.app(scope, receive, keep)
        start = messages[0]
        body = b"".join(m.get("body", b"") for m in messages[1:])
        if start["status"] == 200 and path == "/metrics" and self.kv_cache_usage is not None:
            body += (
                "# TYPE vllm:kv_cache_usage_perc gauge\n"
                f'vllm:kv_cache_usage_perc{{engine="0",model_name="{MODEL}"}} '
                f"{self.kv_cache_usage}\n"
            ).encode()
        if start["status"] == 200 and path == "/v1/models" and self.max_model_len is not None:
            models = orjson.loads(body)
            for card in models["data"]:
                card["max_model_len"] = self.max_model_len
            body = orjson.dumps(models)
        headers = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        await send({**start, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class Gpu:
    """One emulated GPU server that can be stopped and started again on its port."""

    def __init__(self, stack: contextlib.AsyncExitStack, **wrap: Any) -> None:
        self.stack = stack
        self.wrap = wrap
        self.port = 0
        self.app: VllmLike | None = None
        self._server: contextlib.AsyncExitStack | None = None

    async def start(self, **config: Any) -> str:
        config.setdefault("models", GPU_MODELS)
        self.app = VllmLike(create_app(EmulatorConfig(name="gpu", **config)), **self.wrap)
        server = contextlib.AsyncExitStack()
        self.port = await server.enter_async_context(serve_app(self.app, self.port))
        self._server = server
        self.stack.push_async_callback(self.stop)
        return self.url

    async def stop(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            await server.aclose()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def peak(self) -> int:
        assert self.app is not None
        return self.app.peak


@contextlib.asynccontextmanager
async def serve_app(app: Any, port: int = 0) -> AsyncIterator[int]:
    sock = _bind("127.0.0.1", port)
    config = uvicorn.Config(
        app,
        lifespan="off",
        log_config=None,
        log_level=None,
        access_log=False,
        timeout_graceful_shutdown=3,
    )
    server = _EmbeddedServer(config)
    task = await _start(server, sock)
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        await task
        sock.close()


@pytest.fixture
async def gpus(harness: Harness) -> Callable[..., Awaitable[Gpu]]:
    async def start(wrap: dict[str, Any] | None = None, **config: Any) -> Gpu:
        gpu = Gpu(harness.stack, **(wrap or {}))
        await gpu.start(**config)
        return gpu

    return start


async def services_on(harness: Harness, *gpu: Gpu, **settings: Any) -> Services:
    if not harness.serverless_url:
        await harness.start("serverless", api_key=TEST_KEY)
    return await harness.services(gpu_endpoints=[g.url for g in gpu], **settings)


def answered_by(result: dict[str, Any]) -> str | None:
    attempts = result["routing"]["attempts"]
    ok = [a for a in attempts if a["status"] == "ok"]
    return ok[0].get("endpoint") if ok and ok[0]["backend"] == "gpu" else None


async def ask(services: Services, **extra: Any) -> dict[str, Any]:
    return await graph.ainvoke({**GREETING, **extra}, context=Context(services=services))


def payload(**extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": GREETING["messages"], "max_tokens": 8, **extra}


# -- 1. a recovered endpoint takes traffic again ----------------------------------------


async def test_an_endpoint_back_from_a_crash_takes_traffic_within_one_probe_interval(
    harness: Harness, gpus: Callable[..., Awaitable[Gpu]]
):
    gpu = await gpus()
    interval = 0.5
    services = await services_on(harness, gpu, gpu_health_interval_s=interval, gpu_cooldown_s=300.0)
    pool = services.gpu_pool
    await pool.probe()
    (endpoint,) = pool.endpoints
    await gpu.stop()  # the server crashes under traffic: two requests fail on it
    for number in range(2):
        ticket = pool.checkout(f"crash-{number}", MODEL)
        assert ticket.slot is not None
        with pytest.raises(BackendError, match="cannot reach"):
            async with pool.lease(ticket.slot):
                await ticket.slot.endpoint.client.complete(payload())
    assert endpoint.status() == "cooling"
    assert endpoint.cooldowns == 1
    pool.ensure_probing()
    await asyncio.sleep(interval / 2)
    assert endpoint.healthy is False  # the probe sees it down too
    assert (await ask(services))["routing"]["backend"] == "serverless"

    await gpu.start()  # back, on the same port
    back = time.monotonic()
    while time.monotonic() - back < 4 * interval:
        result = await ask(services)
        if answered_by(result) == gpu.url:
            break
        await asyncio.sleep(0.05)
    took = time.monotonic() - back
    assert answered_by(result) == gpu.url, result["routing"]["reason"]
    assert took <= interval + 0.3, f"the GPU took traffic again after {took:.2f} s"
    assert endpoint.status() == "up"
    assert endpoint.failures == 0


async def test_a_cool_down_that_ran_out_gives_one_trial_request(
    harness: Harness, gpus: Callable[..., Awaitable[Gpu]]
):
    gpu = await gpus(fail_rate=1.0, fail_status=503)
    services = await services_on(harness, gpu, gpu_cooldown_s=0.2)
    pool = services.gpu_pool
    await pool.probe()
    (endpoint,) = pool.endpoints

    async def call(request_id: str) -> None:
        ticket = pool.checkout(request_id, MODEL)
        assert ticket.slot is not None
        with contextlib.suppress(BackendError):
            async with pool.lease(ticket.slot):
                await ticket.slot.endpoint.client.complete(payload())

    await call("a")
    await call("b")
    assert endpoint.status() == "cooling"
    await asyncio.sleep(0.25)
    assert endpoint.status() == "half_open"
    trial = pool.admit(MODEL, None, "trial")
    assert trial is not None
    assert trial.trial
    assert pool.admit(MODEL, None, "second") is None  # one trial at a time
    assert pool.checkout("trial", MODEL).slot is trial
    with pytest.raises(BackendError):
        async with pool.lease(trial):
            await endpoint.client.complete(payload())
    assert endpoint.status() == "cooling"
    assert endpoint.cooldowns == 2


async def test_one_blip_does_not_put_an_endpoint_behind_a_loaded_one(
    harness: Harness, gpus: Callable[..., Awaitable[Gpu]]
):
    blipped = await gpus(fail_rate=1.0, fail_status=502)
    loaded = await gpus(ttft_ms=1000)
    services = await services_on(harness, blipped, loaded)
    pool = services.gpu_pool
    async with httpx.AsyncClient(timeout=10) as direct:
        # two requests of someone else's on the second server, seen by the probe
        calls = [
            asyncio.create_task(direct.post(f"{loaded.url}/chat/completions", json=payload()))
            for _ in range(2)
        ]
        await asyncio.sleep(0.2)
        await pool.probe()
        ticket = pool.checkout("blip", MODEL)
        assert ticket.slot is not None
        assert ticket.slot.endpoint.url == blipped.url
        with pytest.raises(BackendError):
            async with pool.lease(ticket.slot):
                await ticket.slot.endpoint.client.complete(payload())
        assert [(e.failures, e.load()) for e in pool.endpoints] == [(1, 0), (0, 2)]
        # load first; one failure only breaks a tie
        assert pool.pick(MODEL) is pool.endpoints[0]
        await asyncio.gather(*calls)


# -- 2. what counts against an endpoint ---------------------------------------------------


async def test_two_400s_do_not_cool_an_endpoint_but_two_401s_do(
    harness: Harness, gpus: Callable[..., Awaitable[Gpu]]
):
    gpu = await gpus()
    services = await services_on(harness, gpu)
    pool = services.gpu_pool
    (endpoint,) = pool.endpoints
    await pool.probe()
    bad_choice = {"type": "function", "function": {"name": "not_a_tool"}}
    for number in range(2):
        ticket = pool.checkout(f"bad-{number}", MODEL)
        assert ticket.slot is not None
        with pytest.raises(BackendError) as raised:
            async with pool.lease(ticket.slot):
                await endpoint.client.complete(payload(tool_choice=bad_choice))
        assert raised.value.status == 400
    assert (endpoint.failures, endpoint.failed_requests, endpoint.status()) == (0, 0, "up")
    assert endpoint.in_flight == 0
    assert endpoint.requests == 2

    # a key the server refuses: an outage of that server for the router (not probed
    # here: the probe's own 401 from /v1/models would mark it down before any request)
    locked = await gpus(api_key="sk-the-servers-own-key")
    services = await services_on(harness, locked)
    pool = services.gpu_pool
    (endpoint,) = pool.endpoints
    for number in range(2):
        ticket = pool.checkout(f"key-{number}", MODEL)
        assert ticket.slot is not None
        with pytest.raises(BackendError) as raised:
            async with pool.lease(ticket.slot):
                await endpoint.client.complete(payload())
        assert raised.value.status == 401
    assert endpoint.status() == "cooling"
    assert endpoint.failed_requests == 2


# -- 3. vLLM's metrics, read by exact name ----------------------------------------------


def test_waiting_by_reason_is_not_counted_twice_in_vllm_text():
    load = parse_load(VLLM_METRICS)
    assert (load.running, load.waiting) == (4, 36)
    assert load.kv_cache_usage == pytest.approx(0.000977, rel=1e-3)
    assert _parse_gauges(VLLM_METRICS) == (4, 36)
    # a line of a family not read here cannot spoil the reading
    assert parse_load(VLLM_METRICS + "vllm:other{not prometheus} ?\n") == load
    lines = VLLM_METRICS.splitlines()
    engines = [
        twin
        for line in lines
        for twin in ([line] if line.startswith("#") else [line, line.replace('"0"', '"1"')])
    ]
    both = parse_load("\n".join(engines) + "\n")
    assert (both.running, both.waiting) == (8, 72)  # summed over the engines
    served = parse_models({"data": [{"id": "a", "max_model_len": 2048}, {"id": "b"}]})
    assert served == {"a": 2048, "b": None}


async def test_the_probe_reads_an_emulators_queue_once(
    harness: Harness, gpus: Callable[..., Awaitable[Gpu]]
):
    gpu = await gpus(ttft_ms=400, max_concurrency=1)
    services = await services_on(harness, gpu)
    pool = services.gpu_pool
    (endpoint,) = pool.endpoints
    async with httpx.AsyncClient(timeout=10) as direct:
        calls = [
            asyncio.create_task(direct.post(f"{gpu.url}/chat/completions", json=payload()))
            for _ in range(3)
        ]
        await asyncio.sleep(0.15)
        text = (await direct.get(f"{gpu.url.removesuffix('/v1')}/metrics")).text
        assert 'vllm:num_requests_waiting_by_reason{model_name="' in text
        await pool.probe()
        await asyncio.gather(*calls)
    assert (endpoint.running, endpoint.waiting) == (1, 2)
    assert endpoint.load() == 3
    assert endpoint.external == 3


# -- 4. KV cache and max_model_len ----------------------------------------------------


async def test_an_endpoint_whose_kv_cache_is_full_counts_as_busy(
    harness: Harness, gpus: Callable[..., Awaitable[Gpu]]
):
    full = await gpus({"kv_cache_usage": 0.95})
    roomy = await gpus({"kv_cache_usage": 0.2})
    services = await services_on(harness, full, roomy, serverless_ratio=1.0)
    await services.gpu_pool.probe()
    assert [e.kv_cache_usage for e in services.gpu_pool.endpoints] == [0.95, 0.2]
    results = [await ask(services) for _ in range(4)]
    assert [answered_by(r) for r in results] == [roomy.url] * 4
    assert full.peak == 0

    alone = await services_on(harness, full, serverless_ratio=1.0)
    await alone.gpu_pool.probe()
    assert not alone.gpu_pool.has_spare_capacity(MODEL)
    result = await ask(alone)
    assert result["routing"]["backend"] == "serverless"
    assert "busy" in result["routing"]["reason"]


async def test_a_request_goes_only_where_max_model_len_holds_it(
    harness: Harness, gpus: Callable[..., Awaitable[Gpu]]
):
    short = await gpus({"max_model_len": 600})
    long = await gpus({"max_model_len": 32768})
    services = await services_on(harness, short, long)
    pool = services.gpu_pool
    await pool.probe()
    assert pool.endpoints[0].max_model_len[MODEL] == 600
    # prompt + max_tokens over 600: never the short one, though it is listed first
    for _ in range(3):
        result = await ask(services, max_tokens=1000, force_backend="gpu")
        assert answered_by(result) == long.url
    small = await ask(services, max_tokens=16, force_backend="gpu")
    assert answered_by(small) == short.url
    assert pool.pick(MODEL, 1100) is pool.endpoints[1]

    only_short = await services_on(harness, short)
    result = await ask(only_short, max_tokens=1000)
    assert result["routing"]["backend"] == "serverless"
    assert "max_model_len 600" in result["routing"]["reason"]
    # with nowhere else to go, too long for the pool is the caller's error, as vLLM says
    gpu_only = await services_on(harness, short, disable_lambda_labs=True)
    with pytest.raises(BackendRejectedError) as refused:
        await ask(gpu_only, max_tokens=1000)
    assert refused.value.status_code == 400
    assert refused.value.param == "max_tokens"
    assert "maximum context length is 600" in str(refused.value)
    assert short.peak == 1  # only the small request above reached it


# -- 5. admission ----------------------------------------------------------------------


async def test_a_burst_of_40_never_puts_more_than_the_capacity_on_one_endpoint(
    harness: Harness, gpus: Callable[..., Awaitable[Gpu]]
):
    # slow enough that all 40 are decided before the first answer frees a slot,
    # even on a loaded machine
    first = await gpus(ttft_ms=1500)
    second = await gpus(ttft_ms=1500)
    services = await services_on(
        harness, first, second, serverless_ratio=1.0, gpu_concurrency_per_endpoint=16
    )
    pool = services.gpu_pool
    await pool.probe()
    results = await asyncio.gather(*(ask(services) for _ in range(40)))
    spread = Counter(answered_by(r) or "serverless" for r in results)
    assert [first.peak, second.peak] == [16, 16], spread
    assert [e.peak_in_flight for e in pool.endpoints] == [16, 16]
    assert spread == {first.url: 16, second.url: 16, "serverless": 8}
    overflow = [r for r in results if r["routing"]["backend"] == "serverless"]
    assert all("busy" in r["routing"]["reason"] for r in overflow)
    assert [e.in_flight for e in pool.endpoints] == [0, 0]
    assert pool.reserved() == 0


async def test_a_slot_nobody_takes_is_released(
    harness: Harness, gpus: Callable[..., Awaitable[Gpu]], monkeypatch: pytest.MonkeyPatch
):
    gpu = await gpus()
    services = await services_on(harness, gpu, gpu_concurrency_per_endpoint=1)
    pool: GpuPool = services.gpu_pool
    await pool.probe()
    monkeypatch.setattr(pool_module, "RESERVATION_TTL_S", 0.05)
    assert pool.admit(MODEL, None, "lost") is not None
    assert pool.admit(MODEL, None, "next") is None  # the one slot is taken
    await asyncio.sleep(0.1)
    assert pool.admit(MODEL, None, "next") is not None  # the lost one was swept
    assert pool.endpoints[0].in_flight == 1
    assert pool.reserved() == 1


# -- 6. every endpoint attempt is recorded ------------------------------------------------


async def test_a_failed_endpoint_then_a_success_on_another_shows_both_attempts(
    harness: Harness, gpus: Callable[..., Awaitable[Gpu]]
):
    broken = await gpus(fail_rate=1.0, fail_status=503)
    fine = await gpus()
    services = await services_on(harness, broken, fine)
    result = await ask(services, force_backend="gpu")
    attempts = [(a["status"], a.get("endpoint")) for a in result["routing"]["attempts"]]
    assert attempts == [("failed", broken.url), ("ok", fine.url)]
    assert result["routing"]["attempts"][0]["status_code"] == 503
    assert services.gpu_pool.reserved() == 0
    (row,) = await services.ledger.rows()
    assert row.status == "ok"
    assert row.fallbacks == 1


async def test_an_answer_the_server_aborted_is_answered_again_by_another_endpoint(
    harness: Harness, gpus: Callable[..., Awaitable[Gpu]]
):
    # a vLLM being stopped (SIGTERM: a rolling restart) answers each request in flight
    # 200 with finish_reason 'abort' and the answer cut short: not an answer
    stopping = await gpus(fault="abort")
    fine = await gpus()
    services = await services_on(harness, stopping, fine)
    result = await ask(services, force_backend="gpu")
    attempts = [(a["status"], a.get("endpoint")) for a in result["routing"]["attempts"]]
    assert attempts == [("failed", stopping.url), ("ok", fine.url)]
    assert "aborted" in result["routing"]["attempts"][0]["error"]
    assert result["completion"]["finish_reason"] != "abort"
    endpoint = next(e for e in services.gpu_pool.endpoints if e.shown == stopping.url)
    assert endpoint.failures == 1  # counted against the stopping server
    (row,) = await services.ledger.rows()
    assert (row.status, row.fallbacks) == ("ok", 1)


async def test_a_stream_the_server_aborted_after_its_first_tokens_goes_to_no_other_endpoint(
    harness: Harness, gpus: Callable[..., Awaitable[Gpu]]
):
    # the caller holds the first tokens: another endpoint's answer cannot be spliced on
    stopping = await gpus(fault="abort")
    fine = await gpus()
    services = await services_on(harness, stopping, fine)
    result = await ask(services, force_backend="gpu", stream=True)
    attempts = result["routing"]["attempts"]
    on_gpu = [(a["status"], a.get("endpoint")) for a in attempts if a["backend"] == "gpu"]
    assert on_gpu == [("failed", stopping.url)]
    assert "after the answer began streaming" in attempts[0]["error"]
    assert await received(fine.url) == []


# -- 7. an endpoint serving other models ----------------------------------------------


async def test_an_endpoint_serving_other_models_is_named_not_called_down(
    harness: Harness, gpus: Callable[..., Awaitable[Gpu]]
):
    # a slow /v1/models: the first request would be routed long before the probe ends
    other = await gpus({"models_delay_s": 1.0}, models=["some-other-model"], vision_models=[])
    services = await services_on(harness, other)
    await services.ledger.ensure_schema()  # the request's own steps take no time to speak of
    # the very first request: the pool's first probe ends before it is routed, so no
    # 404 from a server that does not serve its model
    result = await ask(services)
    assert result["routing"]["backend"] == "serverless"
    reason = result["routing"]["reason"]
    assert "up but serving other models" in reason
    assert other.url in reason
    assert "some-other-model" in reason
    assert "down or cooling" not in reason
    assert other.peak == 0
    forced = await ask(services, force_backend="gpu")
    (attempt,) = [a for a in forced["routing"]["attempts"] if a["backend"] == "gpu"]
    assert "serving other models" in (attempt["error"] or "")


# -- 8. prefix-cache affinity ---------------------------------------------------------


def hold(pool: GpuPool, gpu: Gpu, count: int) -> list[Slot]:
    """Take ``count`` slots on ``gpu`` (load of this router's own, as if in flight)."""
    others = {e.shown for e in pool.endpoints if e.shown != gpu.url}
    slots = []
    for number in range(count):
        slot = pool.checkout(f"held-{gpu.port}-{number}", MODEL, avoid=others).slot
        assert slot is not None
        assert slot.endpoint.shown == gpu.url
        slots.append(slot)
    return slots


def let_go(pool: GpuPool, slots: list[Slot]) -> None:
    for slot in slots:
        pool.release(slot)


def on_thread(name: str) -> dict[str, Any]:
    return {"configurable": {"thread_id": name}}


def turn(text: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}]}


async def two_gpus_and_a_thread(
    harness: Harness, gpus: Callable[..., Awaitable[Gpu]]
) -> tuple[Gpu, Gpu, GpuPool, Context, Any]:
    """Start two GPU endpoints, probed, with serverless off; a graph with a checkpointer."""
    first, second = await gpus(), await gpus()
    services = await services_on(harness, first, second, serverless_ratio=1.0)
    await services.gpu_pool.probe()
    threaded = builder.compile(checkpointer=InMemorySaver())
    return first, second, services.gpu_pool, Context(services=services), threaded


def answered(result: dict[str, Any]) -> tuple[str | None, bool]:
    """Return the GPU endpoint that answered and whether affinity chose it."""
    assert result["routing"]["backend"] == "gpu", result["routing"]["reason"]
    (ok,) = [a for a in result["routing"]["attempts"] if a["status"] == "ok"]
    return ok.get("endpoint"), bool(ok.get("affinity"))


async def test_a_conversation_stays_on_its_endpoint_within_the_margin(
    harness: Harness, gpus: Callable[..., Awaitable[Gpu]]
):
    first, second, pool, context, threaded = await two_gpus_and_a_thread(harness, gpus)

    held = hold(pool, first, 1)  # turn 1 goes to the second endpoint by load
    one = await threaded.ainvoke(turn("Hello!"), on_thread("c"), context=context)
    assert answered(one) == (second.url, False)
    let_go(pool, held)

    # the second endpoint now carries two more than the idle first: within the margin (2)
    held = hold(pool, second, 2)
    for text in ("Tell me more.", "Thanks, bye."):
        result = await threaded.ainvoke(turn(text), on_thread("c"), context=context)
        assert answered(result) == (second.url, True)
        assert f"{second.url} holds this conversation's prefix" in result["routing"]["reason"]
    let_go(pool, held)
    assert first.peak == 0
    assert [e.affinity_requests for e in pool.endpoints] == [0, 2]
    sent = (await received(second.url))[-1]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant"] * 2 + ["user"]


@pytest.mark.parametrize("away", ["over the margin", "down"])
async def test_a_turn_goes_elsewhere_when_its_endpoint_cannot_take_it_and_the_map_follows(
    harness: Harness, gpus: Callable[..., Awaitable[Gpu]], away: str
):
    first, second, pool, context, threaded = await two_gpus_and_a_thread(harness, gpus)

    held = hold(pool, first, 1)
    one = await threaded.ainvoke(turn("Hello!"), on_thread("c"), context=context)
    assert answered(one) == (second.url, False)
    let_go(pool, held)

    if away == "down":
        await second.stop()
        await pool.probe()
    else:
        held = hold(pool, second, 3)  # three more than the first: over the margin
    two = await threaded.ainvoke(turn("Tell me more."), on_thread("c"), context=context)
    assert answered(two) == (first.url, False)
    assert "prefix" not in two["routing"]["reason"]
    if away == "down":
        await second.start()
        await pool.probe()
    else:
        let_go(pool, held)

    # the conversation now lives on the first endpoint: it keeps it within the margin
    held = hold(pool, first, 2)
    three = await threaded.ainvoke(turn("Thanks, bye."), on_thread("c"), context=context)
    assert answered(three) == (first.url, True)
    let_go(pool, held)


async def test_two_conversations_are_spread_by_load_and_each_keeps_its_endpoint(
    harness: Harness, gpus: Callable[..., Awaitable[Gpu]]
):
    first, second, pool, context, threaded = await two_gpus_and_a_thread(harness, gpus)

    # started together, the two conversations are spread by load, one on each endpoint
    one_x, one_y = await asyncio.gather(
        *(threaded.ainvoke(turn(f"Hello from {t}!"), on_thread(t), context=context) for t in "xy")
    )
    assert {answered(one_x), answered(one_y)} == {(first.url, False), (second.url, False)}
    home = {"x": answered(one_x)[0], "y": answered(one_y)[0]}
    # their next turns, together again, each on its own endpoint (in either order)
    for order in ("yx", "xy"):
        results = await asyncio.gather(
            *(threaded.ainvoke(turn("More."), on_thread(t), context=context) for t in order)
        )
        assert [answered(r) for r in results] == [(home[t], True) for t in order]
    # a conversation the pool never answered (its history came from elsewhere) goes by load
    held = hold(pool, first, 1)
    elsewhere = await ask(
        context.services,
        messages=[
            {"role": "user", "content": "Hello!"},
            {"role": "assistant", "content": "Hi from another router."},
            {"role": "user", "content": "Go on."},
        ],
    )
    assert answered(elsewhere) == (second.url, False)
    let_go(pool, held)


async def test_the_gateways_conversation_stays_on_its_endpoint(
    harness: Harness, gpus: Callable[..., Awaitable[Gpu]], start_gateway: StartGateway
):
    first, second, pool, context, _ = await two_gpus_and_a_thread(harness, gpus)
    gateway = await start_gateway(context.services)
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Hello!"}]
    held = hold(pool, first, 1)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as http:
        for number, text in enumerate(("Tell me more.", "Thanks, bye.", None)):
            body = (await http.post("/chat/completions", json={"messages": messages})).json()
            assert answered(body) == (second.url, number > 0)
            if number == 0:
                let_go(pool, held)
                held = hold(pool, second, 2)
            if text is not None:
                messages += [body["choices"][0]["message"], {"role": "user", "content": text}]
    let_go(pool, held)
    assert first.peak == 0
