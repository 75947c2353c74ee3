"""What an emulator serves and how it behaves: :class:`EmulatorConfig`."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, field_validator

Fault = Literal["none", "hang", "cut_stream", "bad_json", "no_usage", "abort"]

DEFAULT_MODELS = [
    "llama3.1-8b-instruct",
    "llama3.1-70b-instruct-fp8",
    "llama-4-scout-17b-16e-instruct",
    "llama-4-maverick-17b-128e-instruct-fp8",
]
DEFAULT_VISION_MODELS = [
    "llama-4-scout-17b-16e-instruct",
    "llama-4-maverick-17b-128e-instruct-fp8",
]


class EmulatorConfig(BaseModel):
    """How an emulator behaves: models served, latency, failures, limits, auth."""

    models: list[str] = Field(
        default_factory=lambda: list(DEFAULT_MODELS),
        min_length=1,
        description="Model ids served; requests for others get 404 model_not_found.",
    )
    vision_models: list[str] = Field(
        default_factory=lambda: list(DEFAULT_VISION_MODELS),
        description=(
            "Model ids that accept image_url content parts; images sent to any other "
            "model get 400, as vLLM answers for a text-only model."
        ),
    )
    ttft_ms: float = Field(default=0.0, ge=0.0, description="Time to first token, ms.")
    tpot_ms: float = Field(default=0.0, ge=0.0, description="Time per further output token, ms.")
    fail_rate: float = Field(
        default=0.0, ge=0.0, le=1.0, description="Share of chat requests answered fail_status."
    )
    fail_status: int = Field(default=500, ge=400, le=599, description="Status of failures.")
    retry_after_s: float | None = Field(
        default=None, ge=0.0, description="Retry-After header (seconds) sent with failures."
    )
    fault: Fault = Field(
        default="none",
        description=(
            "Misbehave on every chat request: hang (never answer), cut_stream (close the "
            "connection after a few streamed chunks; a whole answer is cut half way), "
            "bad_json (200 with a body that is not JSON), no_usage (a 200 answer without usage), "
            "abort (a 200 answer whose finish_reason is 'abort', as vLLM answers every request "
            "in flight when it is stopped)."
        ),
    )
    max_concurrency: int = Field(
        default=0, ge=0, description="Requests run at once (0 = unlimited); the rest queue."
    )
    api_key: str | None = Field(
        default=None,
        description="When set, the chat, models and _received routes require this bearer key.",
    )
    seed: int | None = Field(default=None, description="Seed of the fail-rate RNG.")
    name: str = Field(default="emulator", min_length=1, description="Name shown in answers.")

    @field_validator("models")
    @classmethod
    def _models_are_named(cls, models: list[str]) -> list[str]:
        if any(not m.strip() for m in models):
            raise ValueError("model ids must be non-empty strings")
        return models
