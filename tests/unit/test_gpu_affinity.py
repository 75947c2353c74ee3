"""The prefix key of a conversation and the pool's choice by affinity (no network)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from backends.gpu_pool import GpuPool
from backends.gpu_pool.affinity import AffinityMap, affinity_keys, conversation_key, prefix_key

MODEL = "llama3.1-8b-instruct"
SYSTEM = {"role": "system", "content": "Be brief."}
TURN_1 = {"role": "user", "content": "Hello!"}
ANSWER_1 = {"role": "assistant", "content": "Hi, how can I help?"}
TURN_2 = {"role": "user", "content": "Tell me more."}
CALL = {
    "role": "assistant",
    "content": "",
    "tool_calls": [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "weather", "arguments": '{"city": "Oslo", "unit": "C"}'},
        }
    ],
}
RESULT = {"role": "tool", "tool_call_id": "call_1", "content": "4 degrees"}


def test_a_first_turn_has_no_prefix():
    assert prefix_key(MODEL, [TURN_1]) is None
    assert prefix_key(MODEL, [SYSTEM, TURN_1]) is None


def test_the_next_turns_prefix_is_this_conversation_and_its_answer():
    recorded = conversation_key(MODEL, [SYSTEM, TURN_1], ANSWER_1)
    assert prefix_key(MODEL, [SYSTEM, TURN_1, ANSWER_1, TURN_2]) == recorded
    # the same prefix whatever the new turn says
    other_turn = {"role": "user", "content": "Something else entirely."}
    assert prefix_key(MODEL, [SYSTEM, TURN_1, ANSWER_1, other_turn]) == recorded


@pytest.mark.parametrize(
    "changed",
    [
        [SYSTEM, {"role": "user", "content": "Hello?"}, ANSWER_1, TURN_2],
        [SYSTEM, TURN_1, {"role": "assistant", "content": "Hi!"}, TURN_2],
        [{"role": "system", "content": "Be long."}, TURN_1, ANSWER_1, TURN_2],
        [TURN_1, ANSWER_1, TURN_2],
        [SYSTEM, {"role": "user", "content": "Hello!", "name": "ann"}, ANSWER_1, TURN_2],
    ],
    ids=["user-turn", "answer", "system", "no-system", "name"],
)
def test_a_changed_earlier_turn_changes_the_key(changed: list[dict[str, Any]]):
    same = prefix_key(MODEL, [SYSTEM, TURN_1, ANSWER_1, TURN_2])
    assert same is not None
    assert prefix_key(MODEL, changed) != same


def test_the_model_is_part_of_the_key():
    conversation = [TURN_1, ANSWER_1, TURN_2]
    assert prefix_key(MODEL, conversation) != prefix_key("other-model", conversation)


def test_messages_do_not_run_together():
    split = [{"role": "user", "content": "ab"}, {"role": "user", "content": "c"}, TURN_2]
    joined = [{"role": "user", "content": "a"}, {"role": "user", "content": "bc"}, TURN_2]
    assert prefix_key(MODEL, split) != prefix_key(MODEL, joined)


def test_tool_calls_count_and_their_arguments_are_read_not_spelled():
    recorded = conversation_key(MODEL, [TURN_1], CALL)
    # the arguments sent back in another spelling (spaces, key order) are the same call
    respelled = {
        **CALL,
        "tool_calls": [
            {
                **CALL["tool_calls"][0],
                "function": {"name": "weather", "arguments": '{"unit":"C","city":"Oslo"}'},
            }
        ],
    }
    assert prefix_key(MODEL, [TURN_1, respelled, RESULT]) == recorded
    other_city = {
        **CALL,
        "tool_calls": [
            {
                **CALL["tool_calls"][0],
                "function": {"name": "weather", "arguments": '{"city": "Rome"}'},
            }
        ],
    }
    assert prefix_key(MODEL, [TURN_1, other_city, RESULT]) != recorded


def test_text_parts_and_a_string_are_the_same_content():
    parts = {
        "role": "user",
        "content": [{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo!"}],
    }
    assert prefix_key(MODEL, [parts, ANSWER_1, TURN_2]) == prefix_key(
        MODEL, [TURN_1, ANSWER_1, TURN_2]
    )


def test_two_user_turns_without_an_answer_have_a_prefix():
    assert prefix_key(MODEL, [TURN_1, TURN_2]) is not None
    assert prefix_key(MODEL, [TURN_1, TURN_2]) != prefix_key(MODEL, [TURN_2, TURN_1])


@pytest.mark.parametrize(
    "messages",
    [[TURN_1], [SYSTEM, TURN_1, ANSWER_1, TURN_2], [TURN_1, CALL, RESULT], [TURN_1, TURN_2]],
    ids=["first", "second", "tool", "two-users"],
)
def test_one_pass_gives_both_keys(messages: list[dict[str, Any]]):
    prefix, next_key = affinity_keys(MODEL, messages)
    assert prefix == prefix_key(MODEL, messages)
    assert next_key(ANSWER_1) == conversation_key(MODEL, messages, ANSWER_1)
    assert next_key(CALL) == conversation_key(MODEL, messages, CALL)


def test_the_key_holds_no_text():
    key = conversation_key(MODEL, [TURN_1], ANSWER_1)
    assert "Hello" not in key
    assert len(key) == 32


def test_the_map_forgets_the_least_recently_used_first():
    lru = AffinityMap(size=2)
    lru.put("a", "http://gpu-1/v1")
    lru.put("b", "http://gpu-2/v1")
    assert lru.get("a") == "http://gpu-1/v1"  # "a" is now the most recent
    lru.put("c", "http://gpu-1/v1")
    assert len(lru) == 2
    assert lru.get("b") is None
    assert lru.get("a") == "http://gpu-1/v1"


# -- the pool's choice --------------------------------------------------------------------


@pytest.fixture
def pool() -> GpuPool:
    return GpuPool(
        httpx.AsyncClient(),
        ["http://gpu-1:8000/v1", "http://gpu-2:8000/v1"],
        concurrency_per_endpoint=4,
        affinity_margin=2,
    )


def loaded(pool: GpuPool, first: int, second: int) -> None:
    for endpoint, load in zip(pool.endpoints, (first, second), strict=True):
        endpoint.healthy = True
        endpoint.external = load


@pytest.mark.parametrize(
    ("loads", "taken", "affine"),
    [
        ((0, 2), "gpu-2", True),  # within the margin: the endpoint holding the prefix
        ((0, 0), "gpu-2", True),
        ((3, 1), "gpu-2", True),  # the least loaded holds it anyway
        ((0, 3), "gpu-1", False),  # over the margin: by load
        ((2, 4), "gpu-1", False),  # busy (4 of 4) while another is free
    ],
)
def test_the_endpoint_holding_the_prefix_is_taken_within_the_margin(
    pool: GpuPool, loads: tuple[int, int], taken: str, affine: bool
):
    loaded(pool, *loads)
    pool.remember("key", pool.endpoints[1])
    slot = pool.admit(MODEL, None, prefix="key")
    assert slot is not None
    assert (slot.endpoint.url.split("/")[2].split(":")[0], slot.affinity) == (taken, affine)


def test_an_unknown_prefix_or_a_down_endpoint_goes_by_load(pool: GpuPool):
    loaded(pool, 1, 0)
    pool.remember("key", pool.endpoints[0])
    unknown = pool.admit(MODEL, None, prefix="another")
    assert unknown is not None
    assert (unknown.endpoint, unknown.affinity) == (pool.endpoints[1], False)
    pool.release(unknown)
    pool.endpoints[0].healthy = False
    down = pool.admit(MODEL, None, prefix="key")
    assert down is not None
    assert (down.endpoint, down.affinity) == (pool.endpoints[1], False)
