"""vLLM-style Prometheus metrics: the gauges and counters vLLM's ``/metrics`` exposes.

Only successful requests count: a request refused as the client's fault (4xx)
or failed by injection changes no metric.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from emulator.load import ModelStats

PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"

FAMILIES: list[tuple[str, str, str, Callable[[ModelStats], int]]] = [
    (
        "vllm:num_requests_running",
        "gauge",
        "Number of requests currently running (holding a concurrency slot).",
        lambda s: s.running,
    ),
    (
        "vllm:num_requests_waiting",
        "gauge",
        "Number of requests waiting for a concurrency slot.",
        lambda s: s.waiting,
    ),
    (
        "vllm:prompt_tokens_total",
        "counter",
        "Number of prefill tokens processed.",
        lambda s: s.prompt_tokens,
    ),
    (
        "vllm:generation_tokens_total",
        "counter",
        "Number of generation tokens processed.",
        lambda s: s.generation_tokens,
    ),
    (
        "vllm:request_success_total",
        "counter",
        "Count of successfully processed requests.",
        lambda s: s.success,
    ),
]


def render(stats: Mapping[str, ModelStats]) -> bytes:
    """Return the Prometheus text exposition of every model's gauges and counters."""
    lines: list[str] = []
    for metric, kind, help_text, value in FAMILIES:
        lines.append(f"# HELP {metric} {help_text}")
        lines.append(f"# TYPE {metric} {kind}")
        for model, model_stats in stats.items():
            label = model.replace("\\", "\\\\").replace('"', '\\"')
            lines.append(f'{metric}{{model_name="{label}"}} {float(value(model_stats))}')
    return ("\n".join(lines) + "\n").encode()
