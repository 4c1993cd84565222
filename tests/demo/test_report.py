import math

import pytest

from ual_plugin.demo.report import paired, secondary, t_quantile, t_two_sided_p


def test_t_distribution_against_known_values():
    assert t_quantile(0.95, 4) == pytest.approx(2.776445, abs=1e-5)
    assert t_quantile(0.95, 1) == pytest.approx(12.7062, abs=1e-3)
    assert t_two_sided_p(2.776445, 4) == pytest.approx(0.05, abs=1e-6)
    assert t_two_sided_p(0.0, 4) == pytest.approx(1.0)


def test_paired_ci_by_hand():
    a = {s: {"m": v} for s, v in enumerate([1.0, 2.0, 3.0])}
    b = {s: {"m": 0.0} for s in range(3)}
    r = paired(a, b, "m")
    half = t_quantile(0.95, 2) * 1.0 / math.sqrt(3)
    assert r["mean_difference"] == pytest.approx(2.0)
    assert r["ci95"] == pytest.approx([2.0 - half, 2.0 + half])


def test_secondary_compares_ual_with_every_other_arm_on_every_metric():
    metrics = (("m", "", True), ("n", "", False))
    res = {arm: {s: {"m": s + (1.0 if arm == "ual" else 0.0), "n": 0.5 * s} for s in range(3)}
           for arm in ("base", "sft", "ual", "shuffled")}
    rows = secondary(res, metrics)
    assert {(r["control"], r["metric"]) for r in rows} == {(a, k) for a in ("sft", "shuffled") for k in ("m", "n")}
    assert all(r["mean_difference"] == pytest.approx(1.0 if r["metric"] == "m" else 0.0) for r in rows)
