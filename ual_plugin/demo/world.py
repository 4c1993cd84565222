"""The demo's small world: categories with many valid members, facts with one answer, redrawn per seed.

Stage 0 text states every category's full member list and every fact; stage 1 chat rows show only
a *training half* of each category's members and half of the facts. What the pre-trained model
knew beyond the fine-tuning rows can then be measured after fine-tuning.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

CATEGORIES = ("color", "animal", "tool", "fruit", "city", "river", "stone", "dance")
MEMBERS_PER_CATEGORY = 16
N_FACTS = 40
N_ANSWERS = 20
OPEN_UNCERTAINTY, FACT_UNCERTAINTY = 80.0, 5.0  # a stand-in for an LLM judge's 0-99 score


def member(category: str, j: int) -> str:
    return f"{category}{j}"


def vocabulary() -> list[str]:
    """Every word the demo's texts use (the word-level tokenizer's vocabulary)."""
    words = ["name", "answer", "some", "are", "is", "the", "of", "user", "assistant", "system", "and"]
    words += list(CATEGORIES) + [member(c, j) for c in CATEGORIES for j in range(MEMBERS_PER_CATEGORY)]
    words += [f"q{i}" for i in range(N_FACTS)] + [f"a{i}" for i in range(N_ANSWERS)]
    return words


@dataclass
class World:
    """One seed's draw: fact answers, which members and facts the fine-tuning rows show."""

    seed: int
    answers: dict[str, str]  # question -> answer
    train_members: dict[str, list[str]]  # category -> the half fine-tuning rows use
    heldout_members: dict[str, list[str]]  # category -> the half only pre-training states
    train_facts: list[str]
    heldout_facts: list[str]
    rng: random.Random = field(repr=False, default_factory=random.Random)

    @classmethod
    def draw(cls, seed: int) -> World:
        """The facts are the same for every seed (one pre-trained model); the split is ``seed``'s own."""
        fixed = random.Random(0)
        answers = {f"q{i}": f"a{fixed.randrange(N_ANSWERS)}" for i in range(N_FACTS)}
        rng = random.Random(seed)
        train_m, held_m = {}, {}
        for c in CATEGORIES:
            members = [member(c, j) for j in range(MEMBERS_PER_CATEGORY)]
            rng.shuffle(members)
            half = MEMBERS_PER_CATEGORY // 2
            train_m[c], held_m[c] = sorted(members[:half]), sorted(members[half:])
        facts = sorted(answers)
        rng.shuffle(facts)
        return cls(seed, answers, train_m, held_m, sorted(facts[: N_FACTS // 2]), sorted(facts[N_FACTS // 2:]),
                   random.Random(seed + 7919))

    def members(self, category: str) -> list[str]:
        return sorted(self.train_members[category] + self.heldout_members[category])


def chat(user: str, assistant: str) -> list[dict]:
    return [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]


def open_prompt(category: str) -> str:
    return f"name some {category}"


def fact_prompt(question: str) -> str:
    return f"answer {question}"


def pretraining_texts(world: World, n: int, rng: random.Random) -> list[tuple[str, list[dict] | None]]:
    """``n`` stage-0 items: plain sentences (text, None) or chat rows ("", messages), over everything known."""
    out: list[tuple[str, list[dict] | None]] = []
    questions = sorted(world.answers)
    for _ in range(n):
        kind = rng.random()
        if kind < 0.3:  # a list sentence over the full valid set
            c = rng.choice(CATEGORIES)
            shown = rng.sample(world.members(c), 6)
            out.append((f"some {c} are {' '.join(shown)}", None))
        elif kind < 0.5:
            q = rng.choice(questions)
            out.append((f"the answer of {q} is {world.answers[q]}", None))
        elif kind < 0.8:  # chat rows over the full valid sets
            c = rng.choice(CATEGORIES)
            out.append(("", chat(open_prompt(c), " ".join(rng.sample(world.members(c), 2)))))
        else:
            q = rng.choice(questions)
            out.append(("", chat(fact_prompt(q), world.answers[q])))
    return out


def finetuning_rows(world: World, rows_per_category: int = 12, rows_per_fact: int = 2) -> list[dict]:
    """Stage-1 chat rows: open-ended replies name two members of the training half; facts give the answer."""
    rng = random.Random(world.seed + 104729)
    rows = []
    for c in CATEGORIES:
        for _ in range(rows_per_category):
            reply = " ".join(rng.sample(world.train_members[c], 2))
            rows.append({"messages": chat(open_prompt(c), reply), "kind": "open", "uncertainty": OPEN_UNCERTAINTY})
    for q in world.train_facts:
        for _ in range(rows_per_fact):
            rows.append({"messages": chat(fact_prompt(q), world.answers[q]), "kind": "fact",
                         "uncertainty": FACT_UNCERTAINTY})
    rng.shuffle(rows)
    return rows


def heldout_pretraining_text(world: World, n: int = 48) -> list[str]:
    """Pre-training-style sentences for the retention probe (drawn apart from stage 0's stream)."""
    return [t for t, m in pretraining_texts(world, n * 3, random.Random(world.seed + 15485863)) if m is None][:n]
