"""In-process: ``UALAxolotlTrainer``'s loss against a full-logits reference, its logging, and its map fit."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

pytest.importorskip("axolotl")

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402

from tests.axolotl.helpers import chat_rows, score_of  # noqa: E402
from ual_plugin.axolotl.args import UALTrainingArgsMixin  # noqa: E402
from ual_plugin.axolotl.dataset import SCORE_COLUMN  # noqa: E402
from ual_plugin.data import TOKEN_COLUMN  # noqa: E402
from ual_plugin.loss import smoothed_cross_entropy  # noqa: E402
from ual_plugin.mapping import fit_smoothing_map  # noqa: E402

pytestmark = pytest.mark.axolotl


@pytest.fixture(scope="module")
def parts(workspace):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(workspace.model)
    rows = []
    for i, r in enumerate(chat_rows(range(0, 12))):
        prompt = tok.apply_chat_template(r["messages"][:1], add_generation_prompt=True, tokenize=False)
        full = tok.apply_chat_template(r["messages"], tokenize=False)
        p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        ids = tok(full, add_special_tokens=False)["input_ids"]
        rows.append({"input_ids": ids, "attention_mask": [1] * len(ids),
                     "labels": [-100] * len(p_ids) + ids[len(p_ids):], SCORE_COLUMN: score_of(i)})
    return tok, rows


def make_trainer(workspace, tmp_path, rows, tok, model_dir=None, **ual):
    from axolotl.core.trainers.base import AxolotlTrainer  # noqa: F401  (import order: trainer before args)
    from axolotl.core.training_args import AxolotlTrainingArguments
    from axolotl.utils.collators import DataCollatorForSeq2Seq
    from transformers import AutoModelForCausalLM

    from ual_plugin.axolotl.trainer import UALAxolotlTrainer

    if issubclass(AxolotlTrainingArguments, UALTrainingArgsMixin):
        Args = AxolotlTrainingArguments  # the plugin was registered before Axolotl built its arguments class
    else:

        @dataclass
        class Args(UALTrainingArgsMixin, AxolotlTrainingArguments):
            pass

    args = Args(output_dir=str(tmp_path), per_device_train_batch_size=2, report_to=[], use_cpu=True,
                average_tokens_across_devices=True, include_tkps=False, ual=True, **ual)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir or workspace.model)
    collator = DataCollatorForSeq2Seq(tok, padding=True, pad_to_multiple_of=8, return_tensors="pt")
    train = Dataset.from_list(rows[:8])
    evaluation = Dataset.from_list(rows[8:])
    return UALAxolotlTrainer(model=model, args=args, train_dataset=train, eval_dataset=evaluation,
                             data_collator=collator, eval_data_collator=collator, processing_class=tok)


def reference(model, batch, eps):
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    tgt = batch["labels"][:, 1:]
    total = smoothed_cross_entropy(logits[:, :-1], tgt, eps[:, 1:], reduction="sum")
    return total, int((tgt != -100).sum())


def test_column_mode_loss_matches_full_logits_reference(workspace, tmp_path, parts):
    tok, rows = parts
    trainer = make_trainer(workspace, tmp_path, rows, tok, ual_alpha=0.2)
    smap = fit_smoothing_map([r[SCORE_COLUMN] for r in rows[:8]], alpha=0.2)
    assert trainer.ual_map.beta == pytest.approx(smap.beta)  # fitted on the training rows only
    assert "UAL active: mode=column, alpha=0.2" in trainer.ual_banner()
    assert trainer.model_accepts_loss_kwargs is True

    batch = trainer.data_collator([dict(r) for r in rows[:3]])
    eps = batch[TOKEN_COLUMN]
    for b, r in enumerate(rows[:3]):
        assert torch.allclose(eps[b, : len(r["input_ids"])], torch.tensor(smap.apply_one(r[SCORE_COLUMN])))
    total, n = reference(trainer.model, batch, eps)
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, dict(batch))
    assert loss.item() == pytest.approx(float(total) / n, rel=1e-5)
    loss = trainer.compute_loss(trainer.model, dict(batch), num_items_in_batch=torch.tensor(4 * n))
    assert loss.item() == pytest.approx(float(total) / (4 * n), rel=1e-5)

    mask = batch["labels"][:, 1:] != -100
    expected_mean = float((eps[:, 1:] * mask).sum() / mask.sum())
    trainer.log({"loss": 1.0})
    logged = trainer.state.log_history[-1]
    assert logged["ual_smoothing"] == pytest.approx(expected_mean, abs=1e-5)  # Axolotl rounds metrics to 5 digits

    # evaluation rows are smoothed with the training map
    eval_batch = trainer.eval_data_collator([dict(r) for r in rows[8:10]])
    assert torch.allclose(eval_batch[TOKEN_COLUMN][0, 0], torch.tensor(smap.apply_one(rows[8][SCORE_COLUMN])))


def test_ppl_mode_loss_matches_reference(workspace, tmp_path, parts):
    from ual_plugin.ppl import PPLSmoother

    tok, rows = parts
    plain = [{k: v for k, v in r.items() if k != SCORE_COLUMN} for r in rows]
    trainer = make_trainer(workspace, tmp_path, plain, tok, ual_alpha=0.2, ual_mode="ppl")
    assert trainer.ual_map is None and "mode=ppl" in trainer.ual_banner()
    batch = trainer.data_collator([dict(r) for r in plain[:3]])
    with torch.no_grad():
        logits = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    tgt = batch["labels"][:, 1:]
    mask = tgt != -100
    nll = smoothed_cross_entropy(logits[:, :-1], tgt, 0.0, reduction="none")
    ppl = ((nll * mask).sum(1) / mask.sum(1)).exp()
    per_row = PPLSmoother(0.2, 0.99)(ppl)
    eps = torch.where(mask, per_row[:, None].expand_as(tgt), torch.zeros_like(nll))
    total = smoothed_cross_entropy(logits[:, :-1], tgt, eps, reduction="sum")
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, dict(batch))
    assert loss.item() == pytest.approx(float(total) / int(mask.sum()), rel=1e-4)
    trainer.log({"loss": 1.0})
    assert trainer.state.log_history[-1]["ual_ppl_running_mean"] == pytest.approx(float(ppl.mean()), rel=1e-4, abs=1e-5)


def test_lm_head_in_modules_to_save_is_trained(workspace, tmp_path, parts):
    """`lora_modules_to_save: [lm_head]`: the loss reads (and trains) PEFT's trainable copy of lm_head."""
    from peft import LoraConfig, get_peft_model

    tok, rows = parts
    trainer = make_trainer(workspace, tmp_path, rows, tok)
    model = get_peft_model(trainer.model, LoraConfig(r=4, target_modules=["q_proj"], modules_to_save=["lm_head"]))
    batch = trainer.data_collator([dict(r) for r in rows[:2]])
    model.train()
    trainer.compute_loss(model, dict(batch)).backward()
    wrapper = model.base_model.model.lm_head
    assert wrapper.modules_to_save["default"].weight.grad is not None
    assert wrapper.original_module.weight.grad is None


