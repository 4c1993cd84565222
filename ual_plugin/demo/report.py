"""The demo's statistics: paired 95 % confidence intervals over seeds, Student's t, and tables.

Every arm of a seed shares that seed's data draw and base model, so arms are compared seed by seed
(paired t). How the primary questions and the harms turn into verdicts is in ``design``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from ual_plugin.demo.evaluate import METRICS

# results[arm][seed] = {metric key: value}
Results = Mapping[str, Mapping[int, Mapping[str, float]]]
# (key, what it measures, higher is better?), as in ``evaluate.METRICS``
Metrics = Sequence[tuple[str, str, bool]]
HIGHER_IS_BETTER = {key: higher for key, _, higher in METRICS}

ALPHA = 0.05


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularised incomplete beta function (Lentz's method)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        for num in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-14:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    if x <= 0.0 or x >= 1.0:
        return 0.0 if x <= 0.0 else 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_two_sided_p(t: float, df: int) -> float:
    """Two-sided p-value of Student's t with ``df`` degrees of freedom."""
    if math.isinf(t):
        return 0.0
    return _betainc(df / 2.0, 0.5, df / (df + t * t))


def t_quantile(level: float, df: int) -> float:
    """The t with P(|T| <= t) = ``level`` (bisection on ``t_two_sided_p``)."""
    lo, hi = 0.0, 1e3
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_two_sided_p(mid, df) > 1 - level else (lo, mid)
    return (lo + hi) / 2


def check_seeds(seeds: Sequence[int]) -> None:
    """Refuse fewer than 2 distinct seeds: the paired confidence intervals need them."""
    if len(seeds) < 2 or len(set(seeds)) != len(seeds):
        raise ValueError(f"give at least 2 distinct seeds (paired confidence intervals need them), got {seeds}")


def paired(a: Mapping[int, Mapping[str, float]], b: Mapping[int, Mapping[str, float]], key: str) -> dict[str, Any]:
    """Mean paired difference a - b over shared seeds, its 95 % CI and two-sided p (paired t)."""
    seeds = sorted(set(a) & set(b))
    if len(seeds) < 2:
        raise ValueError(f"a paired comparison needs at least 2 shared seeds, got {len(seeds)}")
    diffs = [float(a[s][key]) - float(b[s][key]) for s in seeds]
    mean, sd, n = statistics.fmean(diffs), statistics.stdev(diffs), len(diffs)
    se = sd / math.sqrt(n)
    t = (math.copysign(math.inf, mean) if mean else 0.0) if se == 0 else mean / se
    half = t_quantile(0.95, n - 1) * se
    return {"metric": key, "n": n, "differences": diffs, "mean_difference": mean, "ci95": [mean - half, mean + half],
            "t": t, "p": t_two_sided_p(t, n - 1) if mean or se else 1.0}


def secondary(results: Results, metrics: Metrics = METRICS) -> list[dict[str, Any]]:
    """UAL against every other arm on every metric (95 % CIs, no correction, no verdict)."""
    return [{**paired(results["ual"], results[arm], key), "control": arm}
            for arm in results if arm not in ("ual", "base") for key, _, _ in metrics]


def summarise(results: Results, metrics: Metrics = METRICS) -> dict[str, dict[str, dict[str, float]]]:
    """``{arm: {metric: {"mean", "std", "n"}}}`` over seeds."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for arm, by_seed in results.items():
        out[arm] = {}
        for key, _, _ in metrics:
            values = [float(m[key]) for m in by_seed.values()]
            out[arm][key] = {"mean": statistics.fmean(values),
                             "std": statistics.stdev(values) if len(values) > 1 else 0.0, "n": len(values)}
    return out


def format_table(stats: Mapping[str, Mapping[str, Mapping[str, float]]], labels: Mapping[str, str],
                 metrics: Metrics = METRICS) -> str:
    """Metrics as rows, arms (the base model first) as columns: mean ± std over seeds."""
    arms = list(stats)
    lines = ["      " + f"{'metric':<34}" + "".join(f"{labels[a]:>17}" for a in arms)]
    for key, _meaning, higher in metrics:
        name = f"{key} ({'higher' if higher else 'lower'} better)"
        cells = "".join(f"  {stats[a][key]['mean']:>8.3f}±{stats[a][key]['std']:<6.3f}" for a in arms)
        lines.append(f"      {name:<34}{cells}")
    return "\n".join(lines)
