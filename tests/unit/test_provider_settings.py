"""Serverless provider settings: presets, the LAMBDA_* names, the order, and clear errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest
from pydantic import ValidationError

from backends.catalog import get_catalog
from backends.providers import ServerlessProviders
from state.settings import Settings

KEY = "sk-provider-secret-0123456789"
MODEL = "llama3.1-8b-instruct"


def settings(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def refused(**values: Any) -> str:
    with pytest.raises(ValidationError) as caught:
        settings(**values)
    return str(caught.value)


def providers(config: Settings) -> ServerlessProviders:
    # no call is made: the clients only keep the (absent) HTTP client
    return ServerlessProviders(cast(Any, None), config.provider_specs())


def first_name(built: ServerlessProviders, model: str, **where: Any) -> str | None:
    found = built.first(model, **where)
    return found[0].name if found is not None else None


def test_a_preset_needs_only_its_key():
    config = settings(serverless_providers=f'[{{"preset": "deepinfra", "api_key": "{KEY}"}}]')
    (spec,) = config.provider_specs()
    assert spec.name == "deepinfra"
    assert spec.base_url == "https://api.deepinfra.com/v1/openai"
    assert spec.api_key is not None
    assert spec.api_key.get_secret_value() == KEY
    offer = spec.offers[MODEL]
    assert offer.name == "meta-llama/Meta-Llama-3.1-8B-Instruct"
    assert (offer.input_usd_per_mtok, offer.output_usd_per_mtok) == (0.055, 0.055)
    assert not config.emulated


def test_an_operator_price_replaces_the_presets():
    config = settings(
        serverless_providers=[
            {
                "preset": "deepinfra",
                "api_key": KEY,
                "models": {MODEL: {"input_usd_per_mtok": 0.03, "output_usd_per_mtok": 0.05}},
            }
        ]
    )
    offer = config.provider_specs()[0].offers[MODEL]
    assert (offer.input_usd_per_mtok, offer.output_usd_per_mtok) == (0.03, 0.05)
    assert offer.name == "meta-llama/Meta-Llama-3.1-8B-Instruct"  # the rest stays the preset's


def test_the_lambda_names_make_the_first_provider(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("LAMBDA_API_KEY", KEY)
    monkeypatch.setenv("LAMBDA_API_BASE", "https://inference.example.com/v1/")
    monkeypatch.setenv("SERVERLESS_PROVIDERS", '[{"preset": "groq", "api_key": "gsk-1"}]')
    config = settings()
    lambda_, groq = config.provider_specs()
    assert (lambda_.name, lambda_.base_url) == ("lambda", "https://inference.example.com/v1")
    assert lambda_.ends_on is None  # not Lambda's own API: nothing is winding down
    assert lambda_.offers[MODEL].context_window == 8192  # Lambda's own listing
    assert groq.name == "groq"
    assert [p.name for p in providers(config)] == ["lambda", "groq"]


def test_lambdas_own_api_is_marked_as_winding_down():
    (spec,) = settings(lambda_api_key=KEY).provider_specs()
    assert (spec.base_url, spec.ends_on) == ("https://api.lambda.ai/v1", "2025-09-25")


def test_no_key_and_no_providers_is_the_emulated_default():
    config = settings()
    assert config.provider_specs() == []
    assert config.emulated


def test_priority_orders_the_providers_and_disabled_ones_are_left_out():
    def entry(name: str, priority: int, enabled: bool = True) -> dict[str, Any]:
        return {
            "name": name,
            "base_url": f"https://{name}.example.com/v1",
            "priority": priority,
            "enabled": enabled,
            "models": {MODEL: {"input_usd_per_mtok": 1, "output_usd_per_mtok": 2}},
        }

    config = settings(
        serverless_providers=[entry("c", 3), entry("a", 1), entry("off", 0, False), entry("b", 1)]
    )
    built = providers(config)
    assert [p.name for p in built] == ["a", "b", "c"]
    assert [s.name for s in built.disabled] == ["off"]
    assert first_name(built, MODEL) == "a"
    assert first_name(built, MODEL, skip={"a"}) == "b"
    assert first_name(built, MODEL, skip={"a", "b", "c"}) is None
    assert first_name(built, "llama-4-scout-17b-16e-instruct") is None


def test_a_provider_whose_context_is_too_small_is_skipped():
    config = settings(
        lambda_api_key=KEY,
        serverless_providers=[{"preset": "deepinfra", "api_key": KEY, "priority": 1}],
    )
    built = providers(config)
    assert first_name(built, MODEL, tokens=4000) == "lambda"
    assert first_name(built, MODEL, tokens=20_000) == "deepinfra"  # over Lambda's 8,192
    assert "context window too small on lambda (8192 tokens)" in ServerlessProviders(
        cast(Any, None), [config.provider_specs()[0]]
    ).why_none(MODEL, 20_000)


def test_the_key_is_never_shown():
    config = settings(serverless_providers=[{"preset": "groq", "api_key": KEY}])
    assert KEY not in repr(config)
    assert KEY not in repr(config.provider_specs())
    assert KEY not in config.model_dump_json()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('[{"preset": "groq", ', "SERVERLESS_PROVIDERS is not valid JSON"),
        ('"groq"', "SERVERLESS_PROVIDERS must be a JSON list"),
        ('[{"name": "mine", "api_key": "k"}]', "provider 'mine' has no base_url"),
        ('[{"preset": "acme", "api_key": "k"}]', "preset 'acme' is unknown"),
        ('[{"preset": "groq", "apikey": "k"}]', "serverless_providers.0.apikey"),
        ('[{"name": "x", "base_url": "ftp://x/v1", "models": {}}]', "is not an http(s) URL"),
        ('[{"name": "x", "base_url": "https://x/v1"}]', "provider 'x' serves no model"),
        (
            '[{"name": "x", "base_url": "https://x/v1", "models": {"gpt-9": {"name": "g"}}}]',
            "model 'gpt-9' is not in the catalog",
        ),
        (
            '[{"name": "x", "base_url": "https://x/v1", "models": {"llama3.1-8b-instruct": {}}}]',
            'has no price; give "input_usd_per_mtok" and "output_usd_per_mtok"',
        ),
        (
            '[{"preset": "groq", "api_key": "a"}, {"preset": "groq", "api_key": "b"}]',
            "name 'groq' is used twice",
        ),
    ],
)
def test_a_bad_provider_list_says_what_to_fix(value: str, expected: str):
    message = refused(serverless_providers=value)
    assert expected in message
    assert KEY not in message


def test_a_second_lambda_provider_names_the_clash():
    message = refused(
        lambda_api_key=KEY, serverless_providers=[{"preset": "lambda", "api_key": "k2"}]
    )
    assert "LAMBDA_API_KEY makes a provider named lambda" in message


def test_providers_from_a_toml_file(tmp_path: Path):
    path = tmp_path / "providers.toml"
    path.write_text(
        '[[providers]]\npreset = "cerebras"\napi_key = "csk-1"\n\n'
        '[[providers]]\nname = "mine"\nbase_url = "https://llm.example.com/v1"\npriority = 5\n'
        '[providers.models."llama3.1-8b-instruct"]\n'
        'name = "llama-8b"\ninput_usd_per_mtok = 0.02\noutput_usd_per_mtok = 0.04\n'
    )
    config = settings(
        serverless_providers=[{"preset": "groq", "api_key": "g"}],
        serverless_providers_file=path,
    )
    assert [s.name for s in config.provider_specs()] == ["groq", "cerebras", "mine"]
    assert config.provider_specs()[2].offers[MODEL].name == "llama-8b"


def test_a_bad_toml_file_is_named(tmp_path: Path):
    path = tmp_path / "providers.toml"
    path.write_text('[[providers]]\npreset = "groq"\napi_kee = "x"\n')
    assert "provider 0: api_kee: Extra inputs are not permitted" in refused(
        serverless_providers_file=path
    )
    path.write_text("providers = [")
    assert "is not valid TOML" in refused(serverless_providers_file=path)
    assert "cannot be read" in refused(serverless_providers_file=tmp_path / "missing.toml")


def test_the_catalog_presets_cite_their_prices():
    catalog = get_catalog()
    assert {"lambda", "deepinfra", "cerebras", "groq"} <= set(catalog.providers)
    for name, preset in catalog.providers.items():
        assert preset.prices_source
        assert preset.prices_read_on
        for model_id, entry in preset.models.items():
            assert entry.input_usd_per_mtok is not None, (name, model_id)
            assert entry.output_usd_per_mtok is not None, (name, model_id)
            if entry.price_confirmed is False:
                assert entry.note, f"{name} {model_id}: an unconfirmed price says why"
    lambda_ = catalog.providers["lambda"]
    assert lambda_.ends_on == "2025-09-25"
    assert lambda_.models[MODEL].context_window == 8192
    assert lambda_.models["llama-4-maverick-17b-128e-instruct-fp8"].price_confirmed is False
    assert catalog.by_id["llama-4-maverick-17b-128e-instruct-fp8"].price_confirmed is False
