"""The whole demo at a tiny size: both stages, five arms, two seeds, statistics, figure and summary.json."""

import json

import pytest

pytest.importorskip("trl")
pytest.importorskip("matplotlib")

from ual_plugin.demo.arms import ARM_KEYS  # noqa: E402
from ual_plugin.demo.report import PRIMARY  # noqa: E402
from ual_plugin.demo.run import DemoSettings, run_demo  # noqa: E402

pytestmark = pytest.mark.slow


def test_demo_runs_end_to_end(tmp_path, capsys):
    s = DemoSettings(out_dir=tmp_path, seeds=(0, 1), pretrain_steps=4, steps=2, hidden_size=32, axolotl=False)
    summary = run_demo(s)
    out = capsys.readouterr().out
    assert "primary endpoints" in out and "Holm" in out
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert set(on_disk["arms"]) == {"base", *ARM_KEYS}
    assert len(on_disk["primary_endpoints"]) == len(PRIMARY)
    assert {e["verdict"] for e in on_disk["primary_endpoints"]} <= {"supports", "refutes", "inconclusive"}
    for arm in ("ual", "shuffled", "uniform_token"):  # the comparison's unit: per label token
        for budget in (on_disk["arms"][arm]["per_seed"][str(seed)]["smoothing_budget"] for seed in (0, 1)):
            assert budget["per_token"] == pytest.approx(0.1, abs=1e-6)
    assert (tmp_path / "demo_results.png").stat().st_size > 10_000
    assert summary["verdict"].startswith("Of 7 primary endpoints")
    # PPL mode's two running means, both shown: each logged a mean smoothing at every logging step
    ppl = on_disk["ppl_mode_mean_smoothing"]
    assert set(ppl) == {"ual_ppl_window=64", "ual_ppl_window=0"}
    assert all(points and all(0 < v < 1 for _, v in points) for points in ppl.values())
    assert "ual_ppl_window=0 (the paper's mean over all history)" in out
