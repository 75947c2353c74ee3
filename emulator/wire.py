"""OpenAI's wire format: ``chat.completion`` JSON and ``chat.completion.chunk`` SSE bytes.

A whole answer is one JSON object; a streamed one is a role chunk (which opens
the tool call, for a tool call), one chunk per output token (a content delta,
or a piece of the tool call's arguments), a chunk with the finish reason, an
optional usage chunk and ``data: [DONE]``. Chunks are assembled from byte
templates: the per-token JSON pieces and logprob entries are encoded once, when
the answer is made.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from emulator.answers import Answer

JSON = "application/json"
SSE = "text/event-stream"
FINGERPRINT = "fp_emulator"

_FINGERPRINT = b'"system_fingerprint":"' + FINGERPRINT.encode() + b'",'
_END_OF_EVENT = b"}\n\n"
DONE = b"data: [DONE]\n\n"


def usage(prompt_tokens: int, answer: Answer) -> dict[str, int]:
    """Return the ``usage`` object: the output tokens (content or tool arguments) count."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": answer.tokens,
        "total_tokens": prompt_tokens + answer.tokens,
    }


def _logprobs(entries: list[bytes]) -> bytes:
    return b'{"content":[' + b",".join(entries) + b'],"refusal":null}'


def completion(
    answer: Answer,
    *,
    completion_id: str,
    created: int,
    model: str,
    prompt_tokens: int,
    call_id: str | None,
    logprobs: list[bytes] | None,
) -> bytes:
    """Return the JSON of a whole ``chat.completion``."""
    message: dict[str, Any]
    if answer.tool_name is None:
        message = {"role": "assistant", "content": answer.text, "refusal": None}
    else:
        message = {
            "role": "assistant",
            "content": None,
            "refusal": None,
            "tool_calls": [
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": answer.tool_name, "arguments": answer.text},
                }
            ],
        }
    return orjson.dumps(
        {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "system_fingerprint": FINGERPRINT,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None if logprobs is None else orjson.Fragment(_logprobs(logprobs)),
                    "finish_reason": answer.finish_reason,
                }
            ],
            "usage": usage(prompt_tokens, answer),
        }
    )


@dataclass(slots=True)
class Chunks:
    """A streamed answer's SSE events: the role chunk, one per token, the ending ones."""

    first: bytes
    tokens: list[bytes]
    end: list[bytes]

    def whole(self) -> bytes:
        """Return the whole event stream at once."""
        return b"".join([self.first, *self.tokens, *self.end])


def chunks(
    answer: Answer,
    *,
    completion_id: str,
    created: int,
    model: str,
    prompt_tokens: int,
    include_usage: bool,
    call_id: str | None,
    logprobs: list[bytes] | None,
) -> Chunks:
    """Return the SSE events of a streamed ``chat.completion.chunk`` answer."""
    head = b'data: {"id":"%s","object":"chat.completion.chunk","created":%d,"model":%s,' % (
        completion_id.encode(),
        created,
        orjson.dumps(model),
    )
    head += _FINGERPRINT
    usage_null = b',"usage":null' if include_usage else b""
    choice = head + b'"choices":[{"index":0,"delta":'
    pending = b',"finish_reason":null}]' + usage_null + _END_OF_EVENT
    if answer.tool_name is None:
        opening = b'{"role":"assistant","content":""}'
        token_head = choice + b'{"content":'
        token_close = b"}"
    else:
        opening = (
            b'{"role":"assistant","content":null,"tool_calls":[{"index":0,"id":%s,'
            b'"type":"function","function":{"name":%s,"arguments":""}}]}'
            % (orjson.dumps(call_id), orjson.dumps(answer.tool_name))
        )
        token_head = choice + b'{"tool_calls":[{"index":0,"function":{"arguments":'
        token_close = b"}}]}"
    first = choice + opening + b',"logprobs":null' + pending
    if logprobs is None:
        tail = token_close + b',"logprobs":null' + pending
        tokens = [token_head + piece + tail for piece in answer.pieces]
    else:
        tokens = [
            token_head + piece + token_close + b',"logprobs":' + _logprobs([entry]) + pending
            for piece, entry in zip(answer.pieces, logprobs, strict=True)
        ]
    end = [
        choice
        + b'{},"logprobs":null,"finish_reason":"'
        + answer.finish_reason.encode()
        + b'"}]'
        + usage_null
        + _END_OF_EVENT
    ]
    if include_usage:
        end.append(
            head + b'"choices":[],"usage":' + orjson.dumps(usage(prompt_tokens, answer)) + b"}\n\n"
        )
    end.append(DONE)
    return Chunks(first, tokens, end)
