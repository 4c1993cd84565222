"""The demo's arms: what each one trains on, and the smoothing that follows from it."""

from __future__ import annotations

import numpy as np

from ual_plugin import smoothing_from_uncertainty
from ual_plugin.demo.arms import ARMS, training_rows

ROWS = [{"prompt": f"p{i}", "completion": f"c{i}", "uncertainty": float(u)} for i, u in enumerate([3, 10, 80, 95])]


def messages(row: dict) -> list[dict]:
    return [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["completion"]}]


def test_three_arms_sft_uniform_ual():
    assert [a.key for a in ARMS] == ["sft", "uniform", "ual"]
    assert [a.ual for a in ARMS] == [False, True, True]


def test_every_arm_sees_the_same_conversations():
    seen = [[r["messages"] for r in training_rows(arm, ROWS, messages)] for arm in ARMS]
    assert seen[0] == seen[1] == seen[2] == [messages(r) for r in ROWS]


def test_sft_has_no_uncertainty_column():
    assert all("uncertainty" not in r for r in training_rows(ARMS[0], ROWS, messages))


def test_uniform_arm_maps_to_alpha_on_every_row_and_ual_keeps_the_mean():
    alpha = 0.1
    uniform = [r["uncertainty"] for r in training_rows(ARMS[1], ROWS, messages)]
    v_uniform = smoothing_from_uncertainty(uniform, alpha=alpha)
    np.testing.assert_allclose(v_uniform, alpha)
    scored = [r["uncertainty"] for r in training_rows(ARMS[2], ROWS, messages)]
    assert scored == [r["uncertainty"] for r in ROWS]
    v_ual = smoothing_from_uncertainty(scored, alpha=alpha)
    assert np.isclose(v_ual.mean(), alpha)  # the same mean smoothing as the uniform arm
    assert v_ual[0] < alpha < v_ual[-1]  # strict on the certain row, relaxed on the open-ended one
