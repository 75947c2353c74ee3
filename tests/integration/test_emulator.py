"""The OpenAI-compatible emulator, over real HTTP."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import orjson
import pytest
from openai import AsyncOpenAI
from pydantic import ValidationError

from backends.tokens import count_message_tokens, count_text_tokens
from emulator import EmulatorConfig, serve_emulator

MODEL = "llama3.1-8b-instruct"
KEY = "sk-emulator-test-key"
MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Explain how the router picks a GPU server for a request."},
]


@pytest.fixture(scope="module")
async def url() -> AsyncIterator[str]:
    async with serve_emulator(EmulatorConfig(name="test")) as base:
        yield base


@pytest.fixture(scope="module")
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as http:
        yield http


def root(base: str) -> str:
    return base.removesuffix("/v1")


async def chat(client: httpx.AsyncClient, base: str, **body: Any) -> httpx.Response:
    payload: dict[str, Any] = {"model": MODEL, "messages": MESSAGES}
    payload.update(body)
    return await client.post(f"{base}/chat/completions", json=payload)


def parse_events(text: str) -> list[Any]:
    """Return the SSE data payloads: parsed chunks, and the literal "[DONE]"."""
    assert text.endswith("data: [DONE]\n\n")
    events: list[Any] = []
    for block in text.split("\n\n"):
        if not block:
            continue
        assert block.startswith("data: "), block
        data = block.removeprefix("data: ")
        events.append(data if data == "[DONE]" else orjson.loads(data))
    return events


async def metrics(client: httpx.AsyncClient, base: str) -> dict[str, float]:
    response = await client.get(f"{root(base)}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    values: dict[str, float] = {}
    for line in response.text.splitlines():
        if line.startswith("#") or not line:
            continue
        sample, value = line.rsplit(" ", 1)
        name = sample.split("{", 1)[0]
        values[name] = values.get(name, 0.0) + float(value)
    return values


async def test_answer_says_emulator_and_counts_tokens_honestly(client, url):
    response = await chat(client, url)
    assert response.status_code == 200
    assert response.headers["x-emulator"] == "test"
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-emu-")
    assert body["model"] == MODEL
    assert body["system_fingerprint"] == "fp_emulator"
    choice = body["choices"][0]
    content = choice["message"]["content"]
    assert choice["message"] == {"role": "assistant", "content": content, "refusal": None}
    assert choice["logprobs"] is None
    assert "emulator" in content
    assert MODEL in content
    assert choice["finish_reason"] == "stop"
    usage = body["usage"]
    assert usage["prompt_tokens"] == count_message_tokens(MESSAGES)
    assert usage["completion_tokens"] == count_text_tokens(content)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert 15 <= usage["completion_tokens"] <= 80

    again = (await chat(client, url)).json()
    assert again["choices"][0]["message"]["content"] == content  # deterministic
    other = await chat(client, url, messages=[{"role": "user", "content": "Tell me about cats."}])
    assert other.json()["choices"][0]["message"]["content"] != content


@pytest.mark.parametrize("param", ["max_tokens", "max_completion_tokens"])
@pytest.mark.parametrize("limit", [1, 5, 9])
async def test_token_limit_truncates_to_exactly_that_many(client, url, param, limit):
    response = await chat(client, url, **{param: limit})
    assert response.status_code == 200
    body = response.json()
    content = body["choices"][0]["message"]["content"]
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == limit
    assert count_text_tokens(content) == limit
    full = (await chat(client, url)).json()["choices"][0]["message"]["content"]
    assert full.startswith(content)
    assert len(content) < len(full)


async def test_large_limit_leaves_the_answer_whole(client, url):
    full = (await chat(client, url)).json()
    limited = (await chat(client, url, max_tokens=4000)).json()
    assert limited["choices"][0]["message"] == full["choices"][0]["message"]
    assert limited["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize("max_tokens", [None, 7])
async def test_stream_matches_the_whole_answer(client, url, max_tokens):
    extra = {} if max_tokens is None else {"max_tokens": max_tokens}
    whole = (await chat(client, url, **extra)).json()

    response = await chat(client, url, stream=True, **extra)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = parse_events(response.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert all(c["system_fingerprint"] == "fp_emulator" for c in chunks)
    assert all(c["choices"][0]["logprobs"] is None for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all("usage" not in c for c in chunks)  # no include_usage: no usage at all
    assert all(c["choices"] for c in chunks)
    deltas = [c["choices"][0]["delta"].get("content") or "" for c in chunks]
    assert "".join(deltas) == whole["choices"][0]["message"]["content"]
    token_chunks = chunks[1:-1]
    assert len(token_chunks) == whole["usage"]["completion_tokens"]
    assert chunks[-1]["choices"][0]["delta"] == {}
    assert chunks[-1]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])


async def test_stream_usage_chunk_only_when_asked(client, url):
    whole = (await chat(client, url)).json()
    response = await chat(client, url, stream=True, stream_options={"include_usage": True})
    events = parse_events(response.text)
    assert events[-1] == "[DONE]"
    usage_chunk = events[-2]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == whole["usage"]
    others = events[:-2]
    assert all(c["usage"] is None for c in others)
    assert others[-1]["choices"][0]["finish_reason"] == "stop"

    off = parse_events(
        (await chat(client, url, stream=True, stream_options={"include_usage": False})).text
    )
    assert not any(isinstance(e, dict) and e.get("usage") for e in off)
    assert all(e["choices"] for e in off[:-1])


async def test_injected_failures(client):
    async with serve_emulator(EmulatorConfig(fail_rate=1, fail_status=503)) as base:
        for _ in range(3):
            response = await chat(client, base)
            assert response.status_code == 503
            error = response.json()["error"]
            assert error["type"] == "server_error"
            assert "503" in error["message"]
        assert (await metrics(client, base))["vllm:request_success_total"] == 0
        # the other routes are not subject to fault injection
        assert (await client.get(f"{root(base)}/health")).status_code == 200

    async with serve_emulator(EmulatorConfig(fail_rate=0.5, seed=7)) as base:
        statuses = [(await chat(client, base)).status_code for _ in range(40)]
    assert set(statuses) == {200, 500}


async def test_unknown_model_is_404_model_not_found(client, url):
    response = await chat(client, url, model="gpt-4o")
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "model_not_found"
    assert "gpt-4o" in error["message"]
    assert MODEL in error["message"]


@pytest.mark.parametrize(
    ("body", "param", "hint"),
    [
        ({"model": MODEL}, "messages", "messages"),
        ({"model": MODEL, "messages": []}, "messages", "non-empty"),
        ({"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]}, None, "role"),
        ({"model": MODEL, "messages": [{"role": "user"}]}, None, "content"),
        (
            {"model": MODEL, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            None,
            "text",
        ),
        ({"model": MODEL, "messages": MESSAGES, "temperature": 3}, "temperature", "0 to 2"),
        ({"model": MODEL, "messages": MESSAGES, "temperature": "hot"}, "temperature", "0 to 2"),
        ({"model": MODEL, "messages": MESSAGES, "max_tokens": 0}, "max_tokens", "positive"),
        (
            {"model": MODEL, "messages": MESSAGES, "max_completion_tokens": "ten"},
            "max_completion_tokens",
            "positive",
        ),
        ({"model": MODEL, "messages": MESSAGES, "stream": "yes"}, "stream", "true or false"),
        ({"messages": MESSAGES}, "model", "model"),
        (
            {"model": MODEL, "messages": MESSAGES, "response_format": {"type": "xml"}},
            "response_format",
            "json_schema",
        ),
        (
            {"model": MODEL, "messages": MESSAGES, "response_format": "json"},
            "response_format",
            "json_object",
        ),
        (
            {"model": MODEL, "messages": MESSAGES, "response_format": {"type": "json_schema"}},
            "response_format",
            "schema",
        ),
        ({"model": MODEL, "messages": MESSAGES, "stop": ["a", "b", "c", "d", "e"]}, "stop", "4"),
        ({"model": MODEL, "messages": MESSAGES, "stop": 7}, "stop", "string"),
        (
            {"model": MODEL, "messages": MESSAGES, "logprobs": True, "top_logprobs": 21},
            "top_logprobs",
            "0 to 20",
        ),
        ({"model": MODEL, "messages": MESSAGES, "top_logprobs": 2}, "top_logprobs", "logprobs"),
        (
            {"model": MODEL, "messages": MESSAGES, "tools": [{"type": "function"}]},
            "tools[0]",
            "name",
        ),
        (
            {
                "model": MODEL,
                "messages": MESSAGES,
                "tools": [{"type": "function", "function": {"name": "a"}}],
                "tool_choice": {"type": "function", "function": {"name": "b"}},
            },
            "tool_choice",
            "'b'",
        ),
        (
            {"model": MODEL, "messages": MESSAGES, "tool_choice": "sometimes"},
            "tool_choice",
            "required",
        ),
    ],
)
async def test_malformed_requests_get_400_with_a_helpful_message(client, url, body, param, hint):
    response = await client.post(f"{url}/chat/completions", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert hint in error["message"]
    if param is not None:
        assert error["param"] == param


@pytest.mark.parametrize("raw", [b"{not json", b"", b"[1, 2]"])
async def test_non_json_or_non_object_body_is_400(client, url, raw):
    response = await client.post(
        f"{url}/chat/completions", content=raw, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    message = response.json()["error"]["message"]
    assert "JSON" in message
    assert "messages" in message


async def test_api_key_is_enforced(client):
    async with serve_emulator(EmulatorConfig(api_key=KEY)) as base:
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": KEY}):
            response = await client.post(
                f"{base}/chat/completions",
                json={"model": MODEL, "messages": MESSAGES},
                headers=headers,
            )
            assert response.status_code == 401
            assert response.json()["error"]["code"] == "invalid_api_key"
            assert (await client.get(f"{base}/models", headers=headers)).status_code == 401
        good = {"authorization": f"Bearer {KEY}"}
        response = await client.post(
            f"{base}/chat/completions", json={"model": MODEL, "messages": MESSAGES}, headers=good
        )
        assert response.status_code == 200
        assert (await client.get(f"{base}/models", headers=good)).status_code == 200
        assert (await client.get(f"{root(base)}/health")).status_code == 200


async def test_models_and_health(client):
    models = ["alpha", "beta"]
    async with serve_emulator(EmulatorConfig(name="gpu", models=models)) as base:
        listing = (await client.get(f"{base}/models")).json()
        assert listing["object"] == "list"
        assert [m["id"] for m in listing["data"]] == models
        assert all(m["object"] == "model" and m["owned_by"] == "emulator" for m in listing["data"])
        assert all(isinstance(m["created"], int) for m in listing["data"])
        health = await client.get(f"{root(base)}/health")
        assert health.status_code == 200
        assert health.json() == {"status": "ok", "emulator": True, "name": "gpu", "models": models}
        response = await chat(client, base, model="beta")
        assert "[gpu emulator · beta]" in response.json()["choices"][0]["message"]["content"]
        assert (await chat(client, base)).status_code == 404  # MODEL is not served here


async def test_unknown_route_is_an_openai_error(client, url):
    response = await client.get(f"{url}/embeddings")
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "invalid_request_error"
    response = await client.get(f"{url}/chat/completions")
    assert response.status_code == 405
    assert "error" in response.json()


async def test_metrics_count_running_waiting_and_tokens(client):
    async with serve_emulator(EmulatorConfig(ttft_ms=300, max_concurrency=1)) as base:
        text = (await client.get(f"{root(base)}/metrics")).text
        for name in ("vllm:num_requests_running", "vllm:num_requests_waiting"):
            assert f"# TYPE {name} gauge" in text
            assert f"# HELP {name} " in text
        for name in (
            "vllm:prompt_tokens_total",
            "vllm:generation_tokens_total",
            "vllm:request_success_total",
        ):
            assert f"# TYPE {name} counter" in text
        assert 'vllm:num_requests_running{model_name="' in text

        calls = [
            asyncio.create_task(chat(client, base)),
            asyncio.create_task(chat(client, base, stream=True)),
            asyncio.create_task(chat(client, base)),
        ]
        seen: dict[str, float] = {}
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            seen = await metrics(client, base)
            if seen["vllm:num_requests_waiting"] == 2:
                break
            await asyncio.sleep(0.02)
        assert seen["vllm:num_requests_running"] == 1
        assert seen["vllm:num_requests_waiting"] == 2
        assert seen["vllm:request_success_total"] == 0

        responses = await asyncio.gather(*calls)
        assert [r.status_code for r in responses] == [200, 200, 200]
        done = await metrics(client, base)
        assert done["vllm:num_requests_running"] == 0
        assert done["vllm:num_requests_waiting"] == 0
        assert done["vllm:request_success_total"] == 3
        assert done["vllm:prompt_tokens_total"] == 3 * count_message_tokens(MESSAGES)
        completion = responses[0].json()["usage"]["completion_tokens"]
        assert done["vllm:generation_tokens_total"] == 3 * completion


async def test_unlimited_concurrency_runs_requests_together(client):
    async with serve_emulator(EmulatorConfig(ttft_ms=300)) as base:
        calls = [asyncio.create_task(chat(client, base)) for _ in range(2)]
        seen: dict[str, float] = {}
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            seen = await metrics(client, base)
            if seen["vllm:num_requests_running"] == 2:
                break
            await asyncio.sleep(0.02)
        assert seen["vllm:num_requests_running"] == 2
        assert seen["vllm:num_requests_waiting"] == 0
        await asyncio.gather(*calls)


async def test_time_per_output_token_slows_answers(client):
    async def timed(base: str, **body: Any) -> float:
        started = time.perf_counter()
        response = await chat(client, base, max_tokens=10, **body)
        assert response.status_code == 200
        if body.get("stream"):
            assert len(parse_events(response.text)) == 1 + 10 + 1 + 1
        else:
            assert response.json()["usage"]["completion_tokens"] == 10
        return time.perf_counter() - started

    async with serve_emulator(EmulatorConfig(tpot_ms=20)) as slow:
        assert await timed(slow) >= 0.15
        assert await timed(slow, stream=True) >= 0.15
    async with serve_emulator(EmulatorConfig(ttft_ms=200)) as first_token_late:
        assert await timed(first_token_late) >= 0.15


async def test_stopping_one_emulator_leaves_the_others_running(client):
    async with serve_emulator(EmulatorConfig(name="keeper")) as keeper:
        async with serve_emulator(EmulatorConfig(name="goner")) as goner:
            assert (await chat(client, goner)).status_code == 200
            assert (await chat(client, keeper)).status_code == 200
        with pytest.raises(httpx.ConnectError):
            async with httpx.AsyncClient() as fresh:
                await fresh.get(f"{root(goner)}/health")
        response = await chat(client, keeper)
        assert response.status_code == 200
        assert response.headers["x-emulator"] == "keeper"


def test_config_validates_ranges():
    for bad in (
        {"fail_rate": 1.5},
        {"fail_rate": -0.1},
        {"ttft_ms": -1},
        {"tpot_ms": -1},
        {"fail_status": 200},
        {"fail_status": 600},
        {"max_concurrency": -1},
    ):
        with pytest.raises(ValidationError):
            EmulatorConfig(**bad)
    assert len(EmulatorConfig().models) == 4


# --- the parts of the chat API real clients use -----------------------------------------

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer"},
                "ratio": {"type": "number"},
                "alerts": {"type": "boolean"},
                "options": {"type": "object"},
                "hours": {"type": "array", "items": {"type": "integer"}},
                "note": {"type": "string"},
            },
            "required": ["city", "unit", "days", "ratio", "alerts", "options", "hours"],
        },
    },
}
CLOCK = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}},
            "required": ["zone"],
        },
    },
}
QUESTION = "What is the weather in Lisbon right now?"


@pytest.fixture
async def sdk(url) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(base_url=url, api_key="unused", max_retries=0) as client:
        yield client


def check_weather_arguments(arguments: str) -> None:
    parsed = json.loads(arguments)
    assert set(parsed) == {"city", "unit", "days", "ratio", "alerts", "options", "hours"}
    assert parsed["unit"] == "celsius"
    assert parsed["days"] == 1
    assert parsed["ratio"] == 1
    assert parsed["alerts"] is True
    assert parsed["options"] == {}
    assert parsed["hours"] == []
    assert isinstance(parsed["city"], str)
    assert parsed["city"] in QUESTION.lower()


async def streamed_call(sdk: AsyncOpenAI, messages: list[Any]) -> tuple[str, str, str, str]:
    """Return (id, name, arguments, finish reason) reassembled from OpenAI's deltas."""
    stream = await sdk.chat.completions.create(
        model=MODEL, messages=messages, tools=[WEATHER, CLOCK], stream=True
    )
    call_id = name = arguments = finish = ""
    pieces = 0
    async for chunk in stream:
        assert chunk.system_fingerprint == "fp_emulator"
        choice = chunk.choices[0]
        for delta in choice.delta.tool_calls or []:
            assert delta.index == 0
            if delta.id:
                assert not call_id, "the id comes once, in the first delta"
                call_id, name = delta.id, delta.function.name
                assert delta.type == "function"
                assert delta.function.arguments == ""
            else:
                assert delta.function.name is None
                arguments += delta.function.arguments
                pieces += 1
        finish = choice.finish_reason or finish
    assert pieces > 3  # the arguments arrive in pieces, one per token
    return call_id, name, arguments, finish


