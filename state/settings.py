"""Process-wide configuration, read from the environment and a ``.env`` file.

The environment variable names are part of the contract with users of the
earlier setup (``LAMBDA_API_KEY``, ``GPU_ENDPOINTS``, ``SERVERLESS_RATIO``, ...).
Settings are read once per process (:func:`get_settings`) and never per request.
"""

from __future__ import annotations

import functools
import tomllib
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from backends.catalog import get_catalog
from backends.providers import ProviderConfig, ProviderSpec
from state.api_keys import RouterApiKeys

LAMBDA_PROVIDER = "lambda"
"""Name of the provider that ``LAMBDA_API_KEY`` / ``LAMBDA_API_BASE`` make."""

DEFAULT_DATABASE_URL = "sqlite:///./data/router.db"

OverBudgetPolicy = Literal["gpu", "downgrade", "reject"]

DEFAULT_GPU_HOURLY_USD = 2.29
"""One GH200 instance an hour, USD: public GH200 rental records, August to October 2026.

The records are the ones the project's issue #14 read (the earlier default,
$1.49, was older); no single public page with this figure is cited. Set
``GPU_HOURLY_COST_USD`` (or ``GPU_ENDPOINT_PRICES``) to what you pay.
"""


class BudgetLimits(BaseModel):
    """A daily and a monthly limit in USD; None means no limit for that window."""

    daily: float | None = Field(default=None, ge=0.0)
    monthly: float | None = Field(default=None, ge=0.0)


class EndpointPrice(BaseModel):
    """One GPU endpoint's instance type and hourly price (``GPU_ENDPOINT_PRICES``)."""

    model_config = ConfigDict(extra="forbid")

    instance_type: str | None = Field(default=None, min_length=1, max_length=64)
    hourly_usd: float = Field(ge=0.0)


