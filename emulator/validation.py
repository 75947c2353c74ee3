"""Request checks: a chat-completions body becomes a :class:`ChatRequest` or a 4xx.

Every refusal is a :class:`BadRequest` carrying OpenAI's error fields; the server
turns it into ``{"error": {"message", "type", "param", "code"}}``. The checks
follow what OpenAI and vLLM refuse, with messages that say how to fix the call.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

VALID_ROLES = frozenset({"system", "user", "assistant", "tool", "developer"})
TOOL_CHOICES = frozenset({"none", "auto", "required"})
MAX_STOPS = 4
MAX_TOP_LOGPROBS = 20
_TEXT_PART = '{"type": "text", "text": "..."}'
_IMAGE_PART = '{"type": "image_url", "image_url": {"url": "..."}}'


class BadRequest(Exception):
    """A request the emulator refuses; carries the OpenAI error fields."""

    def __init__(
        self, message: str, *, param: str | None = None, code: str | None = None, status: int = 400
    ) -> None:
        """Refuse with ``message``; ``param`` and ``code`` as in OpenAI's error JSON."""
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.status = status


def error_body(
    message: str, error_type: str, param: str | None = None, code: str | None = None
) -> bytes:
    """Return OpenAI's error JSON."""
    return orjson.dumps(
        {"error": {"message": message, "type": error_type, "param": param, "code": code}}
    )


def error_type(status: int) -> str:
    """Return OpenAI's error ``type`` for an HTTP status."""
    if status == 429:
        return "rate_limit_exceeded"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


@dataclass(slots=True)
class ChatRequest:
    """A checked chat-completions request: only what shapes the answer."""

    model: str
    messages: list[dict[str, Any]]
    limit: int | None = None
    stream: bool = False
    include_usage: bool = False
    tool: dict[str, Any] | None = None  # the function to call, when the answer is a tool call
    response_format: str | dict[str, Any] | None = None  # "json_object" or a JSON schema
    stops: tuple[str, ...] | None = None
    logprobs: bool = False
    top_logprobs: int = 0


def _invalid(param: str, message: str) -> BadRequest:
    return BadRequest(message, param=param, code="invalid_value")


def _max_tokens(body: Mapping[str, Any]) -> int | None:
    limit: int | None = None
    for param in ("max_tokens", "max_completion_tokens"):
        value = body.get(param)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise _invalid(
                param,
                f"'{param}' must be a positive integer (the most output tokens to generate), "
                f"got {value!r}.",
            )
        limit = value if limit is None else min(limit, value)
    return limit


def _check_parts(where: str, content: list[Any]) -> bool:
    """Check a list of content parts; return whether it holds an image."""
    image = False
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            continue
        if kind == "image_url":
            ref = part.get("image_url")
            url = ref.get("url") if isinstance(ref, dict) else ref
            if isinstance(url, str) and url:
                image = True
                continue
        raise _invalid(
            f"{where}.content[{j}]",
            f"'{where}.content[{j}]' must be a text part {_TEXT_PART} "
            f"or an image part {_IMAGE_PART}.",
        )
    return image


def _check_messages(messages: Any) -> tuple[list[dict[str, Any]], bool]:
    """Check the messages; return them and whether any holds an image part."""
    if not isinstance(messages, list) or not messages:
        raise BadRequest(
            "'messages' must be a non-empty list of chat messages, e.g. "
            '[{"role": "user", "content": "Hello"}].',
            param="messages",
            code="missing_required_parameter" if messages is None else "invalid_value",
        )
    image = False
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _invalid(
                where,
                f"'{where}' must be an object with 'role' and 'content', got {message!r:.80}.",
            )
        role = message.get("role")
        if role not in VALID_ROLES:
            raise _invalid(
                f"{where}.role",
                f"'{where}.role' must be one of {', '.join(sorted(VALID_ROLES))}, "
                f"got {role!r:.80}.",
            )
        if "content" not in message:
            if role == "assistant" and ("tool_calls" in message or "function_call" in message):
                continue
            raise BadRequest(
                f"'{where}' has no 'content': give a string, a list of text parts or null.",
                param=f"{where}.content",
                code="missing_required_parameter",
            )
        content = message["content"]
        if content is None or isinstance(content, str):
            continue
        if not isinstance(content, list):
            raise _invalid(
                f"{where}.content",
                f"'{where}.content' must be a string, a list of text parts or null, "
                f"got {type(content).__name__}.",
            )
        image = _check_parts(where, content) or image
    return messages, image


def _check_number(body: Mapping[str, Any], param: str, low: float, high: float) -> None:
    value = body.get(param)
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high
    ):
        raise _invalid(
            param, f"'{param}' must be a number from {low:g} to {high:g}, got {value!r:.40}."
        )


def _check_stream(body: Mapping[str, Any]) -> tuple[bool, bool]:
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _invalid("stream", f"'stream' must be true or false, got {stream!r:.40}.")
    options = body.get("stream_options")
    if options is None:
        return bool(stream), False
    value = options.get("include_usage") if isinstance(options, dict) else options
    if not isinstance(options, dict) or not isinstance(value, bool | None):
        raise _invalid(
            "stream_options", "'stream_options' must be an object like {\"include_usage\": true}."
        )
    return bool(stream), bool(value)


