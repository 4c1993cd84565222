"""The pre-registered analysis: fixed-sequence gating, non-inferiority margins, seeds from power."""

import pytest

from ual_plugin.demo.design import (
    Harm,
    Question,
    detectable_difference,
    fixed_sequence,
    non_inferiority,
    seeds_for_power,
    verdict_line,
)

HIGHER = {"good": True, "bad": False}


def _results(diffs_good, diffs_bad, base=1.0):
    """Arms 'ual' and 'ctl' over seeds; ual = ctl + the given differences."""
    ctl = {s: {"good": base + 0.01 * s, "bad": base + 0.02 * s} for s in range(len(diffs_good))}
    ual = {s: {"good": ctl[s]["good"] + dg, "bad": ctl[s]["bad"] + db}
           for s, (dg, db) in enumerate(zip(diffs_good, diffs_bad, strict=True))}
    return {"ual": ual, "ctl": ctl}


def test_the_first_question_that_fails_closes_the_gate():
    res = _results([0.10, 0.11, 0.09, 0.10, 0.12], [0.01, -0.02, 0.015, -0.01, 0.0])
    qs = [Question("good", "ual", "ctl", "a"), Question("bad", "ual", "ctl", "b"), Question("good", "ual", "ctl", "c")]
    rows = fixed_sequence(res, qs, HIGHER)
    assert [r["verdict"] for r in rows] == ["supports", "inconclusive", "not reached"]
    assert rows[2]["p"] < 0.05  # would have supported on its own: the gate, not the data, stops it
    assert verdict_line(rows, []).startswith("1 of 3 primary questions")


def test_a_clear_loss_refutes_and_lower_is_better_is_respected():
    res = _results([-0.10, -0.11, -0.09, -0.10], [-0.05, -0.06, -0.04, -0.05])
    rows = fixed_sequence(res, [Question("bad", "ual", "ctl", "x"), Question("good", "ual", "ctl", "y")], HIGHER)
    assert [r["verdict"] for r in rows] == ["supports", "refutes"]


def test_non_inferiority_needs_the_whole_ci_within_the_margin():
    small = _results([0.0] * 4, [0.004, 0.006, 0.005, 0.005])
    big = _results([0.0] * 4, [0.03, 0.028, 0.032, 0.03])
    h = [Harm("bad", "ual", "ctl", 0.02, False, "at most 0.02 worse")]
    assert non_inferiority(small, h, HIGHER)[0]["verdict"] == "non-inferior"
    assert non_inferiority(big, h, HIGHER)[0]["verdict"] == "not shown"
    # higher is better: a small loss within the margin passes, a noisy one does not
    hg = [Harm("good", "ual", "ctl", 0.02, False, "")]
    assert non_inferiority(_results([-0.005, -0.004, -0.006, -0.005], [0.0] * 4), hg, HIGHER)[0]["verdict"] \
        == "non-inferior"
    assert non_inferiority(_results([0.05, -0.06, 0.04, -0.05], [0.0] * 4), hg, HIGHER)[0]["verdict"] == "not shown"


def test_relative_margin_scales_the_control_per_seed():
    res = _results([0.0] * 4, [0.05, 0.06, 0.05, 0.055], base=1.0)  # ual about 5 % above ctl
    assert non_inferiority(res, [Harm("bad", "ual", "ctl", 0.10, True, "")], HIGHER)[0]["verdict"] == "non-inferior"
    assert non_inferiority(res, [Harm("bad", "ual", "ctl", 0.02, True, "")], HIGHER)[0]["verdict"] == "not shown"


def test_seeds_for_power_matches_the_paired_t_tables():
    assert seeds_for_power(1.0, 1.0) == 10  # effect size 1: 10 pairs for 80 % power at 5 %
    assert seeds_for_power(1.0, 0.5) == 34  # effect size 0.5: 34 pairs
    assert seeds_for_power(2.0, 1.0) == seeds_for_power(1.0, 0.5)
    n = seeds_for_power(0.3, 0.2)
    assert detectable_difference(0.3, n) <= 0.2 < detectable_difference(0.3, n - 1)
    with pytest.raises(ValueError):
        seeds_for_power(1.0, 0.0)
