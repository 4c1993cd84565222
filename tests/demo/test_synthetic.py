"""The demo's synthetic mixed-entropy data and its category scores."""

from __future__ import annotations

import random
from collections import Counter

from ual_plugin.demo.synthetic import category_uncertainty, generate


def test_generator_is_deterministic_and_mixed():
    a, b = generate(200, seed=3), generate(200, seed=3)
    assert a == b
    assert a != generate(200, seed=4)
    counts = Counter(r["entropy"] for r in a)
    assert counts["low"] > 50 and counts["high"] > 50
    for r in a:
        if r["category"] == "arithmetic":
            x, y = r["prompt"].removeprefix("What is ").removesuffix("?").split(" + ")
            assert int(r["completion"]) == int(x) + int(y)


def test_category_scores_put_every_open_ended_row_above_every_exact_one():
    rows = generate(300, seed=0)
    rng = random.Random(1)
    scores = [(r["entropy"], category_uncertainty(r, rng)) for r in rows]
    low = [u for e, u in scores if e == "low"]
    high = [u for e, u in scores if e == "high"]
    assert max(low) < min(high)
    assert all(0 <= u <= 99 for _, u in scores)
