"""The demo's five arms, all through ``UALSFTTrainer`` on the same rows, steps and seeds.

The smoothed arms share one budget: UAL and UAL-shuffled are fitted with ``ual_alpha_per="token"``
so their mean smoothing per label token is ``alpha``, like ``uniform (token)``; ``uniform
(sample)`` smooths every token with UAL's mean per *sample* (which differs, because open-ended
replies are longer). UAL-shuffled reassigns UAL's scores across rows at random: same values, same
budget, allocation unrelated to the rows, so it separates "allocation matters" from "more smoothing".
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Arm:
    key: str  # short name used in files and summary.json
    label: str  # what tables and the figure call it
    mode: str  # "sft", "uniform_token", "uniform_sample", "ual" or "shuffled"
    description: str


ARMS: tuple[Arm, ...] = (
    Arm("sft", "SFT", "sft", "plain SFT: cross-entropy, no smoothing (ual=False)"),
    Arm("uniform_token", "uniform (token)", "uniform_token",
        "ual_mode='uniform' at alpha: UAL's mean smoothing per label token"),
    Arm("uniform_sample", "uniform (sample)", "uniform_sample",
        "ual_mode='uniform' at UAL's mean smoothing per sample"),
    Arm("ual", "UAL", "ual", "per-sample smoothing from the uncertainty scores, mean alpha per label token"),
    Arm("shuffled", "UAL-shuffled", "shuffled",
        "UAL's scores shuffled across rows, then mapped the same way (same budget, random allocation)"),
)
ARM_KEYS = tuple(a.key for a in ARMS)


def training_rows(arm: Arm, rows: list[dict], seed: int) -> list[dict]:
    """The rows ``arm`` trains on: ``messages``, plus ``uncertainty`` for UAL and its shuffled control."""
    scores = [float(r["uncertainty"]) for r in rows]
    if arm.mode == "shuffled":
        random.Random(seed + 2027).shuffle(scores)
    out = []
    for row, score in zip(rows, scores, strict=True):
        item = {"messages": row["messages"]}
        if arm.mode in ("ual", "shuffled"):
            item["uncertainty"] = score
        out.append(item)
    return out


def trainer_options(arm: Arm, alpha: float, ual_per_sample_mean: float | None) -> dict:
    """The ``UALSFTConfig`` options that make ``arm``."""
    if arm.mode == "sft":
        return {"ual": False}
    if arm.mode == "uniform_token":
        return {"ual": True, "ual_mode": "uniform", "ual_alpha": alpha}
    if arm.mode == "uniform_sample":
        if ual_per_sample_mean is None:
            raise ValueError("the uniform (sample) arm needs UAL's fitted mean per sample: train UAL first")
        return {"ual": True, "ual_mode": "uniform", "ual_alpha": ual_per_sample_mean}
    return {"ual": True, "ual_mode": "column", "ual_alpha": alpha, "ual_alpha_per": "token"}
