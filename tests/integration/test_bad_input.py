"""Bad input on every route, property-based: always a 4xx that says what is wrong, never a 5xx.

``hybrid-router serve`` runs as a process on its built-in emulators, and
hypothesis sends it what clients get wrong: bodies that are not JSON, JSON that
is not an object, missing or empty ``messages``, messages that are not objects
or have unknown roles or contents of the wrong shape, megabytes of content,
unknown models, absurd ``max_tokens``, ``temperature``, ``n``, ``stream``,
``cost_priority`` and ``force_backend``, odd Unicode (lone surrogates, control
characters, right-to-left marks), deeply nested JSON. Every chat answer must be
a 4xx OpenAI error object whose message names the problem; the other routes
(batch, models, budgets, usage, the graph API) must never answer 5xx either.
After all of it the server still serves.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import free_port, server_env, server_process

BIN = Path(sys.executable).parent / "hybrid-router"
MAX_REQUEST_BYTES = 2 * 1024 * 1024
ADMIN_KEY = "sk-router-root-5e5e5e5e5e5e5e5e"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
GOOD_MESSAGES = [{"role": "user", "content": "Hello!"}]
ROLES = {"system", "developer", "user", "assistant", "tool", "function"}
# BAD_INPUT_EXAMPLES=2000 BAD_INPUT_SEED=random hunts longer and wider than the suite does
EXAMPLES = int(os.environ.get("BAD_INPUT_EXAMPLES", "100"))
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize=os.environ.get("BAD_INPUT_SEED") != "random",
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    tmp = tmp_path_factory.mktemp("bad-input")
    port = free_port()
    # as an admin: the reports' and budgets' own checks answer, not the key check
    env = server_env(
        tmp / "ledger.db",
        MAX_REQUEST_BYTES=str(MAX_REQUEST_BYTES),
        ROUTER_API_KEYS=f"{ADMIN_KEY}:root",
        ROUTER_ADMIN_USERS="root",
    )
    command = [str(BIN), "serve", "--port", str(port), "--workers", "1"]
    with (
        server_process(command, env, port, tmp / "server.log", cwd=tmp) as server,
        httpx.Client(base_url=server.url, timeout=60, headers=ADMIN) as http,
    ):
        yield http
        assert http.get("/ok").status_code == 200  # still serving after all of it
        answered = http.post("/v1/chat/completions", json={"messages": GOOD_MESSAGES})
        assert answered.status_code == 200


# -- what clients get wrong ------------------------------------------------------------

odd_text = st.text(
    alphabet=st.characters(codec="utf-8", categories=["L", "M", "N", "P", "S", "Z", "C"]),
    max_size=40,
) | st.sampled_from(["\u202e", "\x00", "\ufeff", "\U0010ffff", "e\u0301", "\u200b" * 30])
ints = st.integers(min_value=-(2**63), max_value=2**64 - 1)  # what JSON encoders carry
json_scalars = (
    st.none() | st.booleans() | ints | st.floats(allow_nan=False, allow_infinity=False) | odd_text
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(odd_text, inner, max_size=4),
    max_leaves=12,
)
not_a_positive_int = (
    st.integers(min_value=-(2**63), max_value=0)
    | st.floats(allow_nan=False, allow_infinity=False)
    | odd_text
    | st.booleans()
    | st.lists(ints, max_size=2)
)


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@st.composite
def bad_chat(draw: st.DrawFn) -> tuple[bytes, str]:
    """Return a chat body that is wrong in one way, and a word its error must name."""
    kind = draw(
        st.sampled_from(
            [
                "not_json",
                "not_object",
                "no_messages",
                "messages_type",
                "message_item",
                "role",
                "content",
                "model",
                "max_tokens",
                "temperature",
                "n",
                "stream",
                "cost_priority",
                "force_backend",
                "user",
                "deep",
                "surrogate",
                "huge",
            ]
        )
    )
    body: dict[str, Any] = {"model": "auto", "messages": GOOD_MESSAGES}
    if kind == "not_json":
        raw = draw(st.binary(max_size=200) | odd_text.map(str.encode))
        try:
            if isinstance(orjson.loads(raw), dict):
                raw = b"{" + raw
        except orjson.JSONDecodeError:
            pass
        return raw, "json"
    if kind == "not_object":
        value = draw(json_values.filter(lambda v: not isinstance(v, dict)))
        return orjson.dumps(value), "object"
    if kind == "no_messages":
        body = draw(st.dictionaries(odd_text.filter(lambda k: k != "messages"), json_values))
        return orjson.dumps(body), "messages"
    if kind == "messages_type":
        body["messages"] = draw(
            json_values.filter(lambda v: not isinstance(v, list) or not v) | st.just([])
        )
        return orjson.dumps(body), "messages"
    if kind == "message_item":
        body["messages"] = [draw(json_values.filter(lambda v: not isinstance(v, dict)))]
        return orjson.dumps(body), "messages"
    if kind == "role":
        role = draw(json_values.filter(lambda v: not isinstance(v, str) or v not in ROLES))
        body["messages"] = [{"role": role, "content": "Hello!"}]
        return orjson.dumps(body), "role"
    if kind == "content":
        content = draw(
            ints
            | st.floats(allow_nan=False, allow_infinity=False)
            | st.booleans()
            | st.dictionaries(odd_text, json_values, max_size=3)
            | st.lists(json_scalars.filter(lambda v: not isinstance(v, str)), min_size=1)
        )
        body["messages"] = [{"role": "user", "content": content}]
        return orjson.dumps(body), "content"
    if kind == "model":
        body["model"] = draw(
            odd_text.filter(lambda m: m.strip() and m != "auto") | ints | st.booleans()
        )
        return orjson.dumps(body), "model"
    if kind in ("max_tokens", "n"):
        value = draw(
            not_a_positive_int | st.integers(min_value=10**7, max_value=10**30).map(str)
            if kind == "max_tokens"
            else not_a_positive_int | st.integers(min_value=2, max_value=2**63)
        )
        if kind == "max_tokens" and draw(st.booleans()):
            value = draw(st.integers(min_value=10**7, max_value=2**63))  # absurdly many
        body[kind] = value
        return orjson.dumps(body), kind.replace("_", "")
    if kind == "temperature":
        if draw(st.booleans()):  # past what a double holds
            return orjson.dumps(body)[:-1] + b',"temperature":1e999}', "json"
        body["temperature"] = draw(
            st.floats(max_value=-0.001, allow_nan=False, allow_infinity=False)
            | st.floats(min_value=2.001, allow_nan=False, allow_infinity=False)
            | odd_text
            | st.lists(ints, max_size=2)
        )
        return orjson.dumps(body), "temperature"
    if kind == "stream":
        body["stream"] = draw(json_values.filter(lambda v: not isinstance(v, bool | None)))
        return orjson.dumps(body), "stream"
    if kind in ("cost_priority", "force_backend"):
        allowed = (
            ["low_cost", "balanced", "performance", "latency_critical"]
            if kind == "cost_priority"
            else ["serverless", "gpu"]
        )
        body[kind] = draw(json_values.filter(lambda v: v is not None and v not in allowed))
        return orjson.dumps(body), kind.replace("_", "")
    if kind == "user":
        body["user"] = draw(ints | st.lists(ints, min_size=1) | st.text(min_size=129))
        return orjson.dumps(body), "user"
    if kind == "deep":
        depth = draw(st.integers(min_value=100, max_value=5000))
        raw = (
            b'{"model": "auto", "messages": [{"role": "user", "content": ' + nested(depth) + b"}]}"
        )
        return raw, "content" if depth < 1024 else "json"
    if kind == "surrogate":
        where = draw(st.sampled_from(["content", "role", "model"]))
        if where == "content":
            return b'{"messages": [{"role": "user", "content": "a\\ud800b"}]}', "json"
        if where == "role":
            return b'{"messages": [{"role": "us\\udfffer", "content": "hi"}]}', "json"
        return b'{"model": "\\udbff", "messages": [{"role": "user", "content": "hi"}]}', "json"
    # megabytes of content: past the body limit (413), or under it but past every
    # model's context window (400)
    size = draw(st.sampled_from([MAX_REQUEST_BYTES + 1, MAX_REQUEST_BYTES - 1024]))
    filler = draw(st.sampled_from(["a ", "日本 ", "\u202e!", "😀"]))
    content = (filler * (size // len(filler.encode())))[: size // 4 if "😀" in filler else size]
    raw = orjson.dumps({"model": "auto", "messages": [{"role": "user", "content": content}]})
    return raw, "request" if len(raw) > MAX_REQUEST_BYTES else "context"


def assert_a_clear_4xx(response: httpx.Response, names: str) -> None:
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:500])
    error = response.json()["error"]
    assert isinstance(error["message"], str)
    assert len(error["message"]) > 20
    said = f"{error['message']} {error.get('param') or ''} {error.get('code') or ''}"
    assert names in said.lower().replace("_", ""), (names, error)


# -- the routes -----------------------------------------------------------------------


@SETTINGS
@given(case=bad_chat())
def test_a_bad_chat_body_is_a_4xx_that_names_the_problem(served: httpx.Client, case):
    raw, names = case
    response = served.post(
        "/v1/chat/completions", content=raw, headers={"content-type": "application/json"}
    )
    assert_a_clear_4xx(response, names)


@SETTINGS
@given(case=bad_chat())
def test_a_bad_streamed_chat_body_is_a_4xx_before_any_event(served: httpx.Client, case):
    raw, names = case
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = None
    if isinstance(body, dict) and "stream" not in body and len(raw) < MAX_REQUEST_BYTES // 2:
        with contextlib.suppress(TypeError):  # orjson writes at most 254 levels of nesting
            raw = orjson.dumps({**body, "stream": True})
    response = served.post(
        "/v1/chat/completions", content=raw, headers={"content-type": "application/json"}
    )
    assert_a_clear_4xx(response, names)


def assert_no_5xx(response: httpx.Response) -> None:
    assert response.status_code < 500, (response.request.url, response.text[:500])
    if response.status_code >= 400 and response.headers.get("content-type", "").startswith(
        "application/json"
    ):
        payload = response.json()
        message = payload["error"]["message"] if "error" in payload else payload.get("detail")
        assert message, payload


@SETTINGS
@given(lines=st.lists(json_values, min_size=1, max_size=5), raw=st.binary(max_size=100))
def test_bad_batches_are_never_a_5xx(served: httpx.Client, lines, raw):
    assert_no_5xx(served.post("/v1/batch/chat/completions", content=orjson.dumps(lines)))
    assert_no_5xx(served.post("/v1/batch/chat/completions", content=raw))
    jsonl = b"\n".join(orjson.dumps(line) for line in lines)
    assert_no_5xx(served.post("/v1/batch/chat/completions", content=jsonl))


path_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=["C"], exclude_characters="/?#%"),
    min_size=1,
    max_size=40,
).filter(lambda s: s.strip() not in ("", ".", ".."))


@SETTINGS
@given(
    scope=path_text,
    key=path_text,
    body=json_values,
    query=st.dictionaries(
        st.sampled_from(["days", "group_by", "user", "team", "limit"]), odd_text, max_size=3
    ),
)
def test_bad_budget_usage_and_model_requests_are_never_a_5xx(
    served: httpx.Client, scope, key, body, query
):
    assert_no_5xx(served.put(f"/budget/{scope}/{key}", content=orjson.dumps(body)))
    assert_no_5xx(served.put(f"/budget/user/{key}", content=orjson.dumps(body)))
    assert_no_5xx(served.get("/usage", params=query))
    assert_no_5xx(served.get("/stats", params=query))
    assert_no_5xx(served.get("/budget", params=query))
    assert_no_5xx(served.get(f"/v1/models/{key}"))


@SETTINGS
@given(body=json_values, stream=st.booleans())
def test_bad_graph_api_runs_are_never_a_5xx(served: httpx.Client, body, stream):
    path = "/runs/stream" if stream else "/runs/wait"
    assert_no_5xx(served.post(path, content=orjson.dumps(body)))
    run = {"assistant_id": "router", "input": body}
    assert_no_5xx(served.post(path, content=orjson.dumps(run)))
