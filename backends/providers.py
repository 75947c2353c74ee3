"""Serverless providers: several OpenAI-compatible APIs, tried in order of priority.

A provider is a base URL, an API key (a secret: never logged, returned or
stored), and the catalog models it serves, each under the provider's own model
name and at the provider's own price. Operators configure them by hand
(``SERVERLESS_PROVIDERS``, JSON, or ``SERVERLESS_PROVIDERS_FILE``, TOML), either
in full or by naming a preset of the catalog (``models.toml``'s
``[providers.*]`` tables) and giving only the key.

:class:`ProviderConfig` is what an operator writes; it is validated when the
settings are read, so a mistake stops the process with a message that names
the field. :class:`ServerlessProviders` holds one client per provider, built
once per process, and answers which providers may take a request, in order.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from backends.openai_compat import OpenAICompatClient

if TYPE_CHECKING:
    import httpx

    from backends.catalog import Catalog


class ProviderModel(BaseModel, frozen=True):
    """One catalog model on one provider: its name there, its price and context window.

    In an operator's configuration every field may be left out when a preset
    gives it; what is given replaces the preset's value.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = Field(
        default=None, min_length=1, description="The provider's name of the model."
    )
    input_usd_per_mtok: float | None = Field(default=None, ge=0.0)
    output_usd_per_mtok: float | None = Field(default=None, ge=0.0)
    context_window: int | None = Field(default=None, gt=0)
    price_confirmed: bool | None = Field(
        default=None, description="False: the price could not be read from a source."
    )
    note: str | None = None

    def merged(self, override: ProviderModel) -> ProviderModel:
        """Return this entry with every field ``override`` sets replaced."""
        return self.model_copy(update=override.model_dump(exclude_none=True))


class ProviderOffer(BaseModel, frozen=True):
    """A catalog model as one provider serves it, every field resolved."""

    model_id: str
    name: str
    input_usd_per_mtok: float = Field(ge=0.0)
    output_usd_per_mtok: float = Field(ge=0.0)
    context_window: int | None = None
    price_confirmed: bool = True

    def cost_usd(self, prompt_tokens: int, completion_tokens: int) -> float:
        """Return the provider's price of a request with these token counts."""
        return (
            prompt_tokens * self.input_usd_per_mtok + completion_tokens * self.output_usd_per_mtok
        ) / 1_000_000

    def fits(self, tokens: int | None) -> bool:
        """Say whether ``tokens`` (prompt plus output cap) fit this provider's context window."""
        return tokens is None or self.context_window is None or tokens <= self.context_window