@pytest.mark.parametrize("stream", [False, True])
async def test_tool_call_then_tool_result_then_final_answer(sdk, stream):
    messages: list[Any] = [{"role": "user", "content": QUESTION}]
    if stream:
        call_id, name, arguments, finish = await streamed_call(sdk, messages)
    else:
        first = await sdk.chat.completions.create(
            model=MODEL, messages=messages, tools=[WEATHER, CLOCK]
        )
        choice = first.choices[0]
        assert choice.message.content is None
        assert choice.message.refusal is None
        assert len(choice.message.tool_calls) == 1
        call = choice.message.tool_calls[0]
        assert call.type == "function"
        call_id, name, arguments = call.id, call.function.name, call.function.arguments
        finish = choice.finish_reason
        assert first.usage.completion_tokens == count_text_tokens(arguments)
    assert finish == "tool_calls"
    assert call_id.startswith("call_")
    assert len(call_id) > len("call_")
    assert name == "get_weather"  # no tool_choice: the first tool
    check_weather_arguments(arguments)

    messages.append(
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": name, "arguments": arguments},
                }
            ],
        }
    )
    messages.append({"role": "tool", "tool_call_id": call_id, "content": "18 C and sunny"})
    final = await sdk.chat.completions.create(
        model=MODEL, messages=messages, tools=[WEATHER, CLOCK]
    )
    choice = final.choices[0]
    assert choice.finish_reason == "stop"
    assert not choice.message.tool_calls
    assert "The tool returned: 18 C and sunny" in choice.message.content


