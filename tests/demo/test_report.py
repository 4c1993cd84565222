import math

import pytest

from ual_plugin.demo.evaluate import METRIC_KEYS
from ual_plugin.demo.report import PRIMARY, holm, paired, primary_endpoints, t_quantile, t_two_sided_p


def test_t_distribution_against_known_values():
    assert t_quantile(0.95, 4) == pytest.approx(2.776445, abs=1e-5)
    assert t_quantile(0.95, 1) == pytest.approx(12.7062, abs=1e-3)
    assert t_two_sided_p(2.776445, 4) == pytest.approx(0.05, abs=1e-6)
    assert t_two_sided_p(0.0, 4) == pytest.approx(1.0)


def test_holm_step_down():
    assert holm([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert holm([0.2, 0.2]) == pytest.approx([0.4, 0.4])


def test_paired_ci_by_hand():
    a = {s: {"m": v} for s, v in enumerate([1.0, 2.0, 3.0])}
    b = {s: {"m": 0.0} for s in range(3)}
    r = paired(a, b, "m")
    half = t_quantile(0.95, 2) * 1.0 / math.sqrt(3)
    assert r["mean_difference"] == pytest.approx(2.0)
    assert r["ci95"] == pytest.approx([2.0 - half, 2.0 + half])


def _results(shift: dict[str, float], noise: float = 0.01):
    arms = ("sft", "uniform_token", "uniform_sample", "ual", "shuffled")
    out = {}
    for arm in arms:
        out[arm] = {}
        for seed in range(5):
            wiggle = noise * ((seed * 7 + len(arm)) % 5 - 2)
            out[arm][seed] = {k: 0.5 + wiggle + (shift.get(k, 0.0) if arm == "ual" else 0.0) for k in METRIC_KEYS}
    return out


def test_verdicts_follow_direction_and_correction():
    rows = primary_endpoints(_results({"fact_unseen_p": 0.2, "open_invalid_mass": 0.2}))
    by = {(r["metric"], r["control"]): r["verdict"] for r in rows}
    assert by[("fact_unseen_p", "uniform_token")] == "supports"  # higher is better, UAL higher
    assert by[("open_invalid_mass", "uniform_token")] == "refutes"  # lower is better, UAL higher
    assert by[("retention_kl", "shuffled")] == "inconclusive"
    assert len(rows) == len(PRIMARY) and all(r["p_holm"] >= r["p"] for r in rows)