@pytest.mark.parametrize("per", ["sample", "token"])
def test_map_mean_holds_in_the_chosen_unit(workspace, tmp_path, parts, per):
    import numpy as np

    tok, base_rows = parts
    rows = []
    for i, r in enumerate(base_rows):  # stretch the replies so label-token counts differ by more than 10x
        extra = [r["input_ids"][-2]] * (12 * i)
        ids = r["input_ids"][:-1] + extra + r["input_ids"][-1:]
        labels = r["labels"][:-1] + extra + r["labels"][-1:]
        rows.append({**r, "input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels})
    trainer = make_trainer(workspace, tmp_path, rows, tok, ual_alpha=0.2, ual_alpha_per=per)
    scores = np.array([r[SCORE_COLUMN] for r in rows[:8]])
    tokens = np.array([sum(t != -100 for t in r["labels"][1:]) for r in rows[:8]], dtype=float)
    assert tokens.max() >= 10 * tokens.min()
    values = np.array([trainer.ual_map.apply_one(u) for u in scores])
    mean = values.mean() if per == "sample" else (values * tokens).sum() / tokens.sum()
    assert abs(mean - 0.2) < 1e-6
    banner = trainer.ual_banner()
    assert f"ual_alpha_per={per}" in banner and "per sample" in banner and "per label token" in banner


def test_uniform_mode_smooths_every_token_with_alpha(workspace, tmp_path, parts):
    tok, rows = parts
    plain = [{k: v for k, v in r.items() if k != SCORE_COLUMN} for r in rows]
    trainer = make_trainer(workspace, tmp_path, plain, tok, ual_alpha=0.15, ual_mode="uniform")
    assert trainer.ual_map is None and "mode=uniform" in trainer.ual_banner()
    batch = trainer.data_collator([dict(r) for r in plain[:3]])
    eps = batch[TOKEN_COLUMN]
    for b, r in enumerate(plain[:3]):
        assert torch.all(eps[b, : len(r["input_ids"])] == torch.tensor(0.15))
    total, n = reference(trainer.model, batch, eps)
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, dict(batch))
    assert loss.item() == pytest.approx(float(total) / n, rel=1e-5)


def _tiny_mixtral(tok, path, coef):
    import transformers

    cfg = transformers.MixtralConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2, num_local_experts=4,
                                     num_experts_per_tok=2, max_position_embeddings=256, output_router_logits=True,
                                     router_aux_loss_coef=coef, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    transformers.MixtralForCausalLM(cfg).save_pretrained(path)
    return str(path)


def _router_grad(trainer, batches, n_items):
    """The routers' gradient of one optimizer step over ``batches`` (accumulated as Trainer accumulates)."""
    trainer.model.train()
    trainer.model.zero_grad(set_to_none=True)
    trainer.current_gradient_accumulation_steps = len(batches)
    for b in batches:
        trainer.compute_loss(trainer.model, dict(b), num_items_in_batch=n_items).backward()
    return torch.cat([p.grad.flatten() for k, p in trainer.model.named_parameters()
                      if "gate" in k and "expert" not in k and p.grad is not None])


def test_moe_router_loss_at_the_configs_weight_and_averaged_over_accumulation(workspace, tmp_path, parts):
    """A tiny Mixtral at smoothing ~0: the router gradient follows the config's router_aux_loss_coef, and GA 2 gives
    about one batch's router gradient (the aux loss is a per-micro-batch mean); added once per micro-batch instead of
    averaged, it would be about twice that at a large coefficient."""
    tok, rows = parts
    grads = {}
    for coef in (0.001, 5.0):
        trainer = make_trainer(workspace, tmp_path / str(coef), rows, tok, _tiny_mixtral(tok, tmp_path / f"m{coef}", coef),
                               ual_alpha=1e-9)
        batch = trainer.data_collator([dict(r) for r in rows[:4]])
        n_items = (batch["labels"][:, 1:] != -100).sum()
        halves = [trainer.data_collator([dict(r) for r in rows[i : i + 2]]) for i in (0, 2)]
        grads[coef] = (_router_grad(trainer, [batch], n_items), _router_grad(trainer, halves, n_items))
    one, accumulated = grads[5.0]
    assert float((grads[0.001][0] - one).norm() / one.norm()) > 1e-2  # the coefficient reaches the routers
    slope = float(accumulated @ one / (one @ one))
    assert 0.85 < slope < 1.15
