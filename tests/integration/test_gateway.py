"""The OpenAI-compatible gateway over real HTTP, driven by the official clients.

The gateway runs in this event loop (uvicorn on a free port) on services wired
to the two emulators of ``tests/conftest.py``; the last test serves it beside
the graph API with ``langgraph dev``.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest

from backends.catalog import get_catalog
from gateway.openai_format import ChunkWriter
from gateway.streaming import StreamRun, draining, sse_events
from state.context import Services
from state.reporting.money import usd
from state.reporting.usage import routing_stats, summarize
from tests.conftest import TEST_KEY, Gateway, Harness, StartGateway

ROOT = Path(__file__).resolve().parents[2]
HELLO = [{"role": "user", "content": "Hello!"}]


def assert_headers_match(headers: httpx.Headers, row: Any) -> None:
    assert headers["x-router-backend"] == row.backend
    assert headers["x-router-model"] == row.model
    assert headers["x-request-id"] == row.request_id


async def test_completion_reports_the_routing_that_the_ledger_recorded(gateway: Gateway):
    raw = await gateway.client.chat.completions.with_raw_response.create(
        model="auto", messages=HELLO, user="alice"
    )
    completion = raw.parse()
    row = await gateway.only_row()

    assert raw.status_code == 200
    assert_headers_match(raw.headers, row)
    assert float(raw.headers["x-router-cost-usd"]) == row.cost_usd
    assert completion.id == f"chatcmpl-{row.request_id}"
    assert completion.object == "chat.completion"
    assert completion.model == row.model == "llama3.1-8b-instruct"
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert "emulator" in choice.message.content
    assert choice.finish_reason in {"stop", "length"}
    assert completion.usage.prompt_tokens == row.prompt_tokens
    assert completion.usage.completion_tokens == row.completion_tokens
    routing = completion.routing  # our extra field
    assert routing["backend"] == row.backend
    assert routing["model"] == row.model
    assert routing["cost_usd"] == row.cost_usd
    assert routing["complexity"]["level"] == "low"
    assert [a["status"] for a in routing["attempts"]] == ["ok"]
    assert row.user == "alice"


async def test_serverless_cost_header_equals_the_ledger_cost(gateway: Gateway):
    raw = await gateway.client.chat.completions.with_raw_response.create(
        model="llama3.1-70b-instruct-fp8",
        messages=HELLO,
        max_completion_tokens=64,
        temperature=0.2,
        top_p=0.9,  # ignored
        n=1,
        extra_body={"force_backend": "serverless", "cost_priority": "performance"},
    )
    completion = raw.parse()
    row = await gateway.only_row()
    assert row.backend == "serverless"
    assert row.model == "llama3.1-70b-instruct-fp8"
    assert_headers_match(raw.headers, row)
    assert row.cost_usd > 0
    assert float(raw.headers["x-router-cost-usd"]) == row.cost_usd
    assert "e" not in raw.headers["x-router-cost-usd"]  # plain decimal
    assert completion.routing["cost_usd"] == row.cost_usd
    assert completion.usage.completion_tokens <= 64


async def collect(stream: Any) -> tuple[list[Any], str]:
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return chunks, text


async def test_stream_with_usage(gateway: Gateway):
    whole = await gateway.client.chat.completions.create(
        model="auto", messages=HELLO, extra_body={"force_backend": "gpu"}
    )
    stream = await gateway.client.chat.completions.create(
        model="auto",
        messages=HELLO,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"force_backend": "gpu"},
    )
    chunks, text = await collect(stream)
    row = (await gateway.rows())[0]

    assert stream.response.headers["content-type"].startswith("text/event-stream")
    assert_headers_match(stream.response.headers, row)
    assert "x-router-cost-usd" not in stream.response.headers  # in the final chunk instead
    assert chunks[0].choices[0].delta.role == "assistant"
    assert text == whole.choices[0].message.content
    assert "emulator" in text
    token_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(token_chunks) == row.completion_tokens > 3
    assert all(c.id == f"chatcmpl-{row.request_id}" and c.model == row.model for c in chunks)
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1
    assert finals[0].routing["backend"] == row.backend
    assert finals[0].routing["cost_usd"] == row.cost_usd
    usage = [c for c in chunks if not c.choices]
    assert len(usage) == 1
    assert chunks[-1] is usage[0]
    assert usage[0].usage.prompt_tokens == row.prompt_tokens
    assert usage[0].usage.completion_tokens == row.completion_tokens


async def test_stream_without_usage_has_no_usage_chunk(gateway: Gateway):
    stream = await gateway.client.chat.completions.create(
        model="auto",
        messages=HELLO,
        stream=True,
        extra_body={"force_backend": "serverless"},
    )
    chunks, text = await collect(stream)
    row = await gateway.only_row()
    assert "emulator" in text
    assert all(c.choices for c in chunks)  # every chunk has a choice: choices[0] is safe
    assert all(c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason in {"stop", "length"}
    assert chunks[-1].routing["cost_usd"] == row.cost_usd > 0
    assert_headers_match(stream.response.headers, row)


async def test_stream_events_are_openai_sse(gateway: Gateway):
    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"{gateway.url}/chat/completions",
            json={"messages": HELLO, "stream": True, "stream_options": {"include_usage": True}},
        )
    assert response.status_code == 200
    events = response.text.split("\n\n")
    assert events[-1] == ""
    assert events[-2] == "data: [DONE]"
    payloads = [orjson.loads(e.removeprefix("data: ")) for e in events[:-2]]
    assert all(e.startswith("data: ") for e in events[:-1])
    assert all(p["object"] == "chat.completion.chunk" for p in payloads)
    assert payloads[-1]["choices"] == []
    assert payloads[-1]["usage"]["total_tokens"] > 0
    assert set(payloads[-2]["routing"]) == {
        "backend",
        "model",
        "reason",
        "cost_usd",
        "complexity",
        "attempts",
    }


async def test_langchain_chat_openai_invoke_and_stream(gateway: Gateway):
    chat = gateway.chat(extra_body={"force_backend": "gpu"})
    message = await chat.ainvoke("Hello!")
    row = (await gateway.rows())[0]
    assert "emulator" in message.content
    assert message.response_metadata["model_name"] == row.model
    assert message.usage_metadata["input_tokens"] == row.prompt_tokens
    assert message.usage_metadata["output_tokens"] == row.completion_tokens

    streamed = None
    async for chunk in chat.astream("Hello!"):
        streamed = chunk if streamed is None else streamed + chunk
    row = (await gateway.rows())[0]
    assert streamed is not None
    assert streamed.content == message.content
    assert streamed.usage_metadata["output_tokens"] == row.completion_tokens
    assert len(await gateway.rows()) == 2


async def test_langchain_max_tokens_is_sent_as_max_completion_tokens(gateway: Gateway):
    message = await gateway.chat(max_tokens=5).ainvoke("Tell me about the sea")
    row = await gateway.only_row()
    assert row.completion_tokens <= 5
    assert message.response_metadata["finish_reason"] == "length"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"messages": []}, "non-empty list"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "role"),
        ({"messages": HELLO, "n": 2}, "n=2 is not supported"),
        ({"messages": HELLO, "temperature": 3}, "temperature"),
        ({"messages": HELLO, "max_tokens": 0}, "max_tokens"),
        ({"messages": HELLO, "model": "gpt-99"}, "not in the catalog"),
        ({"messages": HELLO, "extra_body": {"cost_priority": "cheap"}}, "cost_priority"),
        # a stream that fails before any token is a plain HTTP error too
        ({"messages": [], "stream": True}, "non-empty list"),
    ],
    ids=["empty", "role", "n", "temperature", "max_tokens", "model", "priority", "stream"],
)
async def test_bad_requests_are_400_with_our_message(gateway: Gateway, kwargs, message):
    kwargs = {"model": "auto", **kwargs}
    with pytest.raises(openai.BadRequestError, match=message) as caught:
        await gateway.client.chat.completions.create(**kwargs)
    error = caught.value.body
    assert error["type"] == "invalid_request_error"
    assert "param" in error
    assert await gateway.rows() == []


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b'[{"role": "user"}]', "must be a JSON object"),
        (b"{}", "'messages' is required"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "stream": "yes"}', "stream"),
    ],
)
async def test_malformed_bodies_are_400(gateway: Gateway, body, message):
    async with httpx.AsyncClient() as http:
        response = await http.post(f"{gateway.url}/chat/completions", content=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert message in error["message"]
    assert set(error) >= {"message", "type", "code", "param"}
    assert response.headers["x-request-id"]


async def test_budget_refusal_is_402_with_remaining_and_reset(
    both_up: Harness, start_gateway: StartGateway
):
    gateway = await start_gateway(
        await both_up.services(lambda_monthly_budget=0.0, over_budget_policy="reject")
    )
    for stream in (False, True):
        with pytest.raises(openai.APIStatusError, match="monthly budget") as caught:
            await gateway.client.chat.completions.create(
                model="auto",
                messages=HELLO,
                stream=stream,
                extra_body={"force_backend": "serverless"},
            )
        assert caught.value.status_code == 402
        error = caught.value.body
        assert error["code"] == "budget_exceeded"
        assert error["type"] == "budget_error"
        assert error["remaining_usd"] == 0.0
        assert error["resets_at"].endswith("+00:00")
        assert int(caught.value.response.headers["retry-after"]) == error["retry_after_s"] > 0


MID_NOVEMBER = datetime(2026, 11, 15, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("budgets", "period", "limit", "retry_after_s", "advice"),
    [
        # 12 h to midnight
        ({"lambda_daily_budget": 1e-6}, "day", 1e-6, 12 * 3600, "LAMBDA_DAILY_BUDGET"),
        # both refuse: the day comes first in lock order, but only December lets it through
        (
            {"lambda_daily_budget": 0.0, "lambda_monthly_budget": 0.0},
            "month",
            0.0,
            (15 * 24 + 12) * 3600,
            "LAMBDA_MONTHLY_BUDGET",
        ),
    ],
)
async def test_a_402_says_which_budget_and_when_to_retry(
    both_up: Harness, start_gateway: StartGateway, budgets, period, limit, retry_after_s, advice
):
    services = await both_up.services(
        clock=lambda: MID_NOVEMBER, over_budget_policy="reject", **budgets
    )
    gateway = await start_gateway(services)
    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"{gateway.url}/chat/completions",
            json={"messages": HELLO, "max_tokens": 512, "force_backend": "serverless"},
        )
    assert response.status_code == 402
    assert response.headers["retry-after"] == str(retry_after_s)
    error = response.json()["error"]
    assert error["retry_after_s"] == retry_after_s
    budget = error["budget"]
    assert (budget["scope"], budget["key"], budget["period"]) == ("global", None, period)
    assert budget["limit_usd"] == limit
    assert budget["spent_usd"] == 0.0
    assert budget["request_usd"] > limit
    word = "daily" if period == "day" else "monthly"
    assert f"{word} budget ({usd(limit)}) would be exceeded" in error["message"]
    assert f"in {retry_after_s} s" in error["message"]
    assert advice in error["message"]


async def test_both_backends_failing_is_502(harness: Harness, start_gateway: StartGateway):
    await harness.start("serverless", fail_rate=1.0, fail_status=500)
    await harness.start("gpu", fail_rate=1.0, fail_status=503)
    gateway = await start_gateway(await harness.services())
    for stream in (False, True):
        with pytest.raises(openai.InternalServerError, match="every backend failed") as caught:
            await gateway.client.chat.completions.create(
                model="auto", messages=HELLO, stream=stream
            )
        assert caught.value.status_code == 502
        assert caught.value.body["code"] == "all_backends_failed"
    rows = await gateway.rows()
    assert [r.status for r in rows] == ["failed", "failed"]


async def test_unexpected_failure_is_500_without_internals(start_gateway: StartGateway):
    async def broken() -> Services:
        raise RuntimeError("db password hunter2 at 10.1.2.3")

    gateway = await start_gateway(provider=broken)
    with pytest.raises(openai.InternalServerError) as caught:
        await gateway.client.chat.completions.create(model="auto", messages=HELLO)
    assert caught.value.status_code == 500
    text = caught.value.response.text
    assert "hunter2" not in text
    assert "10.1.2.3" not in text
    assert "RuntimeError" not in text
    assert caught.value.body["code"] == "internal_error"
    assert caught.value.response.headers["x-request-id"] in caught.value.body["message"]


async def test_failure_after_tokens_ends_the_stream_with_an_error_event(
    both_up: Harness, start_gateway: StartGateway
):
    services = await both_up.services()
    gateway = await start_gateway(services)
    await gateway.rows()  # migrate, then lose the table the last step writes to
    async with services.ledger.engine.begin() as conn:
        await conn.exec_driver_sql("DROP TABLE usage_records")

    stream = await gateway.client.chat.completions.create(
        model="auto", messages=HELLO, stream=True, extra_body={"force_backend": "gpu"}
    )
    received: list[Any] = []
    with pytest.raises(openai.APIError) as caught:  # noqa: PT012 - the error ends the loop
        async for chunk in stream:
            received.append(chunk)
    assert stream.response.status_code == 200
    assert "".join(c.choices[0].delta.content or "" for c in received)  # tokens came first
    assert "the router failed on this request" in caught.value.message
    assert "usage_records" not in str(caught.value.body)

    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"{gateway.url}/chat/completions",
            json={"messages": HELLO, "stream": True, "force_backend": "gpu"},
        )
    events = response.text.split("\n\n")
    assert events[-2] == "data: [DONE]"
    assert orjson.loads(events[-3].removeprefix("data: "))["error"]["code"] == "internal_error"


async def test_models_lists_the_catalog_and_auto(gateway: Gateway):
    models = await gateway.client.models.list()
    ids = [m.id for m in models.data]
    catalog = get_catalog()
    assert ids == ["auto", *catalog.ids()]
    by_id = {m.id: m for m in models.data}
    for spec in catalog.models:
        entry = by_id[spec.id]
        assert entry.object == "model"
        assert entry.context_window == spec.context_window
        assert entry.output_usd_per_mtok == spec.output_usd_per_mtok
        assert set(entry.backends) == {b for b in ("serverless", "gpu") if spec.offered_on(b)}


async def test_fallback_after_partial_output_ends_the_stream_and_lets_the_run_finish():
    # No emulator breaks off mid-stream, so the run's events are scripted here.
    finished = asyncio.Event()

    async def run_events() -> AsyncIterator[tuple[str, Any]]:
        for backend, text in (("gpu", "Hel"), ("gpu", "lo"), ("serverless", "Hi")):
            yield "custom", {"event": "delta", "backend": backend, "delta": {"content": text}}
        yield "values", {"routing": {"backend": "serverless"}, "cost_usd": 0.001}
        finished.set()

    run = StreamRun(run_events())
    first = await run.first_delta()
    assert first is not None
    assert first["delta"] == {"content": "Hel"}
    writer = ChunkWriter("r1", "llama3.1-8b-instruct")
    body = b"".join([part async for part in sse_events(run, writer, "gpu", first, True, "r1")])
    events = body.decode().split("\n\n")
    contents = [orjson.loads(e[6:])["choices"][0]["delta"].get("content") for e in events[:3]]
    assert contents == ["", "Hel", "lo"]
    error = orjson.loads(events[3].removeprefix("data: "))["error"]
    assert error["code"] == "stream_interrupted"
    assert "fell back to serverless" in error["message"]
    assert events[4:] == ["data: [DONE]", ""]
    await asyncio.gather(*draining)
    assert finished.is_set()  # drained: the graph reaches its ledger row


def test_a_stream_without_tokens_still_has_role_finish_usage_and_done():
    result = {
        "completion": {"finish_reason": "length"},
        "usage": {"prompt_tokens": 3, "completion_tokens": 0, "total_tokens": 3},
        "routing": {"backend": "gpu", "model": "m", "reason": "r", "attempts": []},
        "cost_usd": 0.0,
    }
    body = ChunkWriter("r2", "m").end(result, True, with_role=True).decode()
    events = [orjson.loads(e[6:]) for e in body.split("\n\n")[:3]]
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert events[1]["choices"][0]["finish_reason"] == "length"
    assert events[1]["routing"]["backend"] == "gpu"
    assert events[1]["routing"]["cost_usd"] == 0.0
    assert events[2]["choices"] == []
    assert events[2]["usage"]["total_tokens"] == 3
    assert body.endswith("data: [DONE]\n\n")


def test_importing_the_app_builds_nothing():
    code = (
        "import sys, gateway.app as g, state.context as c; "
        "assert not c._default_services; "
        "assert 'emulator' not in sys.modules; "
        "assert g.app.state.gateway._models is None; print('ok')"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.stdout.strip() == "ok", result.stderr


# --- beside the graph API, in ``langgraph dev`` ------------------------------------------


async def test_gateway_answers_beside_the_graph_api_in_langgraph_dev(langgraph_dev: str):
    async with openai.AsyncOpenAI(
        base_url=f"{langgraph_dev}/v1", api_key="x", max_retries=0, timeout=60
    ) as client:
        raw = await client.chat.completions.with_raw_response.create(model="auto", messages=HELLO)
        completion = raw.parse()
        assert "emulator" in completion.choices[0].message.content
        assert completion.model == raw.headers["x-router-model"] == "llama3.1-8b-instruct"
        assert raw.headers["x-router-backend"] in {"serverless", "gpu"}

        stream = await client.chat.completions.create(
            model="auto", messages=HELLO, stream=True, stream_options={"include_usage": True}
        )
        chunks = [chunk async for chunk in stream]
        assert "emulator" in "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert chunks[-1].usage.total_tokens > 0

        with pytest.raises(openai.BadRequestError, match="non-empty list"):
            await client.chat.completions.create(model="auto", messages=[])
        assert "auto" in [m.id async for m in client.models.list()]
    # the graph API still answers beside our routes
    async with httpx.AsyncClient(base_url=langgraph_dev) as http:
        assert (await http.get("/ok")).status_code == 200
        assistants = await http.post("/assistants/search", json={"graph_id": "router"})
        assert assistants.status_code == 200
        assert assistants.json()
        paths = (await http.get("/openapi.json")).json()["paths"]
        assert "/v1/chat/completions" in paths
        assert "/v1/models" in paths


@pytest.mark.parametrize("backend", ["serverless", "gpu"])
async def test_a_client_that_leaves_mid_stream_leaves_one_cancelled_row_with_the_tokens_so_far(
    harness: Harness, start_gateway: StartGateway, backend: str
):
    urls = {
        "serverless": await harness.start("serverless", api_key=TEST_KEY, tpot_ms=40),
        "gpu": await harness.start("gpu", tpot_ms=40),
    }
    services = await harness.services()
    gw = await start_gateway(services)
    body = {"model": "auto", "messages": HELLO, "stream": True, "force_backend": backend}
    received = 0
    async with httpx.AsyncClient() as http:
        async with http.stream("POST", f"{gw.url}/chat/completions", json=body) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                if '"content":"' in line and '"content":""' not in line:
                    received += 1
                    if received == 3:
                        break  # three tokens in, the client goes away
    rows: list[Any] = []
    for _ in range(200):
        rows = await services.ledger.rows()
        if rows:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)  # time for a second row, if one were (wrongly) coming
    (row,) = await services.ledger.rows()
    assert row.status == "cancelled"
    assert row.backend == backend
    # the tokens the backend produced before the router stopped reading, not the whole answer
    async with httpx.AsyncClient(headers={"authorization": f"Bearer {TEST_KEY}"}) as http:
        metrics = (await http.get(urls[backend].removesuffix("/v1") + "/metrics")).text
        assert "vllm:request_success_total" in metrics
        # the emulator never finished that answer: the router closed the connection
        assert all(
            line.endswith(" 0.0")
            for line in metrics.splitlines()
            if line.startswith("vllm:request_success_total")
        )
        served = get_catalog().by_id[row.model].served_name(backend)
        whole = await http.post(
            f"{urls[backend]}/chat/completions",
            json={"model": served, "messages": HELLO, "max_tokens": 1024},
        )
    full = whole.json()["usage"]["completion_tokens"]
    assert received <= row.completion_tokens < full
    assert row.prompt_tokens > 0
    assert row.cost_usd > 0
    # the reports count it as cancelled, not failed, and bill what it spent
    figures = summarize([row])
    assert (figures["cancelled"], figures["failed"], figures["error_rate"]) == (1, 0, 0.0)
    stats = await routing_stats(
        services.ledger, services.settings, services.catalog, datetime.now(UTC)
    )
    savings = stats["today"]["savings"]
    assert savings["serverless_usd"] == pytest.approx(
        row.cost_usd if backend == "serverless" else 0
    )
    assert savings["all_serverless"]["usd"] > 0  # its tokens count in that baseline
    if backend == "gpu":
        # the endpoint's slot came back; the GPU answer spends no serverless budget
        assert [e.in_flight for e in services.gpu_pool.endpoints] == [0]
        assert row.gpu_seconds > 0
        return
    model = get_catalog().by_id[row.model]
    assert row.cost_usd == pytest.approx(model.cost_usd(row.prompt_tokens, row.completion_tokens))
    # the reservation was settled with that cost, not left to expire
    (day,) = [b for b in await services.budgets.status() if b["period"] == "day"]
    assert day["reserved_usd"] == pytest.approx(0, abs=1e-12)
    assert day["spent_usd"] == pytest.approx(row.cost_usd)
