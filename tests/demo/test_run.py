"""The whole demo at a tiny size: both stages, four arms, two seeds, the analysis, figure and summary.json."""

import json

import pytest

pytest.importorskip("trl")
pytest.importorskip("matplotlib")

from ual_plugin.demo.run import DEMO_ARMS, HARMS, SEQUENCE, DemoSettings, run_demo  # noqa: E402

pytestmark = pytest.mark.slow


def test_demo_runs_end_to_end(tmp_path, capsys):
    s = DemoSettings(out_dir=tmp_path, seeds=(0, 1), pretrain_steps=4, steps=2, hidden_size=32, axolotl=False)
    summary = run_demo(s)
    out = capsys.readouterr().out
    assert "fixed order" in out and "ROBUSTNESS (max_grad_norm=0)" in out and "VERDICT" in out
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert set(on_disk["arms"]) == {"base", *DEMO_ARMS}
    assert len(on_disk["primary_sequence"]) == len(SEQUENCE) and len(on_disk["harms"]) == len(HARMS)
    verdicts = [e["verdict"] for e in on_disk["primary_sequence"]]
    assert set(verdicts) <= {"supports", "refutes", "inconclusive", "not reached"}
    first_stop = next((i for i, v in enumerate(verdicts) if v != "supports"), len(verdicts))
    assert all(v == "not reached" for v in verdicts[first_stop + 1:])  # the gate stays closed
    assert {h["verdict"] for h in on_disk["harms"]} <= {"non-inferior", "not shown"}
    assert len(on_disk["robustness"]["primary_sequence"]) == len(SEQUENCE)
    for arm in ("ual", "shuffled", "uniform_token"):  # the comparison's unit: per label token
        for budget in (on_disk["arms"][arm]["per_seed"][str(seed)]["smoothing_budget"] for seed in (0, 1)):
            assert budget["per_token"] == pytest.approx(0.1, abs=1e-6)
    # pre-trained once per seed: the two seeds' stage-0 models differ
    assert on_disk["arms"]["base"]["per_seed"]["0"]["fact_unseen_p"] != \
        on_disk["arms"]["base"]["per_seed"]["1"]["fact_unseen_p"]
    assert (tmp_path / "base" / "seed1" / "config.json").is_file()
    assert on_disk["versions"]["torch"] and on_disk["versions"]["trl"]
    assert (tmp_path / "demo_results.png").stat().st_size > 10_000
    assert "primary questions answered in UAL's favour" in summary["verdict"]
    # PPL mode's two running means, both shown: each logged a mean smoothing at every logging step
    ppl = on_disk["ppl_mode_mean_smoothing"]
    assert set(ppl) == {"ual_ppl_window=64", "ual_ppl_window=0"}
    assert all(points and all(0 < v < 1 for _, v in points) for points in ppl.values())
    assert "ual_ppl_window=0 (the paper's mean over all history)" in out