async def test_tool_choice_picks_the_function_or_turns_calls_off(sdk):
    named = await sdk.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": QUESTION}],
        tools=[WEATHER, CLOCK],
        tool_choice={"type": "function", "function": {"name": "get_time"}},
    )
    call = named.choices[0].message.tool_calls[0]
    assert call.function.name == "get_time"
    assert json.loads(call.function.arguments) == {"zone": "UTC"}

    off = await sdk.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": QUESTION}],
        tools=[WEATHER, CLOCK],
        tool_choice="none",
    )
    assert off.choices[0].finish_reason == "stop"
    assert off.choices[0].message.tool_calls is None
    assert "emulator" in off.choices[0].message.content


async def test_streamed_tool_call_deltas_on_the_wire(client, url):
    messages = [{"role": "user", "content": QUESTION}]
    whole = (await chat(client, url, messages=messages, tools=[WEATHER])).json()
    arguments = whole["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]
    response = await chat(
        client,
        url,
        messages=messages,
        tools=[WEATHER],
        stream=True,
        stream_options={"include_usage": True},
    )
    events = parse_events(response.text)
    first, *pieces, last, usage_chunk, done = events
    assert done == "[DONE]"
    opening = first["choices"][0]["delta"]
    assert opening["tool_calls"] == [
        {
            "index": 0,
            "id": opening["tool_calls"][0]["id"],
            "type": "function",
            "function": {"name": "get_weather", "arguments": ""},
        }
    ]
    assert opening["tool_calls"][0]["id"].startswith("call_")
    for chunk in pieces:
        (delta,) = chunk["choices"][0]["delta"]["tool_calls"]
        assert set(delta) == {"index", "function"}
        assert set(delta["function"]) == {"arguments"}
    streamed = "".join(
        c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"] for c in pieces
    )
    assert streamed == arguments
    check_weather_arguments(streamed)
    assert last["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "tool_calls",
    }
    assert usage_chunk["usage"]["completion_tokens"] == len(pieces) == count_text_tokens(arguments)
    assert usage_chunk["usage"] == whole["usage"]


async def test_logprobs_with_top_logprobs(client, url):
    body = (await chat(client, url, logprobs=True, top_logprobs=3)).json()
    choice = body["choices"][0]
    content = choice["message"]["content"]
    entries = choice["logprobs"]["content"]
    assert len(entries) == body["usage"]["completion_tokens"]
    assert "".join(e["token"] for e in entries) == content
    assert b"".join(bytes(e["bytes"]) for e in entries) == content.encode()
    for entry in entries:
        assert set(entry) == {"token", "logprob", "bytes", "top_logprobs"}
        assert entry["logprob"] < 0
        tops = entry["top_logprobs"]
        assert len(tops) == 3
        assert tops[0] == {k: entry[k] for k in ("token", "logprob", "bytes")}
        assert len({t["token"] for t in tops}) == 3
        assert [t["logprob"] for t in tops] == sorted((t["logprob"] for t in tops), reverse=True)
        assert sum(math.exp(t["logprob"]) for t in tops) < 1
        assert all(bytes(t["bytes"]).decode() == t["token"] for t in tops)
    again = (await chat(client, url, logprobs=True, top_logprobs=3)).json()
    assert again["choices"][0]["logprobs"] == choice["logprobs"]  # deterministic

    bare = (await chat(client, url, logprobs=True)).json()["choices"][0]["logprobs"]["content"]
    assert [e["top_logprobs"] for e in bare] == [[] for _ in entries]
    assert [e["logprob"] for e in bare] == [e["logprob"] for e in entries]
    assert (await chat(client, url, logprobs=False)).json()["choices"][0]["logprobs"] is None


async def test_streamed_chunks_carry_the_logprobs_of_their_tokens(client, url):
    whole = (await chat(client, url, logprobs=True, top_logprobs=2)).json()
    expected = whole["choices"][0]["logprobs"]["content"]
    events = parse_events(
        (await chat(client, url, logprobs=True, top_logprobs=2, stream=True)).text
    )
    tokens = events[1:-2]
    assert len(tokens) == len(expected)
    for chunk, entry in zip(tokens, expected, strict=True):
        choice = chunk["choices"][0]
        assert choice["logprobs"]["content"] == [entry]
        assert choice["delta"]["content"] == entry["token"]


async def test_json_object_answer_parses(sdk):
    answer = await sdk.chat.completions.create(
        model=MODEL, messages=MESSAGES, response_format={"type": "json_object"}
    )
    parsed = json.loads(answer.choices[0].message.content)
    assert isinstance(parsed, dict)
    assert set(parsed) == {"answer"}
    assert "emulator" in parsed["answer"]


async def test_json_schema_answer_holds_the_required_keys(sdk):
    schema = {
        "type": "object",
        "properties": {
            "summary": {"type": "string"},
            "score": {"type": "number"},
            "level": {"type": "string", "enum": ["low", "high"]},
            "tags": {"type": "array", "items": {"type": "string"}},
            "extra": {"type": "string"},
        },
        "required": ["summary", "score", "level", "tags"],
        "additionalProperties": False,
    }
    answer = await sdk.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "verdict", "schema": schema, "strict": True},
        },
    )
    assert answer.choices[0].finish_reason == "stop"
    parsed = json.loads(answer.choices[0].message.content)
    assert set(parsed) == {"summary", "score", "level", "tags"}
    assert parsed["score"] == 1
    assert parsed["level"] == "low"
    assert parsed["tags"] == []
    assert isinstance(parsed["summary"], str)
    assert parsed["summary"] in MESSAGES[1]["content"].lower()


