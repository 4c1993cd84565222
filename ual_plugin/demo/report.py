"""The demo's numbers in words: mean ± std over seeds per arm and metric, and a verdict computed from them.

Every arm is trained on the same seeds, so arms are compared seed by seed (paired). A difference
counts as a finding only when it has the same sign on every seed *and* a two-sided paired t-test
at the 5 % level finds it (with 3 seeds, |t| >= 4.30); anything else is reported as "no clear
difference". One seed cannot separate two arms, and the verdict says so.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from ual_plugin.demo.evaluate import METRICS

# results[arm][seed] = {metric key: value}
Results = Mapping[str, Mapping[int, Mapping[str, float]]]

# two-sided 5 % critical values of Student's t, by degrees of freedom
_T_CRIT = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
           11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 20: 2.086, 30: 2.042}

# the comparisons the verdict makes: (a, b) means "a against b"
PAIRS: tuple[tuple[str, str], ...] = (("ual", "uniform"), ("ual", "sft"), ("uniform", "sft"))


def t_critical(df: int) -> float:
    """Two-sided 5 % critical value of Student's t with ``df`` degrees of freedom (between or beyond the
    table's entries, the entry below: a slightly stricter test)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    return _T_CRIT[max(d for d in _T_CRIT if d <= df)]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("no values to summarise")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarise(results: Results) -> dict[str, dict[str, dict[str, float]]]:
    """``{arm: {metric: {"mean", "std", "n"}}}`` over the seeds of each arm."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for arm, by_seed in results.items():
        out[arm] = {}
        for key, *_ in METRICS:
            mean, std = mean_std([m[key] for m in by_seed.values()])
            out[arm][key] = {"mean": mean, "std": std, "n": len(by_seed)}
    return out


def paired_comparison(results: Results, a: str, b: str, key: str, higher_is_better: bool) -> dict[str, Any]:
    """``a`` against ``b`` on ``key``, seed by seed: mean difference (a - b), on how many seeds ``a`` is
    better / worse, the paired t statistic, and the outcome: "better", "worse", "no clear difference",
    or "one seed" (nothing can be concluded)."""
    seeds = sorted(set(results[a]) & set(results[b]))
    if not seeds:
        raise ValueError(f"arms {a!r} and {b!r} share no seed")
    diffs = [float(results[a][s][key]) - float(results[b][s][key]) for s in seeds]
    sign = 1.0 if higher_is_better else -1.0
    better = sum(sign * d > 0 for d in diffs)
    worse = sum(sign * d < 0 for d in diffs)
    mean = statistics.fmean(diffs)
    t = None
    if len(diffs) > 1:
        sd = statistics.stdev(diffs)
        t = (math.copysign(math.inf, mean) if mean else 0.0) if sd == 0 else mean / (sd / math.sqrt(len(diffs)))
    if len(diffs) < 2:
        outcome = "one seed"
    elif better == len(diffs) and abs(t) >= t_critical(len(diffs) - 1):
        outcome = "better"
    elif worse == len(diffs) and abs(t) >= t_critical(len(diffs) - 1):
        outcome = "worse"
    else:
        outcome = "no clear difference"
    return {"a": a, "b": b, "metric": key, "mean_difference": mean, "differences": diffs, "better": better,
            "worse": worse, "seeds": len(seeds), "t": t, "outcome": outcome}


def compare(results: Results) -> dict[str, dict[str, dict[str, Any]]]:
    """``{metric: {"a_vs_b": paired_comparison(...)}}`` for every metric and every pair in ``PAIRS``."""
    return {key: {f"{a}_vs_{b}": paired_comparison(results, a, b, key, higher) for a, b in PAIRS}
            for key, _category, _meaning, higher in METRICS}


def _seeds(comparisons: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> int:
    """How many seeds the comparisons paired (the same for every metric and pair)."""
    return next(iter(next(iter(comparisons.values())).values()))["seeds"]


def _metric_name(key: str) -> str:
    _, category, meaning, _ = next(m for m in METRICS if m[0] == key)
    return f"{meaning.split(' (')[0]} ({category})"


def _judge(c: Mapping[str, Any]) -> str:
    t = "" if c["t"] is None else f", paired t = {c['t']:.1f}"
    if c["outcome"] in ("better", "worse"):
        return f"{c['outcome']} on all {c['seeds']} seeds (mean diff {c['mean_difference']:+.3f}{t})"
    if c["outcome"] == "one seed":
        return f"one seed only (diff {c['mean_difference']:+.3f})"
    return (f"no clear difference (better on {c['better']} of {c['seeds']} seeds, mean diff "
            f"{c['mean_difference']:+.3f}{t})")


def verdict(results: Results, labels: Mapping[str, str]) -> list[str]:
    """Plain sentences, one per metric (UAL against uniform smoothing and against SFT), then the bottom
    line on the demo's question: does per-sample smoothing beat uniform smoothing at the same mean?"""
    comparisons = compare(results)
    lines = []
    found: dict[str, list[str]] = {"better": [], "worse": []}
    for key, per_pair in comparisons.items():
        vs_uniform, vs_sft = per_pair["ual_vs_uniform"], per_pair["ual_vs_sft"]
        lines.append(f"{_metric_name(key)}: {labels['ual']} vs {labels['uniform']} {_judge(vs_uniform)}; "
                     f"vs {labels['sft']} {_judge(vs_sft)}.")
        if vs_uniform["outcome"] in found:
            found[vs_uniform["outcome"]].append(_metric_name(key))
    seeds = _seeds(comparisons)
    better, worse = found["better"], found["worse"]
    if seeds < 2:
        bottom = ("Bottom line: one seed cannot separate the arms; run with --seeds 3 or more before reading "
                  "anything into the differences.")
    elif better and not worse:
        bottom = (f"Bottom line: per-sample smoothing (UAL) beat uniform smoothing at the same mean for "
                  f"{'; '.join(better)}; on the other metrics there is no clear difference.")
    elif worse and not better:
        bottom = (f"Bottom line: uniform smoothing at the same mean beat UAL for {'; '.join(worse)}, and UAL won "
                  "on no metric: on this data, per-sample smoothing does not help beyond smoothing itself.")
    elif better and worse:
        bottom = (f"Bottom line: a trade-off, not a free win. Against uniform smoothing at the same mean, UAL is "
                  f"better for {'; '.join(better)}. It is worse for {'; '.join(worse)}.")
    else:
        bottom = ("Bottom line: uniform label smoothing at the same mean matches UAL here: no metric separates "
                  f"them clearly over {seeds} seeds, so any difference from SFT comes from smoothing itself, not "
                  "from its per-sample allocation.")
    if seeds >= 2:
        bottom += " " + _against_sft(comparisons, labels)
    return [*lines, bottom]


