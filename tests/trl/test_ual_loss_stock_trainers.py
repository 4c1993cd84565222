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

# precision left to each config's default: SFTConfig resolves bf16=True on CPU too (use_cpu=True), as users run it
COMMON = dict(use_cpu=True, report_to=[], save_strategy="no", logging_steps=1, max_steps=3,
              per_device_train_batch_size=4, disable_tqdm=True, seed=0)


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


@pytest.mark.parametrize("accumulation", [1, 2])
def test_the_one_liner_keeps_the_moe_router_loss_as_stock_weights_it(tiny_model_dir, tmp_path, accumulation):
    """compute_loss_func=UALLoss on a tiny Mixtral at smoothing ~0: the router update equals stock SFTTrainer's at two
    coefficients and GA 1 and 2 (TRL leaves the router loss to the function), and it follows the coefficient."""
    from tests.trl.test_trainer import _tiny_mixtral_dir, rel_err

    model_dir = _tiny_mixtral_dir(tiny_model_dir, tmp_path)

    def router_delta(name, coef, loss_fn):
        args = SFTConfig(output_dir=str(tmp_path / name), loss_type="nll", max_length=64, optim="sgd",
                         learning_rate=1.0, lr_scheduler_type="constant", max_grad_norm=0.0, weight_decay=0.0,
                         warmup_steps=0, train_sampling_strategy="sequential", router_aux_loss_coef=coef,
                         # fp32: two trainers' router updates are compared to 1e-4, below bf16's rounding
                         bf16=False, **{**COMMON, "max_steps": 1, "per_device_train_batch_size": 8 // accumulation,
                                        "gradient_accumulation_steps": accumulation})
        tr = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(model_dir), args=args,
                        train_dataset=Dataset.from_list(rows(8)),
                        processing_class=AutoTokenizer.from_pretrained(model_dir), compute_loss_func=loss_fn)
        before = {k: v.detach().clone() for k, v in tr.model.named_parameters()}
        tr.train()
        return torch.cat([(p.detach() - before[k]).flatten() for k, p in tr.model.named_parameters()
                          if "gate" in k and "expert" not in k])

    ual, stock = {}, {}
    for coef in (0.001, 5.0):
        ual[coef] = router_delta(f"u{coef}", coef, UALLoss(alpha=1e-9))
        stock[coef] = router_delta(f"s{coef}", coef, None)
        assert rel_err(ual[coef], stock[coef]) < 1e-4, (coef, rel_err(ual[coef], stock[coef]))
    # the coefficient reaches the router update wherever it reaches stock's (trl >= 1.16 takes the trainer's; with
    # loss_type='nll', trl 1.9's model keeps the coefficient it was built with, for stock and the one-liner alike)
    assert (rel_err(ual[5.0], ual[0.001]) > 1e-2) == (rel_err(stock[5.0], stock[0.001]) > 1e-2)