async def test_stop_cuts_the_text_before_the_first_stop_string(client, url):
    full = (await chat(client, url)).json()["choices"][0]["message"]["content"]
    assert "emulated reply" in full
    cut = full[: full.index("emulated")]
    for stop in ("emulated", ["not-in-the-text", " reply", "emulated"]):
        body = (await chat(client, url, stop=stop)).json()
        choice = body["choices"][0]
        assert choice["message"]["content"] == cut
        assert choice["finish_reason"] == "stop"
        assert body["usage"]["completion_tokens"] == count_text_tokens(cut)
        events = parse_events((await chat(client, url, stop=stop, stream=True)).text)
        assert "".join(e["choices"][0]["delta"].get("content") or "" for e in events[:-1]) == cut
    missing = (await chat(client, url, stop=["not-in-the-text"])).json()["choices"][0]
    assert missing["message"]["content"] == full
    short = (await chat(client, url, stop="emulated", max_tokens=2)).json()["choices"][0]
    assert short["finish_reason"] == "length"
    assert count_text_tokens(short["message"]["content"]) == 2


async def test_received_shows_the_fields_that_reached_the_emulator(client, url, sdk):
    cleared = await client.delete(f"{url}/_received")
    assert cleared.status_code == 200
    assert cleared.json() == {"data": []}
    await sdk.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": QUESTION}],
        tools=[WEATHER],
        stop=["\n\n"],
        seed=42,
        top_p=0.5,
        logprobs=True,
        top_logprobs=2,
        response_format={"type": "json_object"},
        metadata={"team": "search"},
    )
    await chat(client, url, model="no-such-model")  # refused requests are recorded too
    data = (await client.get(f"{url}/_received")).json()["data"]
    assert len(data) == 2
    sent, refused = data  # newest last
    assert sent["model"] == MODEL
    assert sent["tools"] == [WEATHER]
    assert sent["stop"] == ["\n\n"]
    assert sent["seed"] == 42
    assert sent["top_p"] == 0.5
    assert sent["logprobs"] is True
    assert sent["top_logprobs"] == 2
    assert sent["response_format"] == {"type": "json_object"}
    assert sent["metadata"] == {"team": "search"}
    assert "stream" not in sent
    assert "temperature" not in sent
    assert refused["model"] == "no-such-model"

    assert (await client.delete(f"{url}/_received")).status_code == 200
    assert (await client.get(f"{url}/_received")).json() == {"data": []}