def _against_sft(comparisons: Mapping[str, Mapping[str, Mapping[str, Any]]], labels: Mapping[str, str]) -> str:
    """One sentence: on which metrics either smoothed arm clearly beat plain SFT, if any."""
    wins = []
    for arm in ("uniform", "ual"):
        names = [_metric_name(k) for k, per_pair in comparisons.items() if per_pair[f"{arm}_vs_sft"]["outcome"] == "better"]
        if names:
            wins.append(f"{labels[arm]} beat {labels['sft']} for {'; '.join(names)}")
    if not wins:
        return f"Neither smoothed arm clearly beat plain {labels['sft']} on any metric here."
    return "Against plain SFT: " + ", and ".join(wins) + "."


def format_table(summary: Mapping[str, Mapping[str, Mapping[str, float]]], labels: Mapping[str, str]) -> str:
    """A Markdown table: one row per metric and category, one column per arm, ``mean ± std``."""
    arms = list(summary)
    n = next(iter(next(iter(summary.values())).values()))["n"]
    head = [f"held-out metric (mean ± std over {n} seeds)", *[labels[a] for a in arms]]
    rows = []
    for key, category, meaning, _ in METRICS:
        cells = [f"{summary[a][key]['mean']:.3f} ± {summary[a][key]['std']:.3f}" for a in arms]
        rows.append([f"{category}: {meaning}", *cells])
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]

    def fmt(row: list[str]) -> str:
        cells = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        return "| " + " | ".join(cells) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([fmt(head), sep, *[fmt(r) for r in rows]])


def headline(results: Results, labels: Mapping[str, str]) -> str:
    """One line for the figure: how UAL does against uniform smoothing on each metric (paired over seeds)."""
    comparisons = compare(results)
    seeds = _seeds(comparisons)
    if seeds < 2:
        return f"{labels['ual']} vs {labels['uniform']}: one seed, no comparison (use 3 seeds or more)"
    groups: dict[str, list[str]] = {}
    for key, per_pair in comparisons.items():
        outcome = per_pair["ual_vs_uniform"]["outcome"]
        groups.setdefault(outcome, []).append(_metric_name(key))
    parts = [f"{outcome} on {', '.join(names)}" for outcome, names in groups.items()]
    return f"{labels['ual']} vs {labels['uniform']}, paired over {seeds} seeds: " + "; ".join(parts)
