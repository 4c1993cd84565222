"""The pre-registered analysis: primary questions in a fixed order, harms as non-inferiority tests.

Primary questions are tested one after another, each at two-sided 5 % (paired t over seeds); the
first one that is not answered in UAL's favour closes the gate, and every later one is reported as
"not reached" (fixed-sequence testing keeps the family-wise error at 5 % without a correction).
Harms are non-inferiority tests: the arm is "non-inferior" when the whole paired 95 % CI lies on
the good side of a margin stated before the run. "No harm" is claimed only when every harm test
passes (an intersection-union test, so no correction is needed either).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

from ual_plugin.demo.report import ALPHA, Results, paired, t_quantile


@dataclass(frozen=True)
class Question:
    """A primary question: is ``arm`` better than ``control`` on ``metric``?"""

    metric: str
    arm: str
    control: str
    text: str


@dataclass(frozen=True)
class Harm:
    """A non-inferiority test: ``arm`` is no worse than ``control`` on ``metric`` by more than ``margin``.

    ``relative``: the margin is a fraction of the control's value (per seed), else in the metric's units.
    """

    metric: str
    arm: str
    control: str
    margin: float
    relative: bool
    text: str


def _pairs(results: Results, arm: str, control: str, metric: str, scale: float = 1.0) -> dict[str, Any]:
    if scale == 1.0:
        return paired(results[arm], results[control], metric)
    scaled = {s: {metric: scale * float(v[metric])} for s, v in results[control].items()}
    return paired(results[arm], scaled, metric)


def fixed_sequence(results: Results, questions: Sequence[Question],
                   higher_is_better: Mapping[str, bool]) -> list[dict[str, Any]]:
    """Each question in order: the paired difference, its 95 % CI, p, and "supports", "refutes",
    "inconclusive" or "not reached" (an earlier question closed the gate)."""
    rows, gate_open = [], True
    for q in questions:
        row = {**_pairs(results, q.arm, q.control, q.metric), "arm": q.arm, "control": q.control, "question": q.text}
        better = row["mean_difference"] > 0 if higher_is_better[q.metric] else row["mean_difference"] < 0
        if not gate_open:
            row["verdict"] = "not reached"
        elif row["p"] < ALPHA:
            row["verdict"] = "supports" if better else "refutes"
        else:
            row["verdict"] = "inconclusive"
        gate_open = gate_open and row["verdict"] == "supports"
        rows.append(row)
    return rows


def non_inferiority(results: Results, harms: Sequence[Harm],
                    higher_is_better: Mapping[str, bool]) -> list[dict[str, Any]]:
    """Each harm: arm - (1 + margin) * control (relative) or arm - control (absolute), its 95 % CI, and
    "non-inferior" when the CI's worse end stays within the margin, else "not shown"."""
    rows = []
    for h in harms:
        higher = higher_is_better[h.metric]
        scale = (1.0 - h.margin if higher else 1.0 + h.margin) if h.relative else 1.0
        row = {**_pairs(results, h.arm, h.control, h.metric, scale), "arm": h.arm, "control": h.control,
               "margin": h.margin, "relative": h.relative, "higher_is_better": higher, "question": h.text}
        lo, hi = row["ci95"]
        bound = 0.0 if h.relative else (-h.margin if higher else h.margin)
        ok = lo > bound if higher else hi < bound
        row["bound"] = bound
        row["verdict"] = "non-inferior" if ok else "not shown"
        rows.append(row)
    return rows


def seeds_for_power(sd: float, delta: float, power: float = 0.8, alpha: float = ALPHA) -> int:
    """Seeds a paired two-sided t-test needs to detect a mean difference ``delta`` with ``power``,
    given the seed-to-seed standard deviation ``sd`` of the paired differences (normal approximation
    plus Guenther's correction, then checked against the t quantile)."""
    if delta <= 0 or sd < 0:
        raise ValueError(f"need delta > 0 and sd >= 0, got delta={delta}, sd={sd}")
    z = NormalDist()
    za, zb = z.inv_cdf(1 - alpha / 2), z.inv_cdf(power)
    n = max(2, math.ceil(((za + zb) * sd / delta) ** 2 + za * za / 2))
    while (t_quantile(1 - alpha, n - 1) + zb) * sd / math.sqrt(n) > delta:
        n += 1
    return n


def detectable_difference(sd: float, n: int, power: float = 0.8, alpha: float = ALPHA) -> float:
    """The smallest mean paired difference ``n`` seeds detect with ``power`` (t approximation)."""
    return (t_quantile(1 - alpha, n - 1) + NormalDist().inv_cdf(power)) * sd / math.sqrt(n)


def format_sequence(rows: Sequence[Mapping[str, Any]], labels: Mapping[str, str]) -> list[str]:
    out = []
    for i, r in enumerate(rows, 1):
        lo, hi = r["ci95"]
        out.append(f"Q{i} {r['metric']}, {labels[r['arm']]} - {labels[r['control']]}: {r['mean_difference']:+.4f} "
                   f"[{lo:+.4f}, {hi:+.4f}], p={r['p']:.3g} -> {r['verdict'].upper()} ({r['question']})")
    return out


def format_harms(rows: Sequence[Mapping[str, Any]], labels: Mapping[str, str]) -> list[str]:
    out = []
    for i, r in enumerate(rows, 1):
        lo, hi = r["ci95"]
        if r["relative"]:
            factor = 1 - r["margin"] if r["higher_is_better"] else 1 + r["margin"]
            what = f"{labels[r['arm']]} - {factor:.2f} x {labels[r['control']]}"
        else:
            what = f"{labels[r['arm']]} - {labels[r['control']]}"
        out.append(f"H{i} {r['metric']}, {what}: {r['mean_difference']:+.4f} [{lo:+.4f}, {hi:+.4f}], "
                   f"bound {r['bound']:+.4f} -> {r['verdict'].upper()} ({r['question']})")
    return out


def format_verdicts(sequence: Sequence[Mapping[str, Any]], harms: Sequence[Mapping[str, Any]],
                    labels: Mapping[str, str]) -> list[str]:
    """The primary questions and the harm tests under their headings, each row indented by two spaces."""
    return ["primary questions in their fixed order (paired 95% CI; each is tested only if every earlier one "
            "supported UAL):", *(f"  {line}" for line in format_sequence(sequence, labels)),
            "harms (non-inferiority: the CI's worse end must stay within the margin fixed before the run):",
            *(f"  {line}" for line in format_harms(harms, labels))]


def verdict_line(sequence: Sequence[Mapping[str, Any]], harms: Sequence[Mapping[str, Any]]) -> str:
    """One plain sentence: how far the fixed sequence got, and whether every harm test passed."""
    supported = 0
    for r in sequence:
        if r["verdict"] != "supports":
            break
        supported += 1
    stop = (f"; Q{supported + 1} was {sequence[supported]['verdict']}, so the gate closed there"
            if supported < len(sequence) else "")
    ok = sum(r["verdict"] == "non-inferior" for r in harms)
    return (f"{supported} of {len(sequence)} primary questions answered in UAL's favour{stop}. "
            f"Harms: {ok} of {len(harms)} shown non-inferior"
            f"{' (no harm shown)' if ok == len(harms) else ' (no-harm claim not made)'}.")
