"""The OpenAI chat API passes through the gateway whole: tools, formats, logprobs, client errors.

Real clients (the ``openai`` SDK and LangChain's ``ChatOpenAI``) talk to the
gateway over real HTTP; the emulators behind it answer tool calls and record
every body they receive, so a test can see which fields reached the backend.
"""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_core.tools import tool

from tests.conftest import Gateway, Harness, received

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
            "required": ["city", "unit"],
        },
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


async def test_a_tool_call_round_trip_works_with_the_openai_sdk(gateway: Gateway):
    first = await gateway.client.chat.completions.create(
        model="auto", messages=ASK, tools=[WEATHER_TOOL], tool_choice="auto"
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls or []
    assert call.function.name == "get_weather"
    arguments = json.loads(call.function.arguments)
    assert arguments["unit"] == "c"
    assert isinstance(arguments["city"], str)
    conversation = [
        *ASK,
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "21 degrees and sunny"},
    ]
    final = await gateway.client.chat.completions.create(
        model="auto", messages=conversation, tools=[WEATHER_TOOL]
    )
    assert final.choices[0].finish_reason == "stop"
    assert "21 degrees and sunny" in (final.choices[0].message.content or "")
    rows = await gateway.rows()
    assert len(rows) == 2
    assert all(r.status == "ok" for r in rows)


async def test_tool_calls_stream_as_tool_call_deltas(gateway: Gateway):
    stream = await gateway.client.chat.completions.create(
        model="auto", messages=ASK, tools=[WEATHER_TOOL], stream=True
    )
    pieces: list[str] = []
    names, ids, finish = [], [], None
    async for chunk in stream:
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or []:
                if delta.id:
                    ids.append(delta.id)
                if delta.function and delta.function.name:
                    names.append(delta.function.name)
                if delta.function and delta.function.arguments:
                    pieces.append(delta.function.arguments)
            finish = choice.finish_reason or finish
    assert names == ["get_weather"]
    assert len(ids) == 1
    assert len(pieces) > 1  # the arguments arrived in pieces, as the backend sent them
    assert json.loads("".join(pieces))["unit"] == "c"
    assert finish == "tool_calls"


@pytest.mark.parametrize("streaming", [False, True])
async def test_langchain_bind_tools_agent_loop_through_the_gateway(
    gateway: Gateway, streaming: bool
):
    @tool
    def get_weather(city: str, unit: str) -> str:
        """Current weather in a city."""
        return f"18 {unit} and cloudy in {city}"

    model = gateway.chat(streaming=streaming).bind_tools([get_weather])
    messages: list[Any] = [HumanMessage("What is the weather in Paris?")]
    answer = await model.ainvoke(messages)
    (call,) = answer.tool_calls
    assert call["name"] == "get_weather"
    messages += [answer, ToolMessage(get_weather.invoke(call["args"]), tool_call_id=call["id"])]
    final = await model.ainvoke(messages)
    assert "cloudy" in str(final.content)
    assert not final.tool_calls


async def test_standard_fields_reach_the_backend_and_logprobs_come_back(
    both_up: Harness, gateway: Gateway
):
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "string"}, "confidence": {"type": "number"}},
        "required": ["answer", "confidence"],
    }
    fields: dict[str, Any] = {
        "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}},
        "stop": ["\n\n"],
        "seed": 7,
        "top_p": 0.9,
        "presence_penalty": 0.1,
        "frequency_penalty": 0.2,
        "logit_bias": {"50256": -100},
        "logprobs": True,
        "top_logprobs": 2,
        "metadata": {"trace": "t1"},
        "parallel_tool_calls": False,
        "tools": [WEATHER_TOOL],
        "tool_choice": "none",
    }
    completion = await gateway.client.chat.completions.create(
        model="auto", messages=ASK, extra_body={"force_backend": "gpu"}, **fields
    )
    body = (await received(both_up.gpu_url))[-1]
    for name, value in fields.items():
        assert body[name] == value, name
    choice = completion.choices[0]
    assert json.loads(choice.message.content or "")["confidence"] == 1
    assert choice.logprobs is not None
    assert choice.logprobs.content
    assert len(choice.logprobs.content[0].top_logprobs) == 2
    assert completion.system_fingerprint == "fp_emulator"
    # the router's own fields are not sent on
    assert "force_backend" not in body
    assert body["model"] == completion.model


