"""The experiments' arms, all through ``UALSFTTrainer`` on the same rows, steps and seeds.

The smoothed arms share one budget: every column-mode arm is fitted with ``ual_alpha_per="token"``
so its mean smoothing per label token is ``alpha``, like ``uniform``. UAL-shuffled reassigns UAL's
scores across rows at random: same values, same budget, allocation unrelated to the rows, so it
separates "allocation matters" from "more smoothing". UAL (PPL scores) takes its scores from the
project's own PPL scorer run on the base model (what ``ual score --scorer ppl`` writes) instead of
the known-by-construction scores.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Arm:
    key: str  # short name used in files and summary.json
    label: str  # what tables and the figure call it
    mode: str  # "sft", "uniform_token", "ual", "shuffled" or "scored"
    description: str


ARMS: tuple[Arm, ...] = (
    Arm("sft", "SFT", "sft", "plain SFT: cross-entropy, no smoothing (ual=False)"),
    Arm("uniform_token", "uniform (token)", "uniform_token",
        "ual_mode='uniform' at alpha: UAL's mean smoothing per label token"),
    Arm("ual", "UAL", "ual", "per-sample smoothing from the uncertainty scores, mean alpha per label token"),
    Arm("shuffled", "UAL-shuffled", "shuffled",
        "UAL's scores shuffled across rows, then mapped the same way (same budget, random allocation)"),
    Arm("ual_ppl", "UAL (PPL scores)", "scored",
        "per-sample smoothing from the base model's response perplexity (the PPL scorer), mean alpha per token"),
)
ARM_KEYS = tuple(a.key for a in ARMS)


def training_rows(arm: Arm, rows: list[dict], seed: int) -> list[dict]:
    """The rows ``arm`` trains on: ``messages``, plus ``uncertainty`` for the column-mode arms (the
    ``ppl_score`` field for UAL (PPL scores))."""
    scores = [float(r["ppl_score" if arm.mode == "scored" else "uncertainty"]) for r in rows]
    if arm.mode == "shuffled":
        random.Random(seed + 2027).shuffle(scores)
    out = []
    for row, score in zip(rows, scores, strict=True):
        item = {"messages": row["messages"]}
        if arm.mode in ("ual", "shuffled", "scored"):
            item["uncertainty"] = score
        out.append(item)
    return out


def trainer_options(arm: Arm, alpha: float) -> dict:
    """The ``UALSFTConfig`` options that make ``arm``."""
    if arm.mode == "sft":
        return {"ual": False}
    if arm.mode == "uniform_token":
        return {"ual": True, "ual_mode": "uniform", "ual_alpha": alpha}
    return {"ual": True, "ual_mode": "column", "ual_alpha": alpha, "ual_alpha_per": "token"}
