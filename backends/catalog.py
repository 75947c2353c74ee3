"""The model catalog: models, prices, context windows and provider presets, from ``models.toml``.

Loaded and validated once per process; the single source of truth for prices.
"""

from __future__ import annotations

import functools
import tomllib
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Literal, Protocol

from pydantic import BaseModel, Field, model_validator

from backends.providers import ProviderPreset

Backend = Literal["serverless", "gpu"]
# What a request may need of a model: tool calling, JSON mode, JSON-schema
# structured output, image input, token log-probabilities.
Capability = Literal["tools", "json_mode", "json_schema", "vision", "logprobs"]
CAPABILITIES: tuple[Capability, ...] = ("tools", "json_mode", "json_schema", "vision", "logprobs")


class Priced(Protocol):
    """Anything with a per-token price: a catalog model, or a provider's offer of one."""

    def cost_usd(self, prompt_tokens: int, completion_tokens: int) -> float:
        """Return the price of a request with these token counts."""
        ...


class ModelSpec(BaseModel, frozen=True):
    """One model of the catalog."""

    id: str
    input_usd_per_mtok: float = Field(ge=0.0)
    output_usd_per_mtok: float = Field(ge=0.0)
    context_window: int = Field(gt=0)
    tier: int = Field(ge=1, le=3)
    serverless: bool
    gpu: bool
    gpu_model_id: str | None = None
    capabilities: frozenset[Capability] = frozenset()
    price_confirmed: bool = True
    price_note: str | None = None

    def supports(self, needs: Iterable[str]) -> bool:
        """Say whether the model offers every capability in ``needs``."""
        return self.capabilities.issuperset(needs)

    def offered_on(self, backend: Backend) -> bool:
        """Say whether ``backend`` serves this model."""
        return self.serverless if backend == "serverless" else self.gpu

    def served_name(self, backend: Backend) -> str:
        """Return the model name to send to ``backend``."""
        if backend == "gpu" and self.gpu_model_id:
            return self.gpu_model_id
        return self.id

    def cost_usd(self, prompt_tokens: int, completion_tokens: int) -> float:
        """Return the serverless price of a request with these token counts."""
        return (
            prompt_tokens * self.input_usd_per_mtok + completion_tokens * self.output_usd_per_mtok
        ) / 1_000_000


class Catalog(BaseModel, frozen=True):
    """All models, with the date and source of their prices."""

    prices_read_on: str
    prices_source: str
    default_serverless_model: str
    models: tuple[ModelSpec, ...]
    providers: dict[str, ProviderPreset] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> Catalog:
        ids = [m.id for m in self.models]
        if len(set(ids)) != len(ids):
            raise ValueError(f"model ids repeat in the catalog: {ids}")
        if not any(m.serverless or m.gpu for m in self.models):
            raise ValueError("the catalog offers no model on any backend")
        if self.default_serverless_model not in ids:
            raise ValueError(
                f"default_serverless_model {self.default_serverless_model!r} is not in the catalog"
            )
        for name, preset in self.providers.items():
            unknown = sorted(set(preset.models) - set(ids))
            if unknown:
                raise ValueError(
                    f"provider preset {name!r} lists models not in the catalog: {unknown}"
                )
        return self

    @functools.cached_property
    def by_id(self) -> dict[str, ModelSpec]:
        """Map model id to its spec."""
        return {m.id: m for m in self.models}

    @functools.cached_property
    def by_price(self) -> tuple[ModelSpec, ...]:
        """Return the models from cheapest to dearest (output price weighs most).

        At equal prices the smaller tier comes first: it answers sooner.
        """
        return tuple(
            sorted(
                self.models,
                key=lambda m: (m.output_usd_per_mtok + m.input_usd_per_mtok / 4, m.tier),
            )
        )

    def ids(self) -> list[str]:
        """Return every model id."""
        return [m.id for m in self.models]

    def offered(self, backend: Backend) -> list[ModelSpec]:
        """Return the models ``backend`` serves."""
        return [m for m in self.models if m.offered_on(backend)]


def load_catalog(path: Path | None = None) -> Catalog:
    """Load and validate a catalog file (the packaged ``models.toml`` by default)."""
    if path is None:
        text = resources.files("backends").joinpath("models.toml").read_text("utf-8")
    else:
        text = path.read_text("utf-8")
    return Catalog.model_validate(tomllib.loads(text))


@functools.cache
def get_catalog() -> Catalog:
    """Return the packaged catalog, loaded once per process."""
    return load_catalog()
