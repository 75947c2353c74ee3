"""POST /v1/batch/chat/completions over real HTTP, on emulated backends."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import TEST_KEY, Harness, StartGateway, budget_books

HELLO = [{"role": "user", "content": "Hello!"}]


def line(custom_id: str, **body: Any) -> dict[str, Any]:
    body.setdefault("messages", HELLO)
    body.setdefault("force_backend", "serverless")
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


async def peak_running(url: str) -> float:
    async with httpx.AsyncClient() as http:
        text = (await http.get(url.removesuffix("/v1") + "/metrics")).text
    (value,) = [
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "emulator_peak_requests_running"
    ]
    return value


async def test_a_batch_answers_every_line_under_its_concurrency_limit(
    harness: Harness, start_gateway: StartGateway
):
    # each answer takes a while, so the lines would all overlap without the limit
    serverless = await harness.start("serverless", api_key=TEST_KEY, ttft_ms=150)
    await harness.start("gpu")
    services = await harness.services(batch_concurrency=3, user_budgets={"bob": {"daily": 0.0}})
    gateway = await start_gateway(services)
    good = [line(f"ok-{i}", user="alice") for i in range(6)]
    lines = [
        *good[:3],
        line("bad-body", messages=[]),
        line("over-budget", user="bob"),
        line("streams", stream=True),
        {**line("elsewhere"), "url": "/v1/embeddings"},
        *good[3:],
    ]
    async with httpx.AsyncClient(timeout=60) as http:
        response = await http.post(f"{gateway.url}/batch/chat/completions", json=lines)
    assert response.status_code == 200
    outputs = response.json()
    assert [o["custom_id"] for o in outputs] == [item["custom_id"] for item in lines]
    by_id = {o["custom_id"]: o for o in outputs}

    answered = [by_id[item["custom_id"]] for item in good]
    for out in answered:
        assert out["error"] is None
        assert out["id"] == f"batch_req_{out['response']['request_id']}"
        assert out["response"]["status_code"] == 200
        body = out["response"]["body"]
        assert body["object"] == "chat.completion"
        assert body["id"] == f"chatcmpl-{out['response']['request_id']}"
        assert "emulator" in body["choices"][0]["message"]["content"]
        assert body["routing"]["backend"] == "serverless"

    bad = by_id["bad-body"]
    assert bad["response"]["status_code"] == 400
    assert bad["response"]["body"]["error"]["param"] == "messages"
    over = by_id["over-budget"]
    assert over["response"]["status_code"] == 402
    assert over["response"]["body"]["error"]["code"] == "budget_exceeded"
    for custom_id, code in (("streams", "stream_unsupported"), ("elsewhere", "invalid_url")):
        assert by_id[custom_id]["response"] is None
        assert by_id[custom_id]["error"]["code"] == code
    assert "stream" in by_id["streams"]["error"]["message"]

    # one ledger row per line that ran, each as its line's user; the refused one too
    rows = await gateway.rows()
    assert sorted(r.request_id for r in rows) == sorted(
        o["response"]["request_id"] for o in [*answered, over]
    )
    assert {(r.user, r.status) for r in rows} == {("alice", "ok"), ("bob", "refused")}
    books = await budget_books(services)
    assert "active" not in books["holds"]
    assert books["reserved"] == pytest.approx(0, abs=1e-12)
    assert books["committed"] > 0
    # the serverless emulator never generated more than the limit at once
    assert await peak_running(serverless) == 3


async def test_a_jsonl_batch_is_answered_in_jsonl(both_up: Harness, start_gateway: StartGateway):
    gateway = await start_gateway(await both_up.services())
    body = b"\n".join(
        [
            orjson.dumps(line("first", force_backend="gpu")),
            b'{"custom_id": "broken", ',
            b"",
            orjson.dumps(line("first", force_backend="gpu")),
        ]
    )
    async with httpx.AsyncClient(timeout=60) as http:
        response = await http.post(
            f"{gateway.url}/batch/chat/completions",
            content=body,
            headers={"content-type": "application/jsonl"},
        )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/jsonl")
    first, broken, again = [orjson.loads(x) for x in response.content.splitlines()]
    assert first["response"]["status_code"] == 200
    assert first["response"]["body"]["routing"]["backend"] == "gpu"
    assert broken["custom_id"] is None
    assert broken["error"]["code"] == "invalid_json"
    assert "line 2" in broken["error"]["message"]
    assert again["error"]["code"] == "duplicate_custom_id"
    assert len(await gateway.rows()) == 1


async def test_a_batch_over_the_line_limit_or_not_a_list_is_refused(
    both_up: Harness, start_gateway: StartGateway
):
    gateway = await start_gateway(await both_up.services(batch_max_lines=2))
    url = f"{gateway.url}/batch/chat/completions"
    async with httpx.AsyncClient(timeout=60) as http:
        too_many = await http.post(url, json=[line(str(i)) for i in range(3)])
        empty = await http.post(url, json=[])
        not_array = await http.post(url, content=b"[{")
        wrong_method = await http.get(url)
    assert too_many.status_code == 400
    error = too_many.json()["error"]
    assert error["code"] == "batch_too_large"
    assert "BATCH_MAX_LINES" in error["message"]
    assert empty.status_code == 400
    assert not_array.status_code == 400
    assert not_array.json()["error"]["code"] == "invalid_json"
    assert wrong_method.status_code == 405
    assert await gateway.rows() == []


async def test_each_line_runs_as_the_api_keys_user_and_team(
    both_up: Harness, start_gateway: StartGateway
):
    key = "sk-router-carol-5e0c1d2b3a4f6789"
    gateway = await start_gateway(await both_up.services(router_api_keys=f"{key}:carol:ml"))
    url = f"{gateway.url}/batch/chat/completions"
    lines = [line("a", user="mallory", team="other"), line("b", force_backend="gpu")]
    async with httpx.AsyncClient(timeout=60) as http:
        refused = await http.post(url, json=lines)
        answered = await http.post(url, json=lines, headers={"authorization": f"Bearer {key}"})
    assert refused.status_code == 401
    assert [o["response"]["status_code"] for o in answered.json()] == [200, 200]
    assert key not in answered.text
    rows = await gateway.rows()
    assert [(r.user, r.team) for r in rows] == [("carol", "ml")] * 2