async def test_received_keeps_the_last_256_bodies_and_needs_the_key(client):
    async with serve_emulator(EmulatorConfig(api_key=KEY)) as base:
        good = {"authorization": f"Bearer {KEY}"}
        for seed in range(260):
            response = await client.post(
                f"{base}/chat/completions",
                json={"model": MODEL, "messages": MESSAGES, "seed": seed},
                headers=good,
            )
            assert response.status_code == 200
        assert (await client.get(f"{base}/_received")).status_code == 401
        data = (await client.get(f"{base}/_received", headers=good)).json()["data"]
        assert [body["seed"] for body in data] == list(range(4, 260))


async def test_image_part_to_a_text_model_is_a_400_that_names_the_problem(client, sdk):
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    messages = [{"role": "user", "content": [{"type": "text", "text": "What is this?"}, image]}]
    with pytest.raises(openai.BadRequestError) as refused:
        await sdk.chat.completions.create(model=MODEL, messages=messages)
    assert refused.value.status_code == 400
    assert refused.value.body == {
        "message": f"model {MODEL} does not accept image input",
        "type": "invalid_request_error",
        "param": "messages",
        "code": None,
    }
    vision = await sdk.chat.completions.create(
        model="llama-4-scout-17b-16e-instruct", messages=messages
    )
    assert vision.choices[0].finish_reason == "stop"

    async with serve_emulator(EmulatorConfig(vision_models=[MODEL])) as base:
        before = await metrics(client, base)
        assert (await chat(client, base, messages=messages)).status_code == 200
        response = await chat(
            client, base, model="llama-4-scout-17b-16e-instruct", messages=messages
        )
        assert response.status_code == 400
        assert response.json()["error"]["message"] == (
            "model llama-4-scout-17b-16e-instruct does not accept image input"
        )
        after = await metrics(client, base)
        # The client's fault: only the answered request counts, and the server stays healthy.
        assert after["vllm:request_success_total"] == before["vllm:request_success_total"] + 1
        assert (await client.get(f"{root(base)}/health")).status_code == 200
