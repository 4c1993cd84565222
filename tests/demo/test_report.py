"""The demo's report: mean ± std, paired comparisons and a verdict that follows from the numbers."""

from __future__ import annotations

import pytest

from ual_plugin.demo.evaluate import METRICS
from ual_plugin.demo.report import (
    compare,
    format_table,
    mean_std,
    paired_comparison,
    summarise,
    t_critical,
    verdict,
)

LABELS = {"sft": "SFT", "uniform": "uniform LS", "ual": "UAL"}
KEYS = [m[0] for m in METRICS]


def results_from(values: dict[str, dict[str, list[float]]]) -> dict[str, dict[int, dict[str, float]]]:
    """``values[arm][metric] = [seed 0, seed 1, ...]`` -> ``results[arm][seed][metric]``."""
    out: dict[str, dict[int, dict[str, float]]] = {}
    for arm, by_metric in values.items():
        n = len(next(iter(by_metric.values())))
        out[arm] = {seed: {k: by_metric[k][seed] for k in KEYS} for seed in range(n)}
    return out


def same_everywhere(**overrides: dict[str, list[float]]) -> dict[str, dict[int, dict[str, float]]]:
    """Three arms with identical numbers on 3 seeds, except where ``overrides[arm][metric]`` says otherwise."""
    base = {"nll_seen": [1.0, 1.1, 0.9], "exact_match_seen": [0.5, 0.6, 0.4], "nll_new": [1.5, 1.4, 1.6],
            "exact_match_new": [0.2, 0.1, 0.15], "nll_open": [2.0, 2.2, 1.8]}
    return results_from({arm: {**base, **overrides.get(arm, {})} for arm in LABELS})


def test_mean_std_is_sample_std():
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert mean_std([5.0]) == (5.0, 0.0)
    with pytest.raises(ValueError):
        mean_std([])


def test_summarise_holds_every_arm_and_metric():
    s = summarise(same_everywhere(ual={"nll_seen": [0.5, 0.7, 0.6]}))
    assert set(s) == set(LABELS)
    assert all(set(s[arm]) == set(KEYS) for arm in s)
    assert s["ual"]["nll_seen"]["mean"] == pytest.approx(0.6)
    assert s["ual"]["nll_seen"]["std"] == pytest.approx(0.1)
    assert s["sft"]["nll_seen"]["n"] == 3


def test_t_critical_is_the_stricter_table_entry():
    assert t_critical(2) == pytest.approx(4.303)
    assert t_critical(17) == t_critical(15) > t_critical(20)
    assert t_critical(100) == t_critical(30)
    with pytest.raises(ValueError):
        t_critical(0)


def test_paired_comparison_respects_direction_and_pairs_by_seed():
    r = same_everywhere(ual={"nll_seen": [0.8, 0.9, 0.7], "exact_match_seen": [0.7, 0.8, 0.6]})
    nll = paired_comparison(r, "ual", "uniform", "nll_seen", higher_is_better=False)
    assert nll["outcome"] == "better" and nll["better"] == 3
    assert nll["mean_difference"] == pytest.approx(-0.2)
    assert nll["t"] < -1e6  # (nearly) the same difference on every seed
    em = paired_comparison(r, "ual", "uniform", "exact_match_seen", higher_is_better=True)
    assert em["outcome"] == "better"
    assert paired_comparison(r, "uniform", "ual", "nll_seen", higher_is_better=False)["outcome"] == "worse"


def test_a_sign_flip_or_a_small_t_is_no_clear_difference():
    # UAL lower on every seed, but by amounts too uneven for a paired t-test on 3 seeds (t < 4.30)
    r = same_everywhere(ual={"nll_seen": [0.99, 0.8, 0.899]})
    c = paired_comparison(r, "ual", "sft", "nll_seen", higher_is_better=False)
    assert c["better"] == 3 and abs(c["t"]) < t_critical(2)
    assert c["outcome"] == "no clear difference"
    flipped = same_everywhere(ual={"nll_seen": [0.5, 1.5, 0.5]})
    assert paired_comparison(flipped, "ual", "sft", "nll_seen", False)["outcome"] == "no clear difference"


def test_verdict_says_uniform_matches_ual_when_nothing_separates_them():
    lines = verdict(same_everywhere(), LABELS)
    assert len(lines) == len(METRICS) + 1
    assert lines[-1].startswith("Bottom line: uniform label smoothing at the same mean matches UAL")


def test_verdict_reports_a_win_a_loss_and_a_trade_off_from_the_numbers():
    win = verdict(same_everywhere(ual={"nll_seen": [0.8, 0.9, 0.7]}), LABELS)[-1]
    assert "UAL) beat uniform smoothing" in win and "one-right-answer rows" in win
    loss = verdict(same_everywhere(ual={"nll_open": [2.5, 2.7, 2.3]}), LABELS)[-1]
    assert "uniform smoothing at the same mean beat UAL" in loss and "open-ended rows" in loss
    both = verdict(same_everywhere(ual={"nll_seen": [0.8, 0.9, 0.7], "nll_open": [2.5, 2.7, 2.3]}), LABELS)[-1]
    assert "trade-off" in both


def test_verdict_judges_against_uniform_not_against_sft():
    # UAL and uniform smoothing both beat SFT by the same amount: that is smoothing, not UAL's allocation
    better = {"nll_seen": [0.8, 0.9, 0.7]}
    lines = verdict(same_everywhere(ual=better, uniform=better), LABELS)
    assert "matches UAL" in lines[-1]
    assert "vs SFT better on all 3 seeds" in lines[0]


def test_one_seed_draws_no_conclusion():
    r = results_from({arm: {k: [0.5 if (arm, k) == ("ual", "nll_seen") else 1.0] for k in KEYS} for arm in LABELS})
    assert compare(r)["nll_seen"]["ual_vs_uniform"]["outcome"] == "one seed"
    assert "one seed cannot separate" in verdict(r, LABELS)[-1]


def test_table_has_every_arm_and_metric_as_mean_and_std():
    table = format_table(summarise(same_everywhere(ual={"nll_seen": [0.5, 0.7, 0.6]})), LABELS)
    lines = table.splitlines()
    assert len(lines) == 2 + len(METRICS)
    assert all(label in lines[0] for label in LABELS.values())
    assert "over 3 seeds" in lines[0]
    assert "0.600 ± 0.100" in table
    for _key, category, meaning, _ in METRICS:
        assert f"{category}: {meaning}" in table


def test_bottom_line_says_whether_smoothing_beat_sft_at_all():
    assert "Neither smoothed arm clearly beat plain SFT" in verdict(same_everywhere(), LABELS)[-1]
    better = {"nll_seen": [0.8, 0.9, 0.7]}
    line = verdict(same_everywhere(uniform=better), LABELS)[-1]
    assert "uniform LS beat SFT for NLL per token (one-right-answer rows, prompt seen in training)" in line
    assert "UAL beat SFT" not in line
