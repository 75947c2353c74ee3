"""The OpenAI chat-completions wire format, inward: a request body becomes graph input.

:func:`parse_chat_request` checks the envelope (JSON object, message roles,
``n``, ``stream``, token limits, ``user``, ``team``), leaves the routing hints
to the graph, and passes every other field on in ``params`` (the few no
backend can honour are refused, naming the field: :mod:`state.chat_fields`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from state.api_keys import ApiKeyIdentity
from state.chat_fields import ROUTER_FIELDS, check_params
from state.errors import BadRequestError
from state.ledger import NAME_MAX_CHARS
from state.schemas import RouterInput

_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


class GatewayRequestError(BadRequestError):
    """A request the gateway refuses before the graph runs; names the offending field."""

    def __init__(
        self, message: str, *, param: str | None = None, code: str = "invalid_value"
    ) -> None:
        """Keep the message, the field (``param``) and the OpenAI error code."""
        super().__init__(message)
        self.param = param
        self.code = code


@dataclass(slots=True)
class ChatRequest:
    """A parsed chat-completions request."""

    graph_input: RouterInput
    stream: bool
    include_usage: bool


def _positive_int(body: Mapping[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise GatewayRequestError(
            f"'{name}' must be a positive integer (the most output tokens to generate), "
            f"got {value!r:.40}",
            param=name,
        )
    return value


def _optional_bool(body: Mapping[str, Any], name: str, param: str | None = None) -> bool:
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise GatewayRequestError(
            f"'{param or name}' must be true or false, got {value!r:.40}", param=param or name
        )
    return value


def _name(body: Mapping[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is not None and (not isinstance(value, str) or len(value) > NAME_MAX_CHARS):
        raise GatewayRequestError(
            f"'{name}' must be a string of at most {NAME_MAX_CHARS} characters", param=name
        )
    return value


def _check_content(content: Any, index: int) -> None:
    """Refuse a message content that is neither text, nor a list of parts, nor absent."""
    if content is None or isinstance(content, str):
        return
    if isinstance(content, list) and all(
        isinstance(part, dict) and isinstance(part.get("type"), str) for part in content
    ):
        return
    got = type(content).__name__ if not isinstance(content, list) else "a list of other things"
    raise GatewayRequestError(
        f"messages[{index}].content must be a string, or a list of content parts such as "
        f'[{{"type": "text", "text": "Hello!"}}], got {got}',
        param=f"messages[{index}].content",
        code="invalid_request",
    )


def parse_chat_request(
    raw: bytes, request_id: str, caller: ApiKeyIdentity | None = None
) -> ChatRequest:
    """Turn an OpenAI chat-completions body into the router graph's input.

    The envelope is checked here (JSON object, message roles, ``n``,
    ``stream``, token limits, ``user``, ``team``) and the routing hints by the
    graph's ``analyze_complexity`` node. Every other field (``tools``,
    ``response_format``, ``stop``, ``seed``, ``logprobs``, ...) goes to the
    backend unchanged in ``params``; the few no backend can honour are refused
    (:mod:`state.chat_fields`).

    Args:
        raw: The request body.
        request_id: The id the gateway gave this request (ledger row, response id).
        caller: Who the request's API key belongs to, when authentication is on: its
            user and team replace the body's ``user`` and ``team``.

    Returns:
        The graph input and how to answer (streaming, usage chunk).

    Raises:
        GatewayRequestError: The body is not a JSON object, or a field is malformed.
    """
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise GatewayRequestError(
            f"the request body is not valid JSON ({exc}); send a JSON object such as "
            '{"model": "auto", "messages": [{"role": "user", "content": "Hello!"}]}',
            code="invalid_json",
        ) from None
    return chat_request_from_body(body, request_id, caller)


def chat_request_from_body(
    body: Any, request_id: str, caller: ApiKeyIdentity | None = None
) -> ChatRequest:
    """Turn an already decoded chat-completions body into the graph's input.

    :func:`parse_chat_request` after the JSON decoding; the batch route
    (:mod:`gateway.batch`) calls it on each line's ``body``.

    Args:
        body: The decoded request body (anything: a non-object is refused).
        request_id: The id the gateway gave this request.
        caller: Who the request's API key belongs to, when authentication is on.

    Returns:
        The graph input and how to answer.

    Raises:
        GatewayRequestError: The body is not an object, or a field is malformed.
    """
    if not isinstance(body, dict):
        raise GatewayRequestError(
            f"the request body must be a JSON object, got a JSON {type(body).__name__}; send "
            '{"model": "auto", "messages": [{"role": "user", "content": "Hello!"}]}',
            code="invalid_json",
        )
    if "messages" not in body:
        raise GatewayRequestError(
            "'messages' is required: a non-empty list such as "
            '[{"role": "user", "content": "Hello!"}]',
            param="messages",
            code="missing_required_parameter",
        )
    n = body.get("n")
    if n is not None and (type(n) is not int or n != 1):  # true and 1.0 equal 1, and are not
        if type(n) is int and n > 1:
            raise GatewayRequestError(
                f"n={n} is not supported: the router returns one choice per request; "
                "send n=1 or leave it out, and send several requests for several answers",
                param="n",
                code="unsupported_value",
            )
        raise GatewayRequestError(
            f"'n' must be 1 (the router returns one choice per request), got {n!r:.40}",
            param="n",
        )

    stream = _optional_bool(body, "stream")
    include_usage = False
    options = body.get("stream_options")
    if options is not None:
        if not isinstance(options, dict):
            raise GatewayRequestError(
                "'stream_options' must be an object like {\"include_usage\": true}",
                param="stream_options",
            )
        include_usage = _optional_bool(options, "include_usage", "stream_options.include_usage")

    messages = body["messages"]
    if not isinstance(messages, list) or not messages:
        raise GatewayRequestError(
            '\'messages\' must be a non-empty list such as [{"role": "user", "content": "Hello!"}]',
            param="messages",
            code="invalid_request",
        )
    for index, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if not isinstance(role, str) or role not in _ROLES:
            raise GatewayRequestError(
                f"messages[{index}] must be an object whose 'role' is one of "
                f"{', '.join(sorted(_ROLES))}, got {role if role is not None else message!r:.60}",
                param=f"messages[{index}].role",
                code="invalid_request",
            )
        _check_content(message.get("content"), index)
    graph_input: RouterInput = {"messages": messages, "request_id": request_id}
    limits = [
        value
        for value in (
            _positive_int(body, "max_tokens"),
            _positive_int(body, "max_completion_tokens"),
        )
        if value is not None
    ]
    if limits:
        graph_input["max_tokens"] = min(limits)
    model = body.get("model")
    if model is not None:
        if not isinstance(model, str):
            raise GatewayRequestError(
                f"'model' must be a model id string or 'auto', got {model!r:.40}", param="model"
            )
        graph_input["model"] = model
    user, team = _name(body, "user"), _name(body, "team")
    if caller is not None:
        user, team = caller.user, caller.team
    if user is not None:
        graph_input["user"] = user
    if team is not None:
        graph_input["team"] = team
    # Checked by the graph, which names the allowed values.
    for key in ("temperature", "cost_priority", "force_backend"):
        value = body.get(key)
        if value is not None:
            graph_input[key] = value
    # Every other field goes to the backend as it is (``state.chat_fields``).
    params = {k: v for k, v in body.items() if k not in ROUTER_FIELDS and v is not None}
    if params:
        check_params(params)
        graph_input["params"] = params  # type: ignore[typeddict-item]
    if stream:
        graph_input["stream"] = True
    return ChatRequest(graph_input=graph_input, stream=stream, include_usage=include_usage)