class ProviderPreset(BaseModel, frozen=True):
    """A provider the catalog knows: its URL, model names and published prices."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_url: str
    prices_source: str
    prices_read_on: str
    ends_on: str | None = Field(
        default=None, description="The date the provider announced it stops serving (winding down)."
    )
    note: str | None = None
    models: dict[str, ProviderModel]


def _check_url(where: str, url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(
            f"{where} {url!r} is not an http(s) URL; give the API's base URL, "
            "e.g. https://api.deepinfra.com/v1/openai"
        )
    return url.rstrip("/")


class ProviderConfig(BaseModel):
    """One serverless provider as an operator writes it.

    Either name a ``preset`` of the catalog and give its ``api_key``, or give
    ``name``, ``base_url``, ``api_key`` and ``models`` in full. ``priority``:
    lower numbers are tried first (equal ones in the order given).
    """

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=64)
    preset: str | None = None
    base_url: str | None = None
    api_key: SecretStr | None = Field(default=None, repr=False)
    priority: int = 0
    enabled: bool = True
    models: dict[str, ProviderModel] = Field(default_factory=dict)

    def resolve(self, catalog: Catalog) -> ProviderSpec:
        """Apply the preset and check the result against the catalog.

        Raises:
            ValueError: a preset, field or model that does not exist, or a
                model without a price; the message says what to write.
        """
        preset: ProviderPreset | None = None
        if self.preset is not None:
            preset = catalog.providers.get(self.preset)
            if preset is None:
                known = ", ".join(sorted(catalog.providers)) or "none"
                raise ValueError(
                    f"preset {self.preset!r} is unknown; the catalog's presets are: {known}"
                )
        name = self.name or self.preset
        if name is None:
            raise ValueError('give "name" (or a "preset", whose name is used)')
        base_url = self.base_url or (preset.base_url if preset else None)
        if base_url is None:
            raise ValueError(
                f"provider {name!r} has no base_url; give the API's base URL "
                '(e.g. "base_url": "https://api.example.com/v1") or a known "preset"'
            )
        base_url = _check_url(f"provider {name!r} base_url", base_url)
        entries = dict(preset.models) if preset else {}
        for model_id, entry in self.models.items():
            entries[model_id] = entries[model_id].merged(entry) if model_id in entries else entry
        if not entries:
            raise ValueError(
                f'provider {name!r} serves no model; give "models", e.g. '
                '{"llama3.1-8b-instruct": {"name": "meta-llama/Meta-Llama-3.1-8B-Instruct", '
                '"input_usd_per_mtok": 0.03, "output_usd_per_mtok": 0.05}}'
            )
        offers: dict[str, ProviderOffer] = {}
        for model_id, entry in entries.items():
            if model_id not in catalog.by_id:
                raise ValueError(
                    f"provider {name!r}: model {model_id!r} is not in the catalog; "
                    f"use one of: {', '.join(catalog.ids())}"
                )
            if entry.input_usd_per_mtok is None or entry.output_usd_per_mtok is None:
                raise ValueError(
                    f"provider {name!r}: model {model_id!r} has no price; give "
                    '"input_usd_per_mtok" and "output_usd_per_mtok" (USD per million tokens)'
                )
            offers[model_id] = ProviderOffer(
                model_id=model_id,
                name=entry.name or model_id,
                input_usd_per_mtok=entry.input_usd_per_mtok,
                output_usd_per_mtok=entry.output_usd_per_mtok,
                context_window=entry.context_window,
                price_confirmed=entry.price_confirmed is not False,
            )
        return ProviderSpec(
            name=name,
            base_url=base_url,
            api_key=self.api_key,
            priority=self.priority,
            enabled=self.enabled,
            offers=offers,
            # winding down when it is the preset's own API, not another at the same names
            ends_on=preset.ends_on if preset and base_url == preset.base_url.rstrip("/") else None,
        )

    @model_validator(mode="after")
    def _check_base_url(self) -> ProviderConfig:
        if self.base_url is not None:
            self.base_url = _check_url("base_url", self.base_url)
        return self


@dataclass(frozen=True, slots=True)
class ProviderSpec:
    """A provider with every field resolved: what the router builds a client for."""

    name: str
    base_url: str
    api_key: SecretStr | None = field(repr=False)
    priority: int
    enabled: bool
    offers: dict[str, ProviderOffer]
    ends_on: str | None = None


@dataclass(slots=True)
class ServerlessProvider:
    """One provider and its client (sharing the process's HTTP connection pool)."""

    spec: ProviderSpec
    client: OpenAICompatClient

    @property
    def name(self) -> str:
        """Return the provider's name."""
        return self.spec.name

    def offer(self, model_id: str, tokens: int | None = None) -> ProviderOffer | None:
        """Return how this provider serves ``model_id`` for ``tokens``, or None if it cannot."""
        offer = self.spec.offers.get(model_id)
        return offer if offer is not None and offer.fits(tokens) else None


class ServerlessProviders:
    """The enabled providers in the order they are tried."""

    def __init__(self, http: httpx.AsyncClient, specs: list[ProviderSpec]) -> None:
        """Build one client per enabled provider, ordered by priority (stable)."""
        ordered = sorted((s for s in specs if s.enabled), key=lambda s: s.priority)
        self.disabled = [s for s in specs if not s.enabled]
        self.providers = [
            ServerlessProvider(
                spec,
                OpenAICompatClient(http, spec.base_url, backend=spec.name, api_key=spec.api_key),
            )
            for spec in ordered
        ]
        self.by_name = {p.name: p for p in self.providers}

    def __bool__(self) -> bool:
        """Truthy when at least one provider is enabled."""
        return bool(self.providers)

    def __iter__(self) -> Iterator[ServerlessProvider]:
        """Iterate over the enabled providers in order."""
        return iter(self.providers)

    def serving(
        self,
        model_id: str,
        tokens: int | None = None,
        skip: frozenset[str] | set[str] = frozenset(),
    ) -> list[tuple[ServerlessProvider, ProviderOffer]]:
        """Return the providers but ``skip`` that may take ``model_id`` for ``tokens``, in order."""
        found = []
        for provider in self.providers:
            if provider.name in skip:
                continue
            offer = provider.offer(model_id, tokens)
            if offer is not None:
                found.append((provider, offer))
        return found

    def first(
        self,
        model_id: str,
        tokens: int | None = None,
        skip: frozenset[str] | set[str] = frozenset(),
    ) -> tuple[ServerlessProvider, ProviderOffer] | None:
        """Return the first provider that may take ``model_id``, or None."""
        found = self.serving(model_id, tokens, skip)
        return found[0] if found else None

    def why_none(self, model_id: str, tokens: int | None = None) -> str:
        """Say why no provider takes ``model_id`` for ``tokens``."""
        if not self.providers:
            return "no serverless provider is configured (SERVERLESS_PROVIDERS or LAMBDA_API_KEY)"
        short = [
            f"{p.name} ({offer.context_window} tokens)"
            for p in self.providers
            if (offer := p.spec.offers.get(model_id)) is not None and not offer.fits(tokens)
        ]
        if short:
            return (
                f"no serverless provider takes {model_id} for {tokens} tokens: "
                f"context window too small on {', '.join(short)}"
            )
        return f"no serverless provider serves {model_id}"
