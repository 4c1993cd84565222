"""The demo pipeline end to end on a very small setting, and the synthetic data generator."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from ual_plugin.demo.synthetic import generate

pytest.importorskip("trl")


def test_generator_is_deterministic_and_mixed():
    a, b = generate(200, seed=3), generate(200, seed=3)
    assert a == b
    assert a != generate(200, seed=4)
    counts = Counter(r["entropy"] for r in a)
    assert counts["low"] > 50 and counts["high"] > 50
    for r in a:
        if r["category"] == "arithmetic":
            x, y = r["prompt"].removeprefix("What is ").removesuffix("?").split(" + ")
            assert int(r["completion"]) == int(x) + int(y)


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path):
    from ual_plugin.demo.run import DemoSettings, run_demo

    summary = run_demo(DemoSettings(out_dir=tmp_path, n_train=48, n_eval=12, epochs=1, batch_size=8,
                                    hidden_size=32, axolotl=False))
    assert set(summary["results"]) == {"SFT", "UAL"}
    assert summary["results"]["SFT"]["logged ual_smoothing (mean)"] == 0.0
    assert 0.0 < summary["results"]["UAL"]["logged ual_smoothing (mean)"] < 0.99
    png = tmp_path / "loss_curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    scored = [json.loads(line) for line in (tmp_path / "train.ppl.jsonl").read_text().splitlines()]
    assert len(scored) == 48 and all(r["uncertainty"] > 1.0 for r in scored)
    assert json.loads((tmp_path / "summary.json").read_text())["results"]["UAL"]["train seconds"] > 0
