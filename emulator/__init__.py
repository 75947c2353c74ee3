"""An OpenAI-compatible chat-completions server that emulates a model backend.

It stands in for Lambda's Inference API and for vLLM GPU servers in development,
tests and benchmarks. Answers are deterministic text that says it comes from the
emulator; token counts are honest (``backends.tokens``); latency (time to first
token, time per output token), injected failures, a concurrency limit with a
queue, an API key and vLLM-style ``/metrics`` make it behave like the real thing
from a client's point of view. It speaks the parts of OpenAI's chat API that
real clients use: tool calls (streamed as OpenAI's deltas), ``logprobs`` with
``top_logprobs``, ``response_format`` (JSON object and JSON schema), ``stop``,
and vLLM's refusal of images sent to a text-only model. ``GET /v1/_received``
shows the last request bodies it received, so tests can check what reached it.

Modules, by concern: :mod:`emulator.config` (what to serve), :mod:`emulator.validation`
(request checks), :mod:`emulator.answers` (deterministic answers and logprobs),
:mod:`emulator.wire` (JSON and SSE bytes), :mod:`emulator.load` (latency,
concurrency, counters), :mod:`emulator.metrics` (``/metrics``) and
:mod:`emulator.server` (routes and serving). Start one in the current event loop
with :func:`serve_emulator`, or from the command line with :func:`run`.

The per-request path is kept lean (it is the ceiling in throughput benchmarks):
fixed answers and headers are serialized once, generated answers are cached by
prompt hash, and streaming chunks are assembled from byte templates.
"""

from emulator.config import DEFAULT_MODELS, EmulatorConfig
from emulator.server import create_app, run, serve_emulator

__all__ = ["DEFAULT_MODELS", "EmulatorConfig", "create_app", "run", "serve_emulator"]
