"""vLLM-style Prometheus metrics: the gauges and counters vLLM's ``/metrics`` exposes.

Only successful requests count: a request refused as the client's fault (4xx)
or failed by injection changes no metric. As vLLM does, the waiting requests
are published twice: in total, and by reason (every emulated wait is for
``capacity``, none ``deferred``), so a reader must match metric names exactly.
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
        "vllm:num_requests_waiting_by_reason",
        "gauge",
        "Number of waiting requests by reason. Sum of all reasons equals "
        "vllm:num_requests_waiting.",
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


BY_REASON = frozenset({"vllm:num_requests_waiting_by_reason"})


def render(stats: Mapping[str, ModelStats], peak_running: int = 0) -> bytes:
    """Return the Prometheus text exposition of every model's gauges and counters.

    Beside vLLM's names, ``emulator_peak_requests_running`` (the emulator's own,
    for tests and benchmarks): the most requests it generated at once.
    """
    lines: list[str] = [
        "# HELP emulator_peak_requests_running Most requests generating at once since start.",
        "# TYPE emulator_peak_requests_running gauge",
        f"emulator_peak_requests_running {float(peak_running)}",
    ]
    for metric, kind, help_text, value in FAMILIES:
        lines.append(f"# HELP {metric} {help_text}")
        lines.append(f"# TYPE {metric} {kind}")
        for model, model_stats in stats.items():
            label = model.replace("\\", "\\\\").replace('"', '\\"')
            number = float(value(model_stats))
            if metric in BY_REASON:
                lines.append(f'{metric}{{model_name="{label}",reason="capacity"}} {number}')
                lines.append(f'{metric}{{model_name="{label}",reason="deferred"}} 0.0')
            else:
                lines.append(f'{metric}{{model_name="{label}"}} {number}')
    return ("\n".join(lines) + "\n").encode()
