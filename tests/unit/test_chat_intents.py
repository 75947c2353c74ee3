"""Intent detection of the chat graph, on labelled phrasings written apart from the rules.

``tests/data/intents.toml`` holds at least ten phrasings per intent and twenty
ordinary questions that must stay chat; ``intents_heldout.toml`` holds
paraphrases written after the rules and never used to change them. Both
report their accuracy; the first must be exact on parameters too.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from backends.catalog import get_catalog
from nodes.detect_intent import INTENTS, detect_intent

DATA = Path(__file__).resolve().parents[1] / "data"
IDS = get_catalog().ids()


def labelled(name: str) -> list[tuple[str, str, dict[str, Any]]]:
    with (DATA / name).open("rb") as f:
        data = tomllib.load(f)
    return [
        (intent, item["text"], {k: v for k, v in item.items() if k != "text"})
        for intent, items in data.items()
        for item in items
    ]


LABELLED = labelled("intents.toml")
HELDOUT = labelled("intents_heldout.toml")


def test_the_labelled_set_covers_every_intent_and_enough_chat():
    counts = {intent: sum(1 for i, _, _ in LABELLED if i == intent) for intent in INTENTS}
    assert all(counts[i] >= 10 for i in INTENTS if i != "chat"), counts
    assert counts["chat"] >= 20


@pytest.mark.parametrize(("intent", "text", "expected"), LABELLED, ids=[t for _, t, _ in LABELLED])
def test_each_labelled_phrasing(intent: str, text: str, expected: dict[str, Any]):
    found, params = detect_intent(text, IDS)
    assert found == intent
    for key, value in expected.items():
        assert params.get(key) == value, key


def accuracy(cases: list[tuple[str, str, dict[str, Any]]]) -> float:
    hits = sum(detect_intent(text, IDS)[0] == intent for intent, text, _ in cases)
    return hits / len(cases)


def test_accuracy_on_paraphrases_written_after_the_rules():
    score = accuracy(HELDOUT)
    print(f"held-out accuracy: {score:.1%} of {len(HELDOUT)}")
    assert score >= 0.9


def test_casing_punctuation_and_spacing_do_not_matter():
    for intent, text, _ in LABELLED:
        shouted = "  " + text.upper().replace(" ", "   ") + " ?!"
        assert detect_intent(shouted, IDS)[0] == intent, text


def test_a_message_that_is_not_sure_is_chat():
    for text in ("budget", "gpu", "route", "cost", "usage", "compare", ""):
        assert detect_intent(text, IDS)[0] == "chat", text
