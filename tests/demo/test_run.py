"""The demo end to end on a very small setting (no Axolotl step): three arms x seeds, every number kept."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("trl")

from ual_plugin.demo.arms import ARMS  # noqa: E402
from ual_plugin.demo.evaluate import METRICS  # noqa: E402
from ual_plugin.demo.report import verdict  # noqa: E402
from ual_plugin.demo.run import DemoSettings, run_demo  # noqa: E402

SEEDS = (0, 1)
ALPHA = 0.2


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    returned = run_demo(DemoSettings(out_dir=out, seeds=SEEDS, n_train=48, n_eval=16, epochs=2, batch_size=8,
                                     hidden_size=32, alpha=ALPHA, axolotl=False))
    return out, returned, json.loads((out / "summary.json").read_text())


@pytest.mark.slow
def test_summary_holds_every_arm_seed_and_metric(demo):
    _, returned, summary = demo
    assert summary == returned
    assert list(summary["arms"]) == [a.key for a in ARMS]
    for arm in summary["arms"].values():
        assert list(arm["per_seed"]) == [str(s) for s in SEEDS]
        for per_seed in arm["per_seed"].values():
            assert {m[0] for m in METRICS} <= set(per_seed)
            assert len(per_seed["train_loss"]) == 2 * 48 // 8 // 5  # one point per 5 logging steps
        assert set(arm["summary"]) == {m[0] for m in METRICS}
        assert all(s["n"] == len(SEEDS) for s in arm["summary"].values())
    assert set(summary["metrics"]) == {m[0] for m in METRICS}


@pytest.mark.slow
def test_smoothing_is_what_each_arm_says(demo):
    _, _, summary = demo
    arms = summary["arms"]
    assert all(arms["sft"]["per_seed"][str(s)]["logged_ual_smoothing"] == 0.0 for s in SEEDS)
    # uniform: every label token gets exactly alpha; UAL: alpha per row on average, more on long open-ended replies
    assert all(arms["uniform"]["per_seed"][str(s)]["logged_ual_smoothing"] == pytest.approx(ALPHA, abs=1e-4)
               for s in SEEDS)
    per_row = summary["ual_smoothing_per_row"]
    assert per_row["all rows"] == pytest.approx(ALPHA)
    assert per_row["one-right-answer rows"] < ALPHA < per_row["open-ended rows"]


@pytest.mark.slow
def test_verdict_and_figure_follow_from_the_stored_numbers(demo):
    out, _, summary = demo
    results = {key: {int(seed): m for seed, m in arm["per_seed"].items()} for key, arm in summary["arms"].items()}
    labels = {key: arm["label"] for key, arm in summary["arms"].items()}
    assert summary["verdict"] == verdict(results, labels)
    for key, *_ in METRICS:
        c = summary["comparisons"][key]["ual_vs_uniform"]
        diffs = [results["ual"][s][key] - results["uniform"][s][key] for s in SEEDS]
        assert c["differences"] == pytest.approx(diffs)
    assert (out / "demo_results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in ("train.jsonl", "train.scored.jsonl", "eval.jsonl"):
        assert (out / name).stat().st_size > 0
    assert "axolotl" not in summary


@pytest.mark.slow
def test_the_same_seed_trains_the_same_model(demo, tmp_path):
    _, _, summary = demo
    again = run_demo(DemoSettings(out_dir=tmp_path, seeds=(1,), n_train=48, n_eval=16, epochs=2, batch_size=8,
                                  hidden_size=32, alpha=ALPHA, axolotl=False))
    for arm in ("sft", "ual"):
        for key, *_ in METRICS:
            assert again["arms"][arm]["per_seed"]["1"][key] == pytest.approx(summary["arms"][arm]["per_seed"]["1"][key],
                                                                             rel=1e-5)


@pytest.mark.parametrize("n_train, n_eval", [(48, 16), (320, 402)])
def test_held_out_rows_fill_every_group_and_never_copy_an_open_ended_training_row(n_train, n_eval):
    from ual_plugin.demo.run import build_data

    train, held_out = build_data(DemoSettings(n_train=n_train, n_eval=n_eval))
    assert len(train) == n_train and len(held_out) == n_eval
    sizes = {g: sum(r["group"] == g for r in held_out) for g in ("seen", "new", "open")}
    assert sizes == {"seen": n_eval // 4, "new": n_eval // 4, "open": n_eval - 2 * (n_eval // 4)}
    prompts = {r["prompt"] for r in train}
    rows = {(r["prompt"], r["completion"]) for r in train}
    for r in held_out:
        assert (r["entropy"] == "high") == (r["group"] == "open")
        if r["group"] != "open":
            assert (r["prompt"] in prompts) == (r["group"] == "seen")
        else:
            assert (r["prompt"], r["completion"]) not in rows
    assert build_data(DemoSettings(n_train=n_train, n_eval=n_eval)) == (train, held_out)  # deterministic


def test_cli_refuses_zero_seeds():
    from ual_plugin.cli import main

    with pytest.raises(SystemExit, match="--seeds must be >= 1"):
        main(["demo", "--seeds", "0", "--no-axolotl"])


@pytest.mark.slow
def test_ppl_scores_from_ual_score_feed_the_ual_arm(tmp_path):
    summary = run_demo(DemoSettings(out_dir=tmp_path, seeds=(0,), n_train=24, n_eval=12, epochs=1, batch_size=8,
                                    hidden_size=32, scorer="ppl", axolotl=False))
    scored = [json.loads(line) for line in (tmp_path / "train.ppl.jsonl").read_text().splitlines()]
    assert len(scored) == 24 and all(r["uncertainty"] > 1.0 for r in scored)  # perplexities
    assert summary["uncertainty_source"] == "ppl"
    assert "one seed cannot separate" in summary["verdict"][-1]