async def test_streamed_logprobs_and_fingerprint_come_back(gateway: Gateway):
    stream = await gateway.client.chat.completions.create(
        model="auto", messages=ASK, stream=True, logprobs=True, top_logprobs=1
    )
    entries, fingerprints = [], set()
    async for chunk in stream:
        fingerprints.add(chunk.system_fingerprint)
        for choice in chunk.choices:
            if choice.logprobs and choice.logprobs.content:
                entries.extend(choice.logprobs.content)
    assert len(entries) > 3
    assert fingerprints == {"fp_emulator"}


async def test_a_field_no_backend_can_honour_is_refused_naming_it(gateway: Gateway):
    with pytest.raises(openai.BadRequestError) as caught:
        await gateway.client.chat.completions.create(
            model="auto", messages=ASK, extra_body={"audio": {"voice": "alloy", "format": "wav"}}
        )
    error = caught.value.body
    assert isinstance(error, dict)
    assert error["param"] == "audio"
    assert "audio" in error["message"]
    assert await gateway.rows() == []


async def test_model_selection_picks_a_model_that_offers_what_the_request_uses(gateway: Gateway):
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    messages = [{"role": "user", "content": [{"type": "text", "text": "What is this?"}, image]}]
    completion = await gateway.client.chat.completions.create(model="auto", messages=messages)
    # only the llama-4 models accept images, and only serverless serves them
    assert completion.model.startswith("llama-4")
    with pytest.raises(openai.BadRequestError) as caught:
        await gateway.client.chat.completions.create(
            model="llama3.1-8b-instruct", messages=messages
        )
    assert caught.value.body["param"] == "messages"  # type: ignore[index]
    assert "image input" in caught.value.body["message"]  # type: ignore[index]


async def test_a_backend_client_error_is_returned_as_is_without_fallback(
    both_up: Harness, gateway: Gateway
):
    # the emulator refuses a tool_choice naming a function that is not among the tools
    bad_choice = {"type": "function", "function": {"name": "not_a_tool"}}
    with pytest.raises(openai.BadRequestError) as caught:
        await gateway.client.chat.completions.create(
            model="auto", messages=ASK, tools=[WEATHER_TOOL], tool_choice=bad_choice
        )
    assert caught.value.status_code == 400
    assert "not_a_tool" in caught.value.message
    (row,) = await gateway.rows()
    assert row.status == "failed"
    assert row.fallbacks == 0
    assert row.error
    assert row.error.startswith(f"gpu ({both_up.gpu_url}): HTTP 400")
    # the serverless emulator never saw it: no fallback
    assert await received(both_up.serverless_url) == []
    # the endpoint is still healthy and takes the next request
    services = gateway.services
    assert services is not None
    (endpoint,) = services.gpu_pool.endpoints
    assert endpoint.failures == 0
    assert endpoint.cooling_until == 0.0
    for _ in range(3):
        with pytest.raises(openai.BadRequestError):
            await gateway.client.chat.completions.create(
                model="auto", messages=ASK, tools=[WEATHER_TOOL], tool_choice=bad_choice
            )
    ok = await gateway.client.chat.completions.create(model="auto", messages=ASK)
    assert ok.model == "llama3.1-8b-instruct"
    (answered,) = [r for r in await gateway.rows() if r.status == "ok"]
    assert answered.backend == "gpu"
    assert endpoint.failures == 0
    assert endpoint.cooling_until == 0.0