def _check_tools(body: Mapping[str, Any], messages: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Check ``tools`` and ``tool_choice``; return the function to call, if any."""
    tools = body.get("tools")
    choice = body.get("tool_choice")
    functions: list[dict[str, Any]] = []
    if tools is not None:
        if not isinstance(tools, list):
            raise _invalid("tools", f"'tools' must be a list of tools, got {type(tools).__name__}.")
        for i, tool in enumerate(tools):
            function = tool.get("function") if isinstance(tool, dict) else None
            if not (
                isinstance(tool, dict)
                and tool.get("type", "function") == "function"
                and isinstance(function, dict)
                and isinstance(function.get("name"), str)
                and function["name"]
                and isinstance(function.get("parameters", {}), dict | None)
            ):
                raise _invalid(
                    f"tools[{i}]",
                    f"'tools[{i}]' must be a function tool "
                    '{"type": "function", "function": {"name": "...", "parameters": {...}}}.',
                )
            functions.append(function)
    named: str | None = None
    if isinstance(choice, dict):
        function = choice.get("function")
        named = function.get("name") if isinstance(function, dict) else None
        if choice.get("type") != "function" or not isinstance(named, str):
            named = None
    known = isinstance(choice, str) and choice in TOOL_CHOICES
    if choice is not None and not known and named is None:
        raise _invalid(
            "tool_choice",
            '\'tool_choice\' must be "none", "auto", "required" or '
            '{"type": "function", "function": {"name": "..."}}.',
        )
    if named is not None and not any(f["name"] == named for f in functions):
        raise _invalid(
            "tool_choice",
            f"'tool_choice' names the function {named!r:.80}, which is not in 'tools'.",
        )
    if not functions or choice == "none" or messages[-1].get("role") == "tool":
        return None
    if named is not None:
        return next(f for f in functions if f["name"] == named)
    return functions[0]


def _check_response_format(body: Mapping[str, Any]) -> str | dict[str, Any] | None:
    fmt = body.get("response_format")
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return "json_object"
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        schema = spec.get("schema", {}) if isinstance(spec, dict) else None
        if (
            isinstance(spec, dict)
            and isinstance(spec.get("name"), str)
            and isinstance(schema, dict)
        ):
            return schema
    raise _invalid(
        "response_format",
        '\'response_format\' must be {"type": "text"}, {"type": "json_object"} or '
        '{"type": "json_schema", "json_schema": {"name": "...", "schema": {...}}}.',
    )


def _check_stop(body: Mapping[str, Any]) -> tuple[str, ...] | None:
    stop = body.get("stop")
    if stop is None:
        return None
    stops = [stop] if isinstance(stop, str) else stop
    if (
        not isinstance(stops, list)
        or len(stops) > MAX_STOPS
        or not all(isinstance(s, str) for s in stops)
    ):
        raise _invalid("stop", f"'stop' must be a string or a list of up to {MAX_STOPS} strings.")
    return tuple(s for s in stops if s) or None


def _check_logprobs(body: Mapping[str, Any]) -> tuple[bool, int]:
    logprobs = body.get("logprobs")
    if logprobs is not None and not isinstance(logprobs, bool):
        raise _invalid("logprobs", f"'logprobs' must be true or false, got {logprobs!r:.40}.")
    top = body.get("top_logprobs")
    if top is None:
        return bool(logprobs), 0
    if isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= MAX_TOP_LOGPROBS:
        raise _invalid(
            "top_logprobs",
            f"'top_logprobs' must be an integer from 0 to {MAX_TOP_LOGPROBS}, got {top!r:.40}.",
        )
    if not logprobs:
        raise _invalid("top_logprobs", "'top_logprobs' needs 'logprobs' set to true.")
    return True, top


def parse_request(
    body: Any,
    *,
    models: Collection[str],
    vision_models: Collection[str],
    served: str,
    where: str,
) -> ChatRequest:
    """Check a chat-completions body and return what shapes its answer.

    Args:
        body: The parsed JSON body.
        models: The model ids served.
        vision_models: The model ids that accept image parts.
        served: The served model ids as a comma-separated list, for error messages.
        where: The emulator's name, for error messages.

    Returns:
        The checked request.

    Raises:
        BadRequest: The body is malformed (400) or names an unknown model (404).
    """
    if not isinstance(body, dict):
        raise BadRequest(
            f"The request body must be a JSON object, got {type(body).__name__}. "
            "Send an object with 'model' and 'messages'.",
            code="invalid_value",
        )
    model = body.get("model")
    if not isinstance(model, str):
        raise BadRequest(
            f"'model' must be a string naming a served model ({served}).",
            param="model",
            code="missing_required_parameter" if model is None else "invalid_value",
        )
    messages, image = _check_messages(body.get("messages"))
    if model not in models:
        raise BadRequest(
            f"The model '{model:.100}' does not exist on emulator '{where}'. "
            f"Served models: {served}.",
            param="model",
            code="model_not_found",
            status=404,
        )
    if image and model not in vision_models:
        raise BadRequest(f"model {model} does not accept image input", param="messages")
    limit = _max_tokens(body)
    _check_number(body, "temperature", 0, 2)
    stream, include_usage = _check_stream(body)
    logprobs, top_logprobs = _check_logprobs(body)
    return ChatRequest(
        model,
        messages,
        limit,
        stream,
        include_usage,
        tool=_check_tools(body, messages),
        response_format=_check_response_format(body),
        stops=_check_stop(body),
        logprobs=logprobs,
        top_logprobs=top_logprobs,
    )
