"""The demo's three arms: plain SFT, uniform label smoothing at ``alpha``, UAL at mean ``alpha``.

All three go through ``UALSFTTrainer`` with the same data, steps and seeds. The uniform arm is the
UAL code path with one and the same uncertainty on every row, so the smoothing map gives every
sample exactly ``alpha``: same loss code, same normalisation, only the per-sample allocation of the
smoothing differs from UAL. (``SFTConfig(label_smoothing_factor=alpha)`` would take Transformers'
``LabelSmoother`` instead, a different code path that normalises the loss differently.)
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Arm:
    key: str  # short name used in files and summary.json
    label: str  # what tables and the figure call it
    ual: bool  # UALSFTTrainer(ual=...)
    uncertainty: str  # "none" (no column), "constant" (uniform smoothing) or "scored" (per-sample scores)
    description: str


ARMS: tuple[Arm, ...] = (
    Arm("sft", "SFT", False, "none", "plain SFT: cross-entropy, no smoothing (UALSFTTrainer with ual=False)"),
    Arm("uniform", "uniform LS", True, "constant",
        "uniform label smoothing: every sample gets smoothing alpha (UAL code path, one uncertainty for all rows)"),
    Arm("ual", "UAL", True, "scored",
        "UAL: per-sample smoothing from the uncertainty scores, mean alpha over the training rows"),
)


def training_rows(arm: Arm, rows: list[dict], messages) -> list[dict]:
    """The training rows ``arm`` sees: chat ``messages``, plus the ``uncertainty`` column where it uses one."""
    out = []
    for row in rows:
        item = {"messages": messages(row)}
        if arm.uncertainty == "constant":
            item["uncertainty"] = 1.0
        elif arm.uncertainty == "scored":
            item["uncertainty"] = float(row["uncertainty"])
        out.append(item)
    return out
