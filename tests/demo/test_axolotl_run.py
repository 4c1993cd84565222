"""The demo's Axolotl step, ``python -m ual_plugin.demo.axolotl_run``: score, check, ``axolotl train``, summary."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("axolotl")

from tests.axolotl.helpers import cli_env  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.axolotl]


def test_axolotl_demo_score_train_summary(tmp_path):
    """`ual score --scorer ppl` -> `ual check` -> `axolotl train` -> summary."""
    proc = subprocess.run(
        [sys.executable, "-m", "ual_plugin.demo.axolotl_run", "--out", str(tmp_path / "demo"), "--n-train", "48",
         "--max-steps", "3"],
        env=cli_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600,
    )
    out = proc.stdout
    assert proc.returncode == 0, out[-4000:]
    assert "scored 48/48 rows" in out and "UAL will be active" in out
    assert "=== UAL + axolotl train: summary ===" in out and "UAL active: mode=column, alpha=0.1" in out
    assert "steps: 3;" in out and "ual_smoothing: mean" in out