class Settings(BaseSettings):
    """Every knob of the router, with the environment variable that sets it."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
    )

    lambda_api_key: SecretStr | None = Field(
        default=None,
        description="API key of Lambda's Inference API (winding down); set: the first "
        "serverless provider, named lambda.",
    )
    lambda_api_base: str = Field(
        default="https://api.lambda.ai/v1",
        description="Base URL of the lambda provider (any OpenAI-compatible API).",
    )
    serverless_providers: Annotated[list[ProviderConfig], NoDecode] = Field(
        default_factory=list,
        description='Serverless providers, JSON: [{"preset": "deepinfra", "api_key": "..."}, '
        '{"name": "mine", "base_url": "https://.../v1", "api_key": "...", "priority": 2, '
        '"models": {"llama3.1-8b-instruct": {"name": "...", "input_usd_per_mtok": 0.03, '
        '"output_usd_per_mtok": 0.05}}}].',
    )
    serverless_providers_file: Path | None = Field(
        default=None,
        description="A TOML file of serverless providers ([[providers]] tables, the fields "
        "of SERVERLESS_PROVIDERS), added after them.",
    )
    gpu_endpoints: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated base URLs of the vLLM GPU servers, e.g. http://10.0.0.5:8000/v1.",
    )
    gpu_api_key: SecretStr | None = Field(
        default=None, description="API key the vLLM servers expect (their --api-key), if any."
    )
    serverless_ratio: float = Field(
        default=0.8,
        ge=0.0,
        le=1.0,
        description="Largest share of traffic that may go to serverless (0 sends all to GPU).",
    )
    disable_lambda_labs: bool = Field(
        default=False, description="True: never use any serverless provider."
    )
    lambda_daily_budget: float = Field(
        default=50.0, ge=0.0, description="Daily serverless budget in USD."
    )
    lambda_monthly_budget: float = Field(
        default=1000.0, ge=0.0, description="Monthly serverless budget in USD."
    )
    over_budget_policy: OverBudgetPolicy = Field(
        default="gpu",
        description="What an over-budget request does: gpu, downgrade or reject.",
    )
    database_url: str = Field(
        default=DEFAULT_DATABASE_URL,
        description="SQLAlchemy URL of the ledger (SQLite file by default, PostgreSQL at scale).",
    )
    database_schema: str | None = Field(
        default=None, description="PostgreSQL schema of the ledger's tables (search_path)."
    )
    auto_migrate: bool = Field(
        default=True, description="Apply the ledger's migrations on first use."
    )
    budget_timezone: str = Field(
        default="UTC", description="Time zone of the budgets' calendar days and months."
    )
    reservation_ttl_s: float = Field(
        default=600.0,
        gt=0.0,
        description="Seconds after which a reservation left by a crashed process expires.",
    )
    budget_estimate_margin: float = Field(
        default=1.1,
        ge=1.0,
        description="Factor on the estimated prompt tokens of a reservation (never below 1).",
    )
    user_budgets: dict[str, BudgetLimits] = Field(
        default_factory=dict,
        description='Per-user budgets, JSON: {"alice": {"daily": 5, "monthly": 100}}.',
    )
    team_budgets: dict[str, BudgetLimits] = Field(
        default_factory=dict,
        description='Per-team budgets, JSON: {"search": {"daily": 20, "monthly": 400}}.',
    )
    alert_webhook_url: SecretStr | None = Field(
        default=None,
        description="Slack-compatible webhook that receives budget alerts (a secret URL).",
    )
    gpu_instance_type: str = Field(default="gh200", description="GPU instance type of the pool.")
    gpu_hourly_cost_usd: float = Field(
        default=DEFAULT_GPU_HOURLY_USD,
        ge=0.0,
        description="Cost of one GPU instance per hour, USD, for endpoints without a price "
        "in GPU_ENDPOINT_PRICES. Default: one GH200 (public rental records, Aug-Oct 2026).",
    )
    gpu_endpoint_prices: dict[str, EndpointPrice] = Field(
        default_factory=dict,
        description='Per-endpoint instance type and price, JSON: {"http://10.0.0.5:8000/v1": '
        '{"instance_type": "h100", "hourly_usd": 2.99}}; an endpoint left out costs '
        "GPU_HOURLY_COST_USD as GPU_INSTANCE_TYPE.",
    )
    gpu_heartbeat_s: float = Field(
        default=60.0,
        gt=0.0,
        description="Seconds between the pool-membership heartbeats the router writes to the "
        "ledger (the hours the pool is charged for).",
    )
    gpu_concurrency_per_endpoint: int = Field(
        default=16,
        ge=1,
        description="Requests one GPU endpoint takes (running + waiting) before it counts as busy.",
    )
    gpu_cooldown_s: float = Field(
        default=30.0, ge=0.0, description="Seconds a failed GPU endpoint is skipped."
    )
    gpu_health_interval_s: float = Field(
        default=5.0, gt=0.0, description="Seconds between health and load probes of the pool."
    )
    gpu_affinity_margin: int = Field(
        default=2,
        ge=0,
        description="Requests more than the least-loaded GPU endpoint that the endpoint holding "
        "a conversation's earlier turns (in its prefix cache) may carry and still take the "
        "next turn (0: only when it is as little loaded).",
    )
    response_cache_ttl_s: float = Field(
        default=3600.0,
        ge=0.0,
        description="Seconds a cached answer is served again (0 turns the response cache off). "
        "Only requests with temperature 0 and no tools are cached.",
    )
    response_cache_shared: bool = Field(
        default=False,
        description="True: one user's cached answer may serve another user's identical request.",
    )
    redis_url: str | None = Field(
        default=None,
        description="Redis URL (redis://host:6379/0) for the response cache; unset: the ledger's "
        "database holds it.",
    )
    gpu_kv_cache_busy: float = Field(
        default=0.9,
        ge=0.0,
        le=1.0,
        description="KV-cache usage (vLLM's kv_cache_usage_perc, 0..1) above which a GPU "
        "endpoint counts as busy.",
    )
    default_max_tokens: int = Field(
        default=1024,
        ge=1,
        description="Output cap sent to the backend when the caller gives no max_tokens.",
    )
    request_timeout_s: float = Field(
        default=120.0, gt=0.0, description="Timeout of one backend call, seconds."
    )
    connect_timeout_s: float = Field(
        default=5.0, gt=0.0, description="Timeout to connect to a backend, seconds."
    )
    http_keepalive_s: float = Field(
        default=4.0,
        ge=0.0,
        description=(
            "How long an idle connection to a backend is kept for reuse, seconds. Below the "
            "backends' own idle timeout (vLLM's server closes idle connections after 5 s), so "
            "the router never sends a request on a connection the server is closing."
        ),
    )
    emulator_ttft_ms: float = Field(
        default=40.0, ge=0.0, description="Time to first token of the built-in emulators."
    )
    emulator_tpot_ms: float = Field(
        default=4.0, ge=0.0, description="Time per output token of the built-in emulators."
    )
    router_admin_users: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Users (of ROUTER_API_KEYS) who may set budgets, comma-separated.",
    )
    router_api_keys: Annotated[RouterApiKeys, NoDecode] = Field(
        default_factory=RouterApiKeys,
        description="API keys of the gateway and the graph API, comma-separated "
        "key:user[:team] entries; unset: no authentication.",
    )
    max_request_bytes: int = Field(
        default=4 * 1024 * 1024,
        gt=0,
        description="Largest request body the gateway reads, in bytes; a larger one is "
        "answered 413 before it is read.",
    )
    max_header_bytes: int = Field(
        default=32 * 1024,
        ge=1024,
        description="Largest request line plus headers hybrid-router serve reads, in bytes; "
        "more is answered 431.",
    )
    max_header_count: int = Field(
        default=100,
        ge=10,
        description="Most request headers hybrid-router serve reads; more are answered 431.",
    )

    batch_concurrency: int = Field(
        default=8,
        ge=1,
        le=1024,
        description="Lines of one POST /v1/batch/chat/completions call run at once.",
    )
    batch_max_lines: int = Field(
        default=1000,
        ge=1,
        description="Most lines one POST /v1/batch/chat/completions call may carry.",
    )

    _provider_specs: list[ProviderSpec] = PrivateAttr(default_factory=list)

    @field_validator("serverless_providers", mode="before")
    @classmethod
    def _parse_providers(cls, value: object) -> object:
        if isinstance(value, str):
            if not value.strip():
                return []
            try:
                value = orjson.loads(value)
            except orjson.JSONDecodeError as exc:
                raise ValueError(
                    f"SERVERLESS_PROVIDERS is not valid JSON ({exc}); give a JSON list such as "
                    '[{"preset": "deepinfra", "api_key": "..."}]'
                ) from None
        if isinstance(value, dict):
            value = [value]
        if not isinstance(value, list):
            raise ValueError(
                "SERVERLESS_PROVIDERS must be a JSON list of providers, e.g. "
                '[{"preset": "deepinfra", "api_key": "..."}]'
            )
        return value

    @model_validator(mode="after")
    def _resolve_providers(self) -> Settings:
        """Apply presets, read the providers file, and check every provider once."""
        configs = list(self.serverless_providers)
        path = self.serverless_providers_file
        if path is not None:
            configs += _read_providers_file(path)
        catalog = get_catalog()
        specs: list[ProviderSpec] = []
        if self.lambda_api_key is not None:
            specs.append(self.lambda_provider())
        for index, config in enumerate(configs):
            try:
                specs.append(config.resolve(catalog))
            except ValueError as exc:
                raise ValueError(
                    f"serverless provider {index} (SERVERLESS_PROVIDERS): {exc}"
                ) from None
        names = [spec.name for spec in specs]
        for name in names:
            if names.count(name) > 1:
                why = (
                    " (LAMBDA_API_KEY makes a provider named lambda)"
                    if name == LAMBDA_PROVIDER
                    else ""
                )
                raise ValueError(
                    f"serverless provider name {name!r} is used twice{why}; give each a distinct "
                    '"name"'
                )
        self._provider_specs = specs
        return self

    def lambda_provider(self) -> ProviderSpec:
        """Return the provider the LAMBDA_* settings make (the catalog's lambda preset)."""
        config = ProviderConfig(
            name=LAMBDA_PROVIDER,
            preset=LAMBDA_PROVIDER,
            base_url=self.lambda_api_base,
            api_key=self.lambda_api_key,
        )
        return config.resolve(get_catalog())

    def provider_specs(self) -> list[ProviderSpec]:
        """Return every configured serverless provider, LAMBDA_* first, each resolved."""
        return list(self._provider_specs)

    @field_validator("gpu_endpoints", "router_admin_users", mode="before")
    @classmethod
    def _split_endpoints(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("gpu_endpoints")
    @classmethod
    def _check_endpoints(cls, value: list[str]) -> list[str]:
        for url in value:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError(
                    f"GPU_ENDPOINTS entry {url!r} is not an http(s) URL; "
                    "give base URLs such as http://10.0.0.5:8000/v1, comma-separated"
                )
        return [url.rstrip("/") for url in value]

    @field_validator("gpu_endpoint_prices")
    @classmethod
    def _strip_price_urls(cls, value: dict[str, EndpointPrice]) -> dict[str, EndpointPrice]:
        return {url.rstrip("/"): price for url, price in value.items()}

    @model_validator(mode="after")
    def _priced_endpoints_exist(self) -> Settings:
        unknown = sorted(set(self.gpu_endpoint_prices) - set(self.gpu_endpoints))
        if unknown:
            raise ValueError(
                f"GPU_ENDPOINT_PRICES names {unknown[0]!r}, which is not in GPU_ENDPOINTS; "
                "key each price by one of the GPU_ENDPOINTS URLs exactly"
            )
        return self

    def endpoint_price(self, url: str) -> tuple[str, float]:
        """Return the instance type and hourly USD price of the GPU endpoint at ``url``."""
        price = self.gpu_endpoint_prices.get(url.rstrip("/"))
        if price is None:
            return self.gpu_instance_type, self.gpu_hourly_cost_usd
        return price.instance_type or self.gpu_instance_type, price.hourly_usd

    @field_validator("lambda_api_base")
    @classmethod
    def _check_api_base(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(
                f"LAMBDA_API_BASE {value!r} is not an http(s) URL; e.g. https://api.lambda.ai/v1"
            )
        return value.rstrip("/")

    @field_validator("database_url")
    @classmethod
    def _absolute_sqlite_path(cls, value: str) -> str:
        """Resolve a relative SQLite path once, when the settings are read.

        SQLAlchemy resolves it with ``os.getcwd()`` each time it builds an
        engine, which the LangGraph dev server refuses on the event loop.
        """
        for prefix in ("sqlite:///", "sqlite+aiosqlite:///"):
            if value.startswith(prefix):
                path = value[len(prefix) :]
                if path and path != ":memory:" and not path.startswith(("/", "file:")):
                    return prefix + str(Path(path).resolve())
        return value

    @field_validator("budget_timezone")
    @classmethod
    def _check_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(
                f"BUDGET_TIMEZONE {value!r} is not a known time zone; use e.g. UTC or Europe/Paris"
            ) from exc
        return value

    @field_validator("lambda_api_key", "gpu_api_key", "alert_webhook_url", mode="before")
    @classmethod
    def _blank_is_none(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @property
    def zone(self) -> ZoneInfo:
        """Return the budgets' time zone."""
        return ZoneInfo(self.budget_timezone)

    @property
    def emulated(self) -> bool:
        """True when neither a serverless provider nor GPU endpoints are configured."""
        return not self._provider_specs and not self.gpu_endpoints

    @property
    def async_database_url(self) -> str:
        """Return the ledger URL with an async driver (aiosqlite or asyncpg)."""
        url = self.database_url
        for prefix, driver in (
            ("sqlite://", "sqlite+aiosqlite://"),
            ("postgresql://", "postgresql+asyncpg://"),
            ("postgres://", "postgresql+asyncpg://"),
        ):
            if url.startswith(prefix):
                return driver + url[len(prefix) :]
        return url

    def sqlite_path(self) -> Path | None:
        """Return the SQLite file of the ledger, or None for other databases."""
        url = self.async_database_url
        prefix = "sqlite+aiosqlite:///"
        if not url.startswith(prefix) or url.endswith(":memory:"):
            return None
        return Path(url[len(prefix) :])


def _read_providers_file(path: Path) -> list[ProviderConfig]:
    """Read the ``[[providers]]`` tables of a TOML file."""
    where = f"SERVERLESS_PROVIDERS_FILE {str(path)!r}"
    try:
        data = tomllib.loads(path.read_text("utf-8"))
    except OSError as exc:
        raise ValueError(
            f"{where} cannot be read ({exc.strerror}); give the path of a TOML file"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{where} is not valid TOML ({exc})") from None
    entries = data.get("providers")
    if not isinstance(entries, list):
        raise ValueError(
            f"{where} has no [[providers]] tables; write one table per provider, e.g. "
            '[[providers]] with preset = "deepinfra" and api_key = "..."'
        )
    configs = []
    for index, entry in enumerate(entries):
        try:
            configs.append(ProviderConfig.model_validate(entry))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'entry'}: {e['msg']}" for e in exc.errors()
            )
            raise ValueError(f"{where}, provider {index}: {problems}") from None
    return configs


@functools.cache
def get_settings() -> Settings:
    """Return the process's settings, read once."""
    return Settings()
