"""The OpenAI chat-completions fields: which the router reads, passes on, or refuses.

One table for the gateway (which turns a request body into the graph's input)
and for the graph (which checks ``params`` from Python and LangGraph callers),
so both accept and refuse the same things with the same words. The README's
field table is written from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from state.errors import BadRequestError

# Read by the router itself and given to the graph as keys of their own.
ROUTER_FIELDS = frozenset(
    {
        "messages",
        "model",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "stream",
        "stream_options",
        "user",
        "n",
        # the router's own hints
        "team",
        "cost_priority",
        "force_backend",
    }
)

# Standard fields passed to the backend unchanged (any other field is too).
PASSED_FIELDS = (
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
    "stop",
    "seed",
    "top_p",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "metadata",
    "reasoning_effort",
    "service_tier",
    "store",
    "functions",
    "function_call",
)

# Fields no backend behind the router can honour, and what to do instead.
REFUSED_FIELDS: dict[str, str] = {
    "audio": "audio output is not offered by any model of the router; leave 'audio' out",
    "modalities": "only text output is offered; leave 'modalities' out or send [\"text\"]",
    "prediction": "predicted outputs are not supported by the router's backends; "
    "leave 'prediction' out",
    "web_search_options": "web search is not offered by the router's backends; "
    "leave 'web_search_options' out",
}

_TOOL_CHOICES = ("none", "auto", "required")
_FORMATS = ("text", "json_object", "json_schema")
_IMAGE_PARTS = frozenset({"image_url", "image", "input_image"})


class FieldError(BadRequestError):
    """A chat-completions field the router refuses; ``param`` names it."""

    def __init__(self, message: str, *, param: str, code: str = "invalid_value") -> None:
        """Keep the message, the field and the OpenAI error code."""
        super().__init__(message)
        self.param = param
        self.code = code


def check_params(params: Mapping[str, Any]) -> None:
    """Refuse fields no backend can honour and malformed values of the common ones.

    Values the router does not interpret are left to the backend, whose own
    400 then reaches the caller as it is.

    Raises:
        FieldError: A field is refused or malformed; ``param`` names it.
    """
    for name in params:
        if name in REFUSED_FIELDS:
            if name == "modalities" and params[name] in (["text"], ("text",)):
                continue
            raise FieldError(REFUSED_FIELDS[name], param=name, code="unsupported_parameter")
        if name in ROUTER_FIELDS:
            raise FieldError(
                f"'{name}' is read by the router: give it as its own input key, not in params",
                param=name,
            )
    tools = params.get("tools")
    if tools is not None:
        if not isinstance(tools, list) or not all(
            isinstance(t, Mapping)
            and isinstance(t.get("function"), Mapping)
            and isinstance(t["function"].get("name"), str)
            for t in tools
        ):
            raise FieldError(
                '\'tools\' must be a list of {"type": "function", "function": {"name": ..., '
                '"parameters": {...}}} objects',
                param="tools",
            )
    choice = params.get("tool_choice")
    if choice is not None and not (
        choice in _TOOL_CHOICES
        or (isinstance(choice, Mapping) and isinstance(choice.get("function"), Mapping))
    ):
        raise FieldError(
            "'tool_choice' must be none, auto, required or "
            '{"type": "function", "function": {"name": ...}}',
            param="tool_choice",
        )
    fmt = params.get("response_format")
    if fmt is not None and not (isinstance(fmt, Mapping) and fmt.get("type") in _FORMATS):
        raise FieldError(
            '\'response_format\' must be {"type": "text"}, {"type": "json_object"} or '
            '{"type": "json_schema", "json_schema": {"name": ..., "schema": {...}}}',
            param="response_format",
        )
    stop = params.get("stop")
    if stop is not None and not (
        isinstance(stop, str)
        or (isinstance(stop, list) and len(stop) <= 4 and all(isinstance(s, str) for s in stop))
    ):
        raise FieldError("'stop' must be a string or a list of up to 4 strings", param="stop")
    logprobs = params.get("logprobs")
    if logprobs is not None and not isinstance(logprobs, bool):
        raise FieldError("'logprobs' must be true or false", param="logprobs")
    top = params.get("top_logprobs")
    if top is not None and (
        isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= 20
    ):
        raise FieldError("'top_logprobs' must be an integer from 0 to 20", param="top_logprobs")


def required_capabilities(
    params: Mapping[str, Any], messages: list[dict[str, Any]]
) -> dict[str, str]:
    """Return what a model needs to honour the request, each with the field that asks it."""
    needs: dict[str, str] = {}
    if params.get("tools") and params.get("tool_choice") != "none":
        needs["tools"] = "tools"
    fmt = params.get("response_format")
    if isinstance(fmt, Mapping):
        if fmt.get("type") == "json_schema":
            needs["json_schema"] = "response_format"
        elif fmt.get("type") == "json_object":
            needs["json_mode"] = "response_format"
    if params.get("logprobs"):
        needs["logprobs"] = "logprobs"
    for message in messages:
        content = message.get("content")
        if isinstance(content, list) and any(
            isinstance(part, Mapping) and part.get("type") in _IMAGE_PARTS for part in content
        ):
            needs["vision"] = "messages"
            break
    return needs
