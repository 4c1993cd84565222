"""A synthetic mixed-entropy instruction dataset for the demo (deterministic from a seed).

Low entropy: arithmetic and unit conversions, one right answer each.
High entropy: open prompts (describe, imagine, suggest) answered by replies drawn from many
valid variants, so no single answer is "the" answer.

Each row: ``prompt``, ``completion``, ``category`` and ``entropy`` ("low" | "high").
``category_uncertainty`` gives a 0-99 score from the generator's known category: a stand-in for
an LLM judge, labelled as such wherever the demo uses it.

Run ``python -m ual_plugin.demo.synthetic -o demo.jsonl`` to write it to a file.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

_UNITS = [
    ("kilometers", "meters", 1000),
    ("meters", "centimeters", 100),
    ("kilograms", "grams", 1000),
    ("hours", "minutes", 60),
    ("minutes", "seconds", 60),
    ("liters", "milliliters", 1000),
]
_TOPICS = ["the sea", "a quiet town", "autumn", "a lost key", "the night sky", "a friendly robot", "rain",
           "an old library", "the mountains", "a summer market"]
_OPEN_PROMPTS = [
    "Write one sentence about {t}.",
    "Describe {t} in a few words.",
    "Tell me something nice about {t}.",
    "Give me an idea for a story about {t}.",
]
_OPENERS = ["Picture", "Imagine", "Think of", "There is", "Somewhere is", "Here is"]
_ADJ = ["gentle", "bright", "strange", "calm", "wild", "tiny", "golden", "soft", "hidden", "cheerful", "misty", "bold",
        "quiet", "silver", "ancient", "restless", "warm", "lonely", "curious", "faded"]
_NOUNS = ["light", "song", "path", "window", "river", "dream", "garden", "voice", "bridge", "story", "lantern",
          "door", "shadow", "letter", "feather", "harbor", "clock", "meadow", "stone", "melody"]
_VERBS = ["hums", "waits", "drifts", "glows", "listens", "wanders", "sleeps", "sparkles", "whispers", "lingers"]
_ENDINGS = ["that nobody forgets.", "waiting for morning.", "full of small surprises.", "that feels like home.",
            "under a slow sky.", "with a secret of its own."]


def _arithmetic(rng: random.Random) -> tuple[str, str, str]:
    # small enough for a tiny model to learn: the answer is a function of the prompt
    a, b = rng.randint(0, 9), rng.randint(0, 9)
    return f"What is {a} + {b}?", f" {a + b}", "arithmetic"


def _conversion(rng: random.Random) -> tuple[str, str, str]:
    src, dst, factor = rng.choice(_UNITS)
    x = rng.randint(1, 9)
    return f"Convert {x} {src} to {dst}.", f" {x * factor} {dst}", "unit_conversion"


def _open(rng: random.Random) -> tuple[str, str, str]:
    # many equally valid replies per prompt: the answer is NOT a function of the prompt
    topic = rng.choice(_TOPICS)
    prompt = rng.choice(_OPEN_PROMPTS).format(t=topic)
    parts = [f"{rng.choice(_OPENERS)} a {rng.choice(_ADJ)} {rng.choice(_NOUNS)} that {rng.choice(_VERBS)}"]
    for _ in range(rng.randint(0, 2)):
        parts.append(f"a {rng.choice(_ADJ)} {rng.choice(_NOUNS)} {rng.choice(_VERBS)}")
    reply = " " + ", and ".join(parts) + f" {rng.choice(_ENDINGS)}"
    return prompt, reply, "open_ended"


def generate(n: int = 480, seed: int = 0, high_fraction: float = 0.5) -> list[dict]:
    """``n`` rows, about ``high_fraction`` of them open-ended, the rest split between the two exact tasks."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        if rng.random() < high_fraction:
            prompt, completion, category = _open(rng)
        else:
            prompt, completion, category = (_arithmetic if rng.random() < 0.5 else _conversion)(rng)
        rows.append({"prompt": prompt, "completion": completion, "category": category,
                     "entropy": "high" if category == "open_ended" else "low"})
    return rows


_CATEGORY_RANGES = {"arithmetic": (3, 15), "unit_conversion": (8, 25), "open_ended": (70, 95)}


def category_uncertainty(row: dict, rng: random.Random) -> float:
    """A 0-99 score from the row's known category (stand-in for an LLM judge), with a little jitter."""
    lo, hi = _CATEGORY_RANGES[row["category"]]
    return float(rng.randint(lo, hi))


def write_jsonl(rows: list[dict], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-o", "--output", required=True)
    p.add_argument("-n", type=int, default=480)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--with-category-uncertainty", action="store_true",
                   help="add an `uncertainty` column from the known category (not from an LLM judge)")
    args = p.parse_args(argv)
    rows = generate(args.n, args.seed)
    if args.with_category_uncertainty:
        rng = random.Random(args.seed + 1)
        for row in rows:
            row["uncertainty"] = category_uncertainty(row, rng)
    write_jsonl(rows, args.output)
    print(f"wrote {len(rows)} rows to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
