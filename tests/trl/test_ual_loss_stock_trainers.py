"""`compute_loss_func=ual_loss` (PPL mode) on an unmodified SFTTrainer and transformers Trainer."""

from __future__ import annotations

import json
import math

import pytest
import torch

pytest.importorskip("trl")

from datasets import Dataset  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments  # noqa: E402
from trl import SFTConfig, SFTTrainer  # noqa: E402

from ual_plugin import ual_loss  # noqa: E402
from ual_plugin.ppl import UALLoss  # noqa: E402

pytestmark = pytest.mark.slow

COMMON = dict(use_cpu=True, report_to=[], save_strategy="no", logging_steps=1, max_steps=3,
              per_device_train_batch_size=4, bf16=False, disable_tqdm=True, seed=0)


def rows(n=12):
    return [{"prompt": f"What is {i} plus {i}?", "completion": f" It is {2 * i}."} for i in range(n)]


def test_ual_loss_on_stock_sft_trainer(tiny_model_dir, tmp_path, caplog):
    loss_fn = UALLoss(alpha=0.2)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    args = SFTConfig(output_dir=str(tmp_path), loss_type="nll", max_length=64, **COMMON)
    tr = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows()),
                    processing_class=AutoTokenizer.from_pretrained(tiny_model_dir), compute_loss_func=loss_fn)
    before = model.lm_head.weight.detach().clone()
    with caplog.at_level("WARNING", logger="ual_plugin"):
        tr.train()
    losses = [h["loss"] for h in tr.state.log_history if "loss" in h]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    assert not torch.equal(before, model.lm_head.weight)
    # the log shows UAL is on: one banner, and the mean smoothing at every logging step
    banners = [r.getMessage() for r in caplog.records if r.getMessage().startswith("UAL active")]
    assert len(banners) == 1 and "mode=ppl" in banners[0] and "alpha=0.2" in banners[0]
    smoothing = [h["ual_smoothing"] for h in tr.state.log_history if "loss" in h]
    assert len(smoothing) == 3 and all(0.0 < v < 0.99 for v in smoothing)
    assert loss_fn.run_of(tr).smoother.count == 12  # one perplexity per sample seen
    assert 0.0 < loss_fn.last_mean_smoothing < 0.99


def test_ual_loss_on_stock_transformers_trainer(tiny_model_dir, tmp_path):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    texts = [f"Sample {i}: the answer is {i * 3}." for i in range(8)]
    enc = [tok(t) for t in texts]
    data = Dataset.from_list([{"input_ids": e["input_ids"], "labels": e["input_ids"]} for e in enc])

    def collate(batch):
        width = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), width), tok.pad_token_id)
        labels = torch.full((len(batch), width), -100)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, b in enumerate(batch):
            n = len(b["input_ids"])
            ids[i, :n] = torch.tensor(b["input_ids"])
            labels[i, :n] = torch.tensor(b["labels"])
            mask[i, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    args = TrainingArguments(output_dir=str(tmp_path), remove_unused_columns=False, **COMMON)
    tr = Trainer(model=model, args=args, train_dataset=data, data_collator=collate, compute_loss_func=ual_loss)
    tr.train()
    losses = [h["loss"] for h in tr.state.log_history if "loss" in h]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    assert ual_loss.run_of(tr).smoother.count == 12
    assert all(0.0 < h["ual_smoothing"] < 0.99 for h in tr.state.log_history if "loss" in h)


def test_chunked_nll_loss_type_gets_a_message_naming_the_fix(tiny_model_dir, tmp_path):
    """SFTTrainer's chunked_nll loss never builds logits: say to use loss_type='nll' (or UALSFTTrainer)."""
    args = SFTConfig(output_dir=str(tmp_path), max_length=64, **COMMON)
    if args.loss_type != "chunked_nll":
        pytest.skip(f"this trl has no chunked_nll loss_type (default {args.loss_type!r})")
    tr = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_model_dir), args=args,
                    train_dataset=Dataset.from_list(rows()),
                    processing_class=AutoTokenizer.from_pretrained(tiny_model_dir), compute_loss_func=UALLoss())
    with pytest.raises(ValueError, match="loss_type='nll'"):
        tr.train()


def test_consecutive_runs_with_the_one_liner_start_afresh(tiny_model_dir, tmp_path, caplog):
    """A sweep or notebook: the second trainer gets its own running mean, banner and ual_smoothing log."""
    def run(name):
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        args = SFTConfig(output_dir=str(tmp_path / name), loss_type="nll", max_length=64, **COMMON)
        tr = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows()),
                        processing_class=AutoTokenizer.from_pretrained(tiny_model_dir), compute_loss_func=ual_loss)
        tr.train()
        return tr, [h["ual_smoothing"] for h in tr.state.log_history if "loss" in h]

    with caplog.at_level("WARNING", logger="ual_plugin"):
        first, first_smoothing = run("a")
        second, second_smoothing = run("b")
    banners = [r.getMessage() for r in caplog.records if r.getMessage().startswith("UAL active")]
    assert len(banners) == 2
    assert len(first_smoothing) == 3 and second_smoothing == pytest.approx(first_smoothing, rel=1e-6)
    assert ual_loss.run_of(first) is not ual_loss.run_of(second)
    assert ual_loss.run_of(second).smoother.count == 12


def test_the_one_liner_saves_and_resumes_its_running_mean(tiny_model_dir, tmp_path):
    from ual_plugin.ppl import STATE_FILE

    def trainer(max_steps):
        args = SFTConfig(output_dir=str(tmp_path), loss_type="nll", max_length=64,
                         **{**COMMON, "max_steps": max_steps, "save_strategy": "steps", "save_steps": 2})
        return SFTTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_model_dir), args=args,
                          train_dataset=Dataset.from_list(rows()),
                          processing_class=AutoTokenizer.from_pretrained(tiny_model_dir), compute_loss_func=ual_loss)

    first = trainer(2)
    first.train()
    saved = json.loads((tmp_path / "checkpoint-2" / STATE_FILE).read_text())["ppl"]
    assert saved["count"] == 8
    resumed = trainer(3)
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    assert ual_loss.run_of(resumed).smoother.count == 12  # 8 restored + 4 from step 3
