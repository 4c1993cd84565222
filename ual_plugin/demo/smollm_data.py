"""The real-model experiment's data, generated here: category lists, word problems, retention prompts.

Each seed draws which categories fine-tuning never shows (held-out categories), which half of a
shown category's members the replies use, and which operand values the word problems use (the
other values are held out). Answers are known by construction, so every metric is exact.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

# Open-ended prompts: each category has many valid one-word answers.
CATEGORIES: dict[str, tuple[str, ...]] = {
    "fruit": ("apple", "banana", "orange", "grape", "mango", "pear", "peach", "cherry", "lemon", "plum",
              "kiwi", "melon", "lime", "apricot", "papaya", "coconut"),
    "animal": ("dog", "cat", "horse", "cow", "lion", "tiger", "elephant", "rabbit", "bear", "wolf", "fox",
               "deer", "monkey", "zebra", "giraffe", "sheep"),
    "color": ("red", "blue", "green", "yellow", "purple", "indigo", "pink", "brown", "black", "white", "gray",
              "violet", "cyan", "magenta", "beige", "maroon"),
    "country": ("France", "Germany", "Italy", "Spain", "Japan", "China", "India", "Brazil", "Canada", "Mexico",
                "Egypt", "Kenya", "Peru", "Norway", "Sweden", "Greece"),
    "sport": ("soccer", "tennis", "basketball", "baseball", "golf", "hockey", "cricket", "rugby", "volleyball",
              "swimming", "boxing", "cycling", "skiing", "surfing", "rowing", "badminton"),
    "vegetable": ("carrot", "potato", "onion", "broccoli", "spinach", "lettuce", "cabbage", "pepper", "garlic",
                  "pea", "cucumber", "celery", "radish", "kale", "beet", "corn"),
    "musical instrument": ("piano", "guitar", "violin", "drum", "flute", "trumpet", "cello", "harp", "clarinet",
                           "saxophone", "banjo", "trombone", "ukulele", "oboe", "tuba", "accordion"),
    "job": ("teacher", "doctor", "nurse", "farmer", "engineer", "lawyer", "chef", "pilot", "baker", "dentist",
            "plumber", "painter", "writer", "judge", "carpenter", "scientist"),
    "vehicle": ("car", "bus", "truck", "bicycle", "train", "airplane", "boat", "motorcycle", "taxi", "van",
                "tractor", "helicopter", "ship", "scooter", "tram", "submarine"),
    "piece of clothing": ("shirt", "jacket", "dress", "skirt", "coat", "sweater", "scarf", "hat", "sock", "glove",
                          "jeans", "shorts", "boot", "tie", "belt", "hoodie"),
    "body part": ("hand", "foot", "head", "arm", "leg", "nose", "ear", "eye", "mouth", "knee", "elbow", "finger",
                  "shoulder", "neck", "toe", "chin"),
    "drink": ("water", "milk", "coffee", "tea", "juice", "soda", "lemonade", "wine", "beer", "cocoa",
              "smoothie", "milkshake", "cider", "espresso", "latte", "kombucha"),
}
OPEN_UNCERTAINTY, PROBLEM_UNCERTAINTY = 80.0, 5.0  # a stand-in for an LLM judge's 0-99 score

_NAMES = ("Tom", "Anna", "Ben", "Maria", "Sam", "Lily", "Omar", "Zoe", "Leo", "Nina")
_THINGS = ("apples", "books", "coins", "marbles", "stickers", "pencils", "cards", "shells")
_TEMPLATES = (
    ("{n} has {a} {t}. {n} gets {b} more {t}. How many {t} does {n} have now?", "add"),
    ("There are {a} {t} in a box. Someone puts in {b} more. How many {t} are in the box?", "add"),
    ("{n} has {a} {t} and gives {b} of them away. How many {t} does {n} have left?", "sub"),
    ("A shelf holds {a} {t}. {b} are taken off. How many {t} are on the shelf?", "sub"),
)

# General prompts (none is a training prompt): the base model's greedy replies to them are the KL retention probe.
RETENTION_PROMPTS: tuple[str, ...] = (
    "Why is the sky blue?", "Give me one tip for sleeping better.", "What is a good way to learn a language?",
    "Describe a cat in one sentence.", "What do plants need to grow?", "Explain what a computer does.",
    "How do I make a cup of tea?", "Why do we need to drink water?", "What is the moon?",
    "Write one sentence about the ocean.", "What is friendship?", "How does rain form?",
    "Name a reason to exercise.", "What is a library for?", "How do birds fly?", "What is music?",
)


def open_prompt(category: str) -> str:
    return f"Name one {category}. Answer with one word."


def problem_prompt(template: str, name: str, a: int, b: int, things: str) -> str:
    return template.format(n=name, a=a, b=b, t=things)


@dataclass(frozen=True)
class Problem:
    prompt: str
    answer: int


@dataclass(frozen=True)
class Size:
    """How much of the generated world one run uses (smoke or full)."""

    categories: int = 12  # categories in play
    heldout_categories: int = 4  # of those, never in fine-tuning
    members: int = 16  # members per category in play (half shown in fine-tuning)
    rows_per_category: int = 16
    max_operand: int = 12  # operands 1..max_operand, half of the values held out
    problems: int = 96  # fine-tuning word problems
    eval_problems: int = 48  # evaluated problems per split (training numbers, held-out numbers)
    retention_prompts: int = len(RETENTION_PROMPTS)
    retention_tokens: int = 32


@dataclass
class RealWorld:
    """One seed's draw of what fine-tuning shows and what it holds out."""

    seed: int
    size: Size
    train_categories: list[str]
    heldout_categories: list[str]
    train_members: dict[str, list[str]]
    heldout_members: dict[str, list[str]]
    train_numbers: list[int]
    heldout_numbers: list[int]

    @classmethod
    def draw(cls, seed: int, size: Size) -> RealWorld:
        if not 0 < size.heldout_categories < size.categories <= len(CATEGORIES):
            raise ValueError(f"need 0 < heldout_categories < categories <= {len(CATEGORIES)}, got {size}")
        if not 2 <= size.members <= 16 or size.max_operand < 4:
            raise ValueError(f"need 2 <= members <= 16 and max_operand >= 4, got {size}")
        rng = random.Random(seed)
        cats = list(CATEGORIES)[: size.categories]
        rng.shuffle(cats)
        held_c, train_c = sorted(cats[: size.heldout_categories]), sorted(cats[size.heldout_categories:])
        train_m, held_m = {}, {}
        for c in cats:
            members = list(CATEGORIES[c][: size.members])
            rng.shuffle(members)
            half = size.members // 2
            train_m[c], held_m[c] = sorted(members[:half]), sorted(members[half:])
        numbers = list(range(1, size.max_operand + 1))
        rng.shuffle(numbers)
        half = len(numbers) // 2
        return cls(seed, size, train_c, held_c, train_m, held_m, sorted(numbers[:half]), sorted(numbers[half:]))

    def categories(self) -> list[str]:
        return sorted(self.train_categories + self.heldout_categories)

    def problems(self, numbers: list[int], n: int, salt: int) -> list[Problem]:
        """``n`` word problems whose operands both come from ``numbers`` (subtractions never go below 0)."""
        rng = random.Random(self.seed * 1_000_003 + salt)
        out = []
        for _ in range(n):
            template, op = rng.choice(_TEMPLATES)
            a, b = rng.choice(numbers), rng.choice(numbers)
            if op == "sub" and b > a:
                a, b = b, a
            out.append(Problem(problem_prompt(template, rng.choice(_NAMES), a, b, rng.choice(_THINGS)),
                               a + b if op == "add" else a - b))
        return out

    def answer_range(self) -> list[int]:
        """Every answer a problem can have: the candidates a problem's answer is scored among."""
        return list(range(0, 2 * self.size.max_operand + 1))


def chat(user: str, assistant: str) -> list[dict]:
    return [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]


def finetuning_rows(world: RealWorld) -> list[dict]:
    """Chat rows: one training-half member per open-ended reply, the answer per word problem (training numbers)."""
    rng = random.Random(world.seed + 104729)
    rows = []
    for c in world.train_categories:
        for _ in range(world.size.rows_per_category):
            rows.append({"messages": chat(open_prompt(c), rng.choice(world.train_members[c])), "kind": "open",
                         "uncertainty": OPEN_UNCERTAINTY})
    for p in world.problems(world.train_numbers, world.size.problems, salt=1):
        rows.append({"messages": chat(p.prompt, str(p.answer)), "kind": "problem",
                     "uncertainty": PROBLEM_UNCERTAINTY})
    rng.shuffle(rows)
    return rows
