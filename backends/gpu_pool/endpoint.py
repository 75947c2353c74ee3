"""One GPU endpoint's state, a slot on it, and a request's ticket with the pool."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from backends.openai_compat import OpenAICompatClient
from backends.vllm_metrics import parse_load

if TYPE_CHECKING:
    from state.schemas import Attempt


def _parse_gauges(text: str) -> tuple[int, int]:
    """Return vLLM's running and waiting requests from Prometheus text."""
    load = parse_load(text)
    return load.running, load.waiting


def shown_url(url: str) -> str:
    """Return ``url`` without credentials, query or fragment (safe in a reason)."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://{host}{parts.path}"


@dataclass(slots=True)
class GpuEndpoint:
    """One vLLM server and what the router knows about it."""

    url: str
    client: OpenAICompatClient = field(repr=False)
    healthy: bool | None = None
    cooling_until: float = 0.0
    failures: int = 0  # failed requests in a row (a success or a healthy probe clears them)
    tripped: bool = False  # cooled off since its last success: half-open once that ends
    on_trial: bool = False  # the half-open endpoint's one trial request is in flight
    running: int = 0
    waiting: int = 0
    external: int = 0  # probed requests that are not this router's own
    kv_cache_usage: float | None = None
    in_flight: int = 0
    peak_in_flight: int = 0
    latency_ms: float | None = None
    models: frozenset[str] | None = None
    max_model_len: dict[str, int] = field(default_factory=dict)
    last_error: str | None = None
    last_failure_at: float = 0.0
    last_probe: float = 0.0
    requests: int = 0
    failed_requests: int = 0
    cooldowns: int = 0
    affinity_requests: int = 0  # requests it took because it held their conversation's prefix
    root_url: str = field(init=False)
    shown: str = field(init=False)  # the URL without credentials: in attempts, reasons, logs

    def __post_init__(self) -> None:
        """Derive the server root (``/health`` and ``/metrics`` live there) and the shown URL."""
        parts = urlsplit(self.url)
        self.root_url = f"{parts.scheme}://{parts.netloc}"
        self.shown = shown_url(self.url)

    def load(self) -> int:
        """Return the requests on this endpoint: this router's in flight plus others' probed."""
        return self.in_flight + self.external

    def half_open(self, now: float) -> bool:
        """Say whether the cool-down is over but no request has succeeded since."""
        return self.tripped and now >= self.cooling_until

    def available(self, now: float) -> bool:
        """Say whether the endpoint may take a request now."""
        if self.healthy is False or now < self.cooling_until:
            return False
        return not (self.tripped and self.on_trial)

    def serves(self, model: str) -> bool:
        """Say whether the endpoint serves ``model`` (unknown until probed: assume yes)."""
        return self.models is None or model in self.models

    def fits(self, model: str, tokens: int | None) -> bool:
        """Say whether ``tokens`` (prompt plus output cap) fit the model's ``max_model_len``."""
        limit = self.max_model_len.get(model)
        return tokens is None or limit is None or tokens <= limit

    def status(self, now: float | None = None) -> str:
        """Return ``unknown``, ``down``, ``cooling``, ``half_open`` or ``up``."""
        now = time.monotonic() if now is None else now
        if self.healthy is False:
            return "down"
        if now < self.cooling_until:
            return "cooling"
        if self.tripped:
            return "half_open"
        return "unknown" if self.healthy is None else "up"

    def status_reason(self, now: float | None = None) -> str:
        """Say in a few words what state the endpoint is in and why."""
        now = time.monotonic() if now is None else now
        status = self.status(now)
        error = f": {self.last_error}" if self.last_error else ""
        if status == "down":
            return f"down{error}"
        if status == "cooling":
            return f"cooling off for {self.cooling_until - now:.0f} s more{error}"
        if status == "half_open":
            trial = "in flight" if self.on_trial else "next"
            return f"on trial after a cool-down (one request, {trial}){error}"
        return "not probed yet" if status == "unknown" else "up"


@dataclass(slots=True)
class Slot:
    """Room for one request on one endpoint, counted in its ``in_flight`` until released."""

    endpoint: GpuEndpoint
    trial: bool = False
    released: bool = False
    affinity: bool = False  # taken because the endpoint holds the conversation's prefix


@dataclass(slots=True)
class Ticket:
    """One request's business with the pool between graph nodes.

    ``slot`` is the room admitted for it; ``attempts`` the failed attempts of
    earlier runs of ``generate_gpu`` that raised for the node's retry (their
    update is lost, so they wait here), one per endpoint; ``tried`` those
    endpoints' URLs (as shown: without credentials).
    """

    request_id: str
    slot: Slot | None = None
    attempts: list[Attempt] = field(default_factory=list)
    expires: float = 0.0

    @property
    def tried(self) -> set[str]:
        """Return the URLs of the endpoints this request failed on."""
        return {url for a in self.attempts if (url := a.get("endpoint"))}

    def record(self, attempt: Attempt) -> list[Attempt]:
        """Add an attempt (replacing an earlier one on the same endpoint); return them all."""
        where = attempt.get("endpoint")
        kept = [a for a in self.attempts if where is None or a.get("endpoint") != where]
        self.attempts = [*kept, attempt]
        return list(self.attempts)
