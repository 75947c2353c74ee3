"""The gateway's HTTP edges over real HTTP: the body limit, 404/405 and models.retrieve.

The gateway runs in this event loop (uvicorn on a free port, ``start_gateway``
of ``tests/conftest.py``) on services wired to the two emulators; the
clients are the ``openai`` SDK, ``httpx`` and, where a request must stop half
way (headers without their body), a plain TCP connection speaking HTTP/1.1.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import openai
import orjson
import pytest
from pydantic import ValidationError

from tests.conftest import Gateway, Harness, StartGateway, make_settings

HELLO = [{"role": "user", "content": "Hello!"}]
LIMIT = 2048
SERVED = "POST /v1/chat/completions, GET /v1/models and GET /v1/models/{id}"


@pytest.fixture
async def limited(both_up: Harness, start_gateway: StartGateway) -> Gateway:
    """A gateway whose MAX_REQUEST_BYTES is LIMIT."""
    return await start_gateway(await both_up.services(max_request_bytes=LIMIT))


def chat_body(size: int) -> bytes:
    """A valid chat request of exactly ``size`` bytes (padded with JSON whitespace)."""
    body = orjson.dumps({"model": "auto", "messages": HELLO})
    assert len(body) <= size
    return body[:-1] + b" " * (size - len(body)) + b"}"


def assert_too_large(response: httpx.Response | RawResponse, limit: int) -> None:
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/json"
    assert response.headers["connection"] == "close"
    error = orjson.loads(response.content)["error"]
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "request_too_large"
    assert error["param"] is None
    assert error["message"].startswith(
        f"the request body is over the {limit}-byte limit (MAX_REQUEST_BYTES); "
        "send a smaller request"
    )


class RawResponse:
    """A response read off a plain TCP connection."""

    def __init__(self, status_code: int, headers: dict[str, str], content: bytes) -> None:
        self.status_code = status_code
        self.headers = headers
        self.content = content


async def raw_request(url: str, head: str, *parts: bytes) -> tuple[RawResponse, bytes]:
    """Send ``head`` and ``parts`` on a new connection; read the answer.

    Returns the response and what the server sent after it (b"" when it closed
    the connection). Nothing else is sent: a server that waits for more of the
    body never answers, and the test fails on the timeout.
    """
    where = urlsplit(url)
    assert where.hostname is not None
    assert where.port is not None
    reader, writer = await asyncio.open_connection(where.hostname, where.port)
    try:
        writer.write(head.encode() + b"".join(parts))
        await writer.drain()

        async def read() -> tuple[RawResponse, bytes]:
            status = int((await reader.readline()).split()[1])
            headers: dict[str, str] = {}
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode().partition(":")
                headers[name.strip().lower()] = value.strip()
            content = await reader.readexactly(int(headers["content-length"]))
            return RawResponse(status, headers, content), await reader.read()

        return await asyncio.wait_for(read(), timeout=30)
    finally:
        writer.close()


def request_head(url: str, path: str, **headers: str) -> str:
    where = urlsplit(url)
    lines = [f"POST {path} HTTP/1.1", f"Host: {where.netloc}", "Content-Type: application/json"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return "\r\n".join(lines) + "\r\n\r\n"


# --- the body limit ----------------------------------------------------------------------


async def test_a_declared_length_over_the_limit_is_413_before_any_body_is_sent(
    limited: Gateway, tmp_path: Path
):
    # Only the headers go out: the answer comes without the server reading a body.
    response, after = await raw_request(
        limited.url,
        request_head(limited.url, "/v1/chat/completions", Content_Length=str(LIMIT + 1)),
    )
    assert_too_large(response, LIMIT)
    assert after == b""  # and the connection is closed: no upload to take in

    async with httpx.AsyncClient() as http:
        over = await http.post(f"{limited.url}/chat/completions", content=chat_body(LIMIT + 1))
        at_limit = await http.post(f"{limited.url}/chat/completions", content=chat_body(LIMIT))
    assert over.request.headers["content-length"] == str(LIMIT + 1)
    assert_too_large(over, LIMIT)
    assert at_limit.status_code == 200, at_limit.text  # the limit itself is allowed
    assert "emulator" in at_limit.json()["choices"][0]["message"]["content"]

    assert make_settings(tmp_path).max_request_bytes == 4 * 1024 * 1024
    for wrong in (0, -1):
        with pytest.raises(ValidationError, match="max_request_bytes"):
            make_settings(tmp_path, max_request_bytes=wrong)


async def test_a_chunked_body_over_the_limit_is_413_while_a_small_request_is_answered(
    limited: Gateway,
):
    events: list[str] = []
    first_sent = asyncio.Event()
    small_answered = asyncio.Event()

    async def upload() -> Any:
        yield b'{"model": "auto", "messages": [{"role": "user", "content": "'
        events.append("big: first chunk sent")
        first_sent.set()  # httpx asks for more once the first chunk is written
        await small_answered.wait()
        yield b"x" * (4 * LIMIT)
        events.append("big: the rest sent")
        yield b'"}]}'

    async with httpx.AsyncClient(timeout=30) as http:
        big = asyncio.create_task(
            http.post(
                f"{limited.url}/chat/completions",
                content=upload(),
                headers={"content-type": "application/json"},
            )
        )
        await first_sent.wait()
        small = await limited.client.chat.completions.with_raw_response.create(
            model="auto", messages=HELLO
        )
        assert small.status_code == 200
        events.append("small: 200" + (" (big in flight)" if not big.done() else ""))
        small_answered.set()
        response = await big
        events.append(f"big: {response.status_code}")

    assert events == [
        "big: first chunk sent",
        "small: 200 (big in flight)",
        "big: the rest sent",
        "big: 413",
    ]
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert "content-length" not in response.request.headers
    assert_too_large(response, LIMIT)
    # and the server goes on answering
    again = await limited.client.chat.completions.create(model="auto", messages=HELLO)
    assert "emulator" in again.choices[0].message.content


async def test_a_chunked_body_is_refused_as_soon_as_it_passes_the_limit(limited: Gateway):
    # One chunk past the limit and no end of the body: the answer does not wait for it.
    over = b"x" * (LIMIT + 1)
    response, after = await raw_request(
        limited.url,
        request_head(limited.url, "/v1/chat/completions", Transfer_Encoding="chunked"),
        b"%x\r\n%s\r\n" % (len(over), over),
    )
    assert_too_large(response, LIMIT)
    assert after == b""  # the connection is closed: the rest of the upload is not taken in

    # a chunked body within the limit goes through
    async def small() -> Any:
        yield orjson.dumps({"model": "auto", "messages": HELLO})

    async with httpx.AsyncClient() as http:
        answer = await http.post(f"{limited.url}/chat/completions", content=small())
    assert answer.request.headers["transfer-encoding"] == "chunked"
    assert answer.status_code == 200, answer.text


# --- routes and methods the gateway does not serve ---------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/completions"),
        ("POST", "/v1/embeddings"),
        ("POST", "/v1/responses"),
        ("GET", "/v1/models/x/y"),
        ("GET", "/v1"),
    ],
)
async def test_unknown_v1_routes_are_404_openai_errors(limited: Gateway, method: str, path: str):
    root = limited.url.removesuffix("/v1")
    async with httpx.AsyncClient() as http:
        response = await http.request(method, f"{root}{path}", json={"model": "auto"})
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-request-id"]
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "not_found"
    assert error["param"] is None
    assert path in error["message"]
    assert SERVED in error["message"]


async def test_the_sdk_sees_unknown_routes_as_not_found(limited: Gateway):
    with pytest.raises(openai.NotFoundError) as caught:
        await limited.client.embeddings.create(model="auto", input="Hello!")
    assert caught.value.body["code"] == "not_found"
    with pytest.raises(openai.NotFoundError) as caught:
        await limited.client.completions.create(model="auto", prompt="Hello!")
    assert caught.value.body["code"] == "not_found"
    # outside /v1 the app adds no catch-all: beside the LangGraph server, its routes own those
    async with httpx.AsyncClient() as http:
        outside = await http.get(limited.url.removesuffix("/v1") + "/no-such-page")
    assert outside.status_code == 404
    assert "error" not in outside.text


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("GET", "/chat/completions", "POST"),
        ("PUT", "/chat/completions", "POST"),
        ("POST", "/models", "GET, HEAD"),
        ("DELETE", "/models/auto", "GET, HEAD"),
    ],
)
async def test_a_wrong_method_is_405_with_allow(limited: Gateway, method, path, allow):
    async with httpx.AsyncClient() as http:
        response = await http.request(method, f"{limited.url}{path}")
    assert response.status_code == 405
    assert response.headers["allow"] == allow
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "method_not_allowed"
    assert error["param"] is None
    assert method in error["message"]
    assert f"/v1{path}" in error["message"]


# --- GET /v1/models/{id} ------------------------------------------------------------------


async def test_models_retrieve_returns_the_listed_object(limited: Gateway):
    listed = {m.id: m.model_dump() for m in (await limited.client.models.list()).data}
    model = await limited.client.models.retrieve("llama3.1-8b-instruct")
    assert model.id == "llama3.1-8b-instruct"
    assert model.object == "model"
    assert model.model_dump() == listed["llama3.1-8b-instruct"]
    assert model.context_window > 0
    assert "serverless" in model.backends
    for model_id in listed:  # every model, and auto
        assert (await limited.client.models.retrieve(model_id)).model_dump() == listed[model_id]


async def test_models_retrieve_of_an_unknown_model_is_not_found(limited: Gateway):
    with pytest.raises(openai.NotFoundError) as caught:
        await limited.client.models.retrieve("gpt-99")
    assert caught.value.status_code == 404
    error = caught.value.body
    assert error["code"] == "model_not_found"
    assert error["type"] == "invalid_request_error"
    assert "'gpt-99'" in error["message"]
    assert "GET /v1/models" in error["message"]
    assert caught.value.response.headers["x-request-id"]


# --- beside the graph API, in ``langgraph dev`` ------------------------------------------


async def test_langgraph_dev_serves_the_edges_and_keeps_its_own_errors(langgraph_dev: str):
    # the default limit, read off the event loop (the dev server refuses blocking calls)
    response, _ = await raw_request(
        langgraph_dev,
        request_head(langgraph_dev, "/v1/chat/completions", Content_Length=str(4194305)),
    )
    assert_too_large(response, 4194304)
    async with openai.AsyncOpenAI(
        base_url=f"{langgraph_dev}/v1", api_key="x", max_retries=0, timeout=60
    ) as client:
        assert (await client.models.retrieve("auto")).id == "auto"
        with pytest.raises(openai.NotFoundError) as caught:
            await client.models.retrieve("gpt-99")
        assert caught.value.body["code"] == "model_not_found"
        with pytest.raises(openai.NotFoundError) as caught:
            await client.embeddings.create(model="auto", input="Hello!")
        assert caught.value.body["code"] == "not_found"
    async with httpx.AsyncClient(base_url=langgraph_dev) as http:
        wrong = await http.get("/v1/chat/completions")
        assert wrong.status_code == 405
        assert wrong.json()["error"]["code"] == "method_not_allowed"
        # the LangGraph server's own 404 keeps its own shape
        thread = await http.get("/threads/00000000-0000-0000-0000-000000000000")
        assert thread.status_code == 404
        assert "detail" in thread.json()
        assert (await http.get("/ok")).status_code == 200
