"""What a vLLM server publishes about its load and its models, parsed.

``/metrics`` is Prometheus text; the families are read by their exact names
(``vllm:num_requests_waiting_by_reason`` is not ``vllm:num_requests_waiting``)
and summed over their label sets (vLLM labels each engine of a data-parallel
server, and each served model, separately). ``/v1/models`` lists the served
model names, and vLLM adds each one's ``max_model_len``.

vLLM does not publish its concurrency limit (``--max-num-seqs``): only the
development-mode ``/server_info`` route shows it, and
``vllm:cache_config_info``'s ``kv_cache_max_concurrency`` is what the KV cache
could hold at full context length, not the scheduler's limit. The router's
``GPU_CONCURRENCY_PER_ENDPOINT`` stays the per-endpoint limit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
KV_CACHE_USAGE = "vllm:kv_cache_usage_perc"
FAMILIES = frozenset({RUNNING, WAITING, KV_CACHE_USAGE})


@dataclass(frozen=True, slots=True)
class VllmLoad:
    """One server's load: requests running and waiting, and its KV cache in use (0..1)."""

    running: int = 0
    waiting: int = 0
    kv_cache_usage: float | None = None


def _wanted(line: str) -> bool:
    """Say whether a line of the exposition belongs to a family read here (by exact name)."""
    if line.startswith("#"):
        words = line.split(maxsplit=3)
        return len(words) > 2 and words[1] in ("HELP", "TYPE") and words[2] in FAMILIES
    return line.split("{", 1)[0].split(" ", 1)[0] in FAMILIES


def parse_load(text: str) -> VllmLoad:
    """Read running, waiting and KV-cache usage from vLLM's Prometheus text.

    Running and waiting are summed over every engine and model label set. KV
    usage is a share of each engine's own cache, so the engines' shares are
    averaged (the share of the server's cache in use). Only these families'
    lines are parsed (vLLM's whole text is some 60 kB of histograms), so a line
    of another family cannot spoil them. Raises ``ValueError`` on lines that
    are not Prometheus exposition format.
    """
    sums = {RUNNING: 0.0, WAITING: 0.0}
    kv: list[float] = []
    lines = "".join(f"{line}\n" for line in text.splitlines() if _wanted(line))
    for family in text_string_to_metric_families(lines):
        if family.name not in FAMILIES:
            continue
        for sample in family.samples:
            if sample.name != family.name:
                continue  # e.g. a family's _created sample
            if family.name == KV_CACHE_USAGE:
                kv.append(sample.value)
            else:
                sums[family.name] += sample.value
    return VllmLoad(
        running=int(sums[RUNNING]),
        waiting=int(sums[WAITING]),
        kv_cache_usage=sum(kv) / len(kv) if kv else None,
    )


def parse_models(body: Any) -> dict[str, int | None]:
    """Map each model of a ``/v1/models`` answer to its ``max_model_len`` (None: not given)."""
    data = body.get("data") if isinstance(body, dict) else None
    models: dict[str, int | None] = {}
    for card in data or ():
        if not isinstance(card, dict) or "id" not in card:
            continue
        length = card.get("max_model_len")
        ok = isinstance(length, int) and not isinstance(length, bool) and length > 0
        models[str(card["id"])] = length if ok else None
    return models
