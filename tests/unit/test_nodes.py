"""Unit tests of the nodes' decisions: no network."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from backends.catalog import Catalog, get_catalog, load_catalog
from backends.gpu_pool import _parse_gauges
from backends.tokens import count_message_tokens, count_text_tokens
from nodes.analyze_complexity import (
    HIGH_THRESHOLD,
    complexity_level,
    complexity_score,
    score_features,
)
from nodes.choose_backend import serverless_bucket
from nodes.generation import next_backend
from nodes.select_model import pick_model, required_tier


def score(text: str, max_tokens: int | None = None) -> float:
    messages = [{"role": "user", "content": text}]
    return complexity_score(score_features(messages, count_message_tokens(messages), max_tokens))


def test_complexity_grows_with_what_the_request_asks():
    greeting = score("Hello!")
    code = score("Write a python function `def parse(x):` that parses dates, with unit tests.")
    analysis = score(
        "Analyze and compare three architectures step by step. First evaluate cost, "
        "then assess latency, finally recommend one and justify it in a table.\n"
        "1. cost\n2. latency\n3. risk"
    )
    assert greeting < 0.1
    assert greeting < code < analysis
    assert complexity_level(analysis) == "high"
    assert complexity_level(greeting) == "low"


def test_complexity_counts_requested_output_and_length():
    assert score("Tell me a story.", max_tokens=4000) > score("Tell me a story.")
    assert score("word " * 3000) > score("word " * 30)


def test_level_thresholds():
    assert complexity_level(HIGH_THRESHOLD) == "high"
    assert complexity_level(HIGH_THRESHOLD - 0.01) == "medium"
    assert complexity_level(0.0) == "low"


@pytest.mark.parametrize(
    ("level", "priority", "tier"),
    [
        ("low", "balanced", 1),
        ("medium", "balanced", 2),
        ("high", "balanced", 3),
        ("high", "low_cost", 2),
        ("low", "low_cost", 1),
        ("low", "performance", 2),
        ("high", "performance", 3),
        ("medium", "latency_critical", 1),
        ("high", "latency_critical", 2),
    ],
)
def test_required_tier(level, priority, tier):
    assert required_tier(level, priority) == tier


def test_pick_model_prefers_cheapest_of_tier_and_checks_context():
    catalog = get_catalog()
    assert pick_model(catalog, "serverless", 2, 100, 100).id == "llama-4-scout-17b-16e-instruct"
    # Scout's window is 16k: a 20k prompt moves to a model that fits
    bigger = pick_model(catalog, "serverless", 2, 20_000, 1000)
    assert bigger is not None
    assert bigger.context_window >= 21_000
    # the GPU pool has no tier-3 model: best that fits
    assert pick_model(catalog, "gpu", 3, 100, 100).id == "llama3.1-70b-instruct-fp8"
    assert pick_model(catalog, "gpu", 1, 200_000, 10) is None


def test_catalog_prices_and_validation(tmp_path: Path):
    catalog = get_catalog()
    small = catalog.by_id["llama3.1-8b-instruct"]
    assert small.cost_usd(1_000_000, 1_000_000) == pytest.approx(
        small.input_usd_per_mtok + small.output_usd_per_mtok
    )
    assert catalog.prices_read_on
    bad = tmp_path / "models.toml"
    bad.write_text(
        'prices_read_on = "x"\nprices_source = "x"\ndefault_serverless_model = "a"\n'
        '[[models]]\nid = "a"\ninput_usd_per_mtok = -1\noutput_usd_per_mtok = 1\n'
        "context_window = 10\ntier = 1\nserverless = true\ngpu = false\n"
    )
    with pytest.raises(ValueError, match="input_usd_per_mtok"):
        load_catalog(bad)
    assert isinstance(catalog, Catalog)


def test_token_counts_are_stable_and_offline():
    assert count_text_tokens("") == 0
    assert count_text_tokens("Hello world") == 2
    # special-token markers in user text count as text, never as control tokens
    assert count_text_tokens("<|endoftext|>") > 1
    one = count_message_tokens([{"role": "user", "content": "Hello world"}])
    two = count_message_tokens(
        [{"role": "user", "content": "Hello world"}, {"role": "assistant", "content": "Hi"}]
    )
    assert two > one > 2


def test_serverless_bucket_is_uniform_enough():
    import uuid

    buckets = [serverless_bucket(uuid.uuid4().hex) for _ in range(5000)]
    assert all(0 <= b < 1 for b in buckets)
    share = sum(b < 0.8 for b in buckets) / len(buckets)
    assert 0.76 < share < 0.84
    assert serverless_bucket("abc") == serverless_bucket("abc")


def test_next_backend_respects_allowed_and_tried():
    state = {"allowed_backends": ["serverless", "gpu"], "attempts": []}
    assert next_backend(state, "serverless") == "gpu"
    assert next_backend({**state, "allowed_backends": ["gpu"]}, "gpu") is None
    tried = {**state, "attempts": [{"backend": "gpu", "status": "failed"}]}
    assert next_backend(tried, "serverless") is None


def test_vllm_gauges_are_parsed():
    text = (
        "# HELP vllm:num_requests_running x\n"
        'vllm:num_requests_running{model_name="a"} 3.0\n'
        'vllm:num_requests_waiting{model_name="a"} 2.0\n'
        'vllm:num_requests_running{model_name="b"} 1.0\n'
    )
    assert _parse_gauges(text) == (4, 2)


def test_long_prompts_are_scored_on_their_head_and_tail():
    from nodes.analyze_complexity import SCAN_CHARS, scanned_text

    ask = "Analyze and compare these step by step, then recommend one in a table:\n"
    document = "plain filler sentence without anything special. " * 20_000
    messages = [{"role": "user", "content": ask + document + "\nFinally justify it."}]
    sample = scanned_text(messages)
    assert len(sample) == 2 * SCAN_CHARS + 1
    assert sample.startswith(ask)
    assert sample.endswith("Finally justify it.")
    tokens = count_message_tokens(messages)
    sampled = [{"role": "user", "content": sample}]
    assert score_features(messages, tokens, None) == score_features(sampled, tokens, None)
    assert complexity_level(complexity_score(score_features(messages, tokens, None))) == "high"
    short = [{"role": "user", "content": ask}]
    assert scanned_text(short) == ask


def test_long_texts_are_counted_once_and_the_count_stays_exact():
    from backends import tokens

    text = "Compare event sourcing with CRUD, step by step. " * 200
    exact = len(tokens._encoding().encode_ordinary(text))
    tokens.clear_token_cache()
    assert count_text_tokens(text) == exact
    assert count_text_tokens(text) == exact  # from the cache
    # one character more is another text, counted afresh
    assert count_text_tokens(text + "!") == len(tokens._encoding().encode_ordinary(text + "!"))
    # the cache keeps digests, at most CACHE_ENTRIES of them
    cache = tokens._CountCache(entries=3)
    texts = [f"{i} " + text for i in range(5)]
    counts = [cache.count(t) for t in texts]
    assert len(cache._counts) == 3
    assert all(isinstance(key, bytes) and len(key) == 16 for key in cache._counts)
    assert [cache.count(t) for t in texts] == counts


# The features' plain definition: one case-insensitive regex per feature over the
# scanned text. analyze_complexity reads the same features faster (word sets and
# a few regexes that can skip ahead); both must agree.
_PLAIN = {
    "code": re.compile(
        r"```|\bdef\s+\w+\(|\bclass\s+\w+|\bfunction\s+\w+\(|\bimport\s+\w+|#include|"
        r"\bSELECT\b.+\bFROM\b|=>|\bconsole\.log\b|\b(?:python|javascript|typescript|rust|"
        r"golang|sql|regex|refactor|debug|stack trace|compile|unit tests?)\b",
        re.IGNORECASE | re.DOTALL,
    ),
    "math": re.compile(
        r"\b(?:prove|proof|theorem|integral|derivative|equation|matrix|probability|"
        r"eigen\w*|lemma|optimi[sz]e|calculate|compute)\b|[=<>]\s*\d|\d\s*[\^*/+-]\s*\d|[∑∫√π]",
        re.IGNORECASE,
    ),
    "multi_step": re.compile(
        r"\bstep[- ]by[- ]step\b|\bsteps?\b|\bfirst\b|\bthen\b|\bfinally\b|\bafter that\b|"
        r"\bnext\b|^\s*(?:\d+[.)]|[-*•])\s+",
        re.IGNORECASE | re.MULTILINE,
    ),
    "reasoning": re.compile(
        r"\b(?:analy[sz]e|analysis|compare|comparison|evaluate|assess|trade-?offs?|"
        r"pros and cons|critique|justify|explain why|design|architecture|strategy|recommend|"
        r"implications?|in depth|detailed|comprehensive|root cause)\b",
        re.IGNORECASE,
    ),
    "structured_output": re.compile(
        r"\b(?:json|yaml|xml|csv|schema|table|markdown table|structured)\b", re.IGNORECASE
    ),
}
_CAPS = {"code": 1, "math": 3, "multi_step": 4, "reasoning": 3, "structured_output": 1}
_TEXTS = [
    "Hello!",
    "Explain this step by step.",
    "Write a python function `def parse(x):` that parses dates, with unit tests.",
    "Analyze and compare three architectures step by step. First evaluate cost, then "
    "assess latency, finally recommend one and justify it in a table.\n1. cost\n2. latency",
    "Prove that the integral of x^2 from 0 to 1 equals 1/3; compute 2 * 4 and 7+1.",
    "Eigenvalues and eigenvectors of this matrix, please. ∑ over i of π.",
    "We have a subclass Foo and an undef bar( call; SELECT name FROM users; x => y.",
    "Give the pros and cons, explain why, in depth: the root cause and trade-offs, "
    "tradeoff analysis. After that, step-by-step, the next steps.",
    "- first item\n* second item\n• third\n  3) fourth\n\n\n- fifth",
    "Return JSON matching this schema; a markdown table is fine. console.log(x)",
    "#include <stdio.h>\nimport os\nclass A: pass\nfunction go() {}",
    "The quarterly report covers revenue across regions, with notes on hiring. " * 50,
    "Stack trace attached. Can you debug and refactor this Rust code? Optimise it.",
    "Café naïve résumé: prüfe den Beweis, bitte. Übersetze 3 Sätze.",
]


@pytest.mark.parametrize("text", _TEXTS)
def test_fast_features_agree_with_their_plain_regexes(text):
    from nodes.analyze_complexity import feature_counts, scanned_text

    sample = scanned_text([{"role": "user", "content": text}])
    fast = feature_counts(sample.lower())
    for name, pattern in _PLAIN.items():
        plain = min(len(pattern.findall(sample)), _CAPS[name])
        assert min(fast[name], _CAPS[name]) == plain, (name, text)
