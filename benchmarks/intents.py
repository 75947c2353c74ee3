"""Intent detection of the chat graph: accuracy on the labelled sets and time per message.

.venv/bin/python benchmarks/intents.py
"""

from __future__ import annotations

import time
import tomllib
from pathlib import Path

from backends.catalog import get_catalog
from nodes.detect_intent import INTENTS, detect_intent

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"


def main() -> None:
    ids = get_catalog().ids()
    for name in ("intents.toml", "intents_heldout.toml"):
        with (DATA / name).open("rb") as f:
            data = tomllib.load(f)
        cases = [(intent, item["text"]) for intent, items in data.items() for item in items]
        hits = {i: [0, 0] for i in INTENTS}
        for intent, text in cases:
            hits[intent][1] += 1
            hits[intent][0] += detect_intent(text, ids)[0] == intent
        total = sum(h for h, _ in hits.values())
        per = ", ".join(f"{i} {h}/{n}" for i, (h, n) in hits.items() if n)
        print(f"{name}: {total}/{len(cases)} right ({total / len(cases):.1%}): {per}")
        texts = [text for _, text in cases] * 200
        started = time.perf_counter()
        for text in texts:
            detect_intent(text, ids)
        print(f"  {(time.perf_counter() - started) / len(texts) * 1e6:.1f} us per message")


if __name__ == "__main__":
    main()
