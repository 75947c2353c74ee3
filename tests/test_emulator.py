"""The OpenAI-compatible emulator, over real HTTP."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from pydantic import ValidationError

from backends.emulator import EmulatorConfig, serve_emulator
from backends.tokens import count_message_tokens, count_text_tokens

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
    assert body["system_fingerprint"] == "emulator"
    choice = body["choices"][0]
    content = choice["message"]["content"]
    assert choice["message"]["role"] == "assistant"
    assert "emulator" in content and MODEL in content
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
    assert full.startswith(content) and len(content) < len(full)


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
    assert "gpt-4o" in error["message"] and MODEL in error["message"]


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
    assert "JSON" in message and "messages" in message


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
            assert f"# TYPE {name} gauge" in text and f"# HELP {name} " in text
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
