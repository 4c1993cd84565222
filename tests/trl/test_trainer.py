"""UALSFTTrainer end to end on a tiny Llama: data alignment, loss, gradient accumulation, logging, errors."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

datasets = pytest.importorskip("datasets")
pytest.importorskip("trl")

from datasets import Dataset  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from ual_plugin import smoothing_from_uncertainty  # noqa: E402
from ual_plugin.data import SAMPLE_COLUMN, TOKEN_COLUMN  # noqa: E402
from ual_plugin.trl import UALSFTConfig, UALSFTTrainer  # noqa: E402

pytestmark = pytest.mark.slow


def config_kwargs(tmp_path, **overrides) -> dict:
    """The SFTConfig options every trainer test shares (a stock SFTTrainer takes them as they are)."""
    base = dict(
        output_dir=str(tmp_path / "out"),
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        max_steps=2,
        per_device_train_batch_size=4,
        seed=0,
        data_seed=0,
        dataset_num_proc=None,
        shuffle_dataset=False,
        max_length=64,
        disable_tqdm=True,
    )  # precision left to SFTConfig: bf16 autocast on CPU too (use_cpu=True), as users run it
    base.update(overrides)
    return base


def config(tmp_path, **overrides) -> UALSFTConfig:
    return UALSFTConfig(**config_kwargs(tmp_path, **overrides))


# Where a test compares UAL with stock SFTTrainer (or another layout) to 1e-4 or tighter, it trains in fp32: under
# bf16 autocast UAL's chunked GEMMs and stock's full-logits GEMMs round differently, by about 1e-3. The default
# precision is compared with stock at bf16's tolerance in test_user_path.py.
FP32 = {"bf16": False}


def trainer(tiny_model_dir, train, tmp_path, eval_dataset=None, **overrides) -> UALSFTTrainer:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    return UALSFTTrainer(
        model=model, args=config(tmp_path, **overrides), train_dataset=train, eval_dataset=eval_dataset,
        processing_class=tok,
    )


def prompt_completion(n=24, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        words = " ".join(["more"] * int(rng.integers(0, 6)))
        rows.append({"prompt": f"Sample {i}: what is {i} plus {i}? {words}", "completion": f" It is {2 * i}.",
                     "uncertainty": float(1 + 7 * i)})
    return Dataset.from_list(rows)


def pretokenized(n=24, seed=0, base_token=20):
    """Sample i is made only of token id base_token+i, so any token tells which sample it came from."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        length = int(rng.integers(3, 20))
        ids = [base_token + i] * length
        rows.append({"input_ids": ids, "uncertainty": float(3 + 5 * i)})
    return Dataset.from_list(rows)


def all_batches(tr):
    loader = tr.get_train_dataloader()
    return [batch for batch in loader]


@pytest.mark.parametrize(
    "layout",
    [dict(packing=False), dict(packing=False, max_length=8), dict(packing=True, packing_strategy="bfd", max_length=16),
     dict(packing=True, packing_strategy="bfd_split", max_length=16),
     dict(packing=True, packing_strategy="wrapped", max_length=16)],
    ids=["padded", "truncated", "bfd", "bfd_split", "wrapped"],
)
def test_each_token_gets_its_own_samples_smoothing(tiny_model_dir, tmp_path, layout):
    ds = pretokenized()
    tr = trainer(tiny_model_dir, ds, tmp_path, ual_alpha=0.2, **layout)
    expected = smoothing_from_uncertainty(ds["uncertainty"], alpha=0.2)
    seen = set()
    for batch in all_batches(tr):
        ids, labels, eps = batch["input_ids"], batch["labels"], batch[TOKEN_COLUMN]
        assert eps.shape == ids.shape
        for tok, lab, e in zip(ids.flatten().tolist(), labels.flatten().tolist(), eps.flatten().tolist(), strict=True):
            if lab == -100:
                continue
            sample = tok - 20
            assert 0 <= sample < len(ds)
            assert e == pytest.approx(expected[sample], abs=1e-6)
            seen.add(sample)
    assert len(seen) == len(ds)


@pytest.mark.parametrize("packing", [False, True], ids=["padded", "packed"])
def test_prompt_completion_smoothing_on_completion_tokens_only(tiny_model_dir, tmp_path, packing):
    ds = prompt_completion(12)
    tr = trainer(tiny_model_dir, ds, tmp_path, ual_alpha=0.3, packing=packing, max_length=128,
                 completion_only_loss=True, per_device_train_batch_size=3)
    expected = smoothing_from_uncertainty(ds["uncertainty"], alpha=0.3)
    tok = tr.processing_class
    checked = 0
    for batch in all_batches(tr):
        ids, labels, eps = batch["input_ids"], batch["labels"], batch[TOKEN_COLUMN]
        pos = batch.get("position_ids")
        for r in range(ids.shape[0]):
            starts = [0] if pos is None else (pos[r] == 0).nonzero().flatten().tolist()
            ends = starts[1:] + [ids.shape[1]]
            for s, e in zip(starts, ends, strict=True):
                text = tok.decode(ids[r, s:e])
                if "Sample" not in text:
                    continue
                i = int(text.split("Sample ")[1].split(":")[0])
                lab = labels[r, s:e] != -100
                assert lab.any()
                # the prompt is masked, the completion is not, and its smoothing is the sample's own
                assert "Sample" not in tok.decode(labels[r, s:e][lab])
                torch.testing.assert_close(eps[r, s:e][lab], torch.full((int(lab.sum()),), float(expected[i])))
                checked += 1
    assert checked == len(ds)


def test_conversational_assistant_only(tiny_model_dir, tmp_path):
    rows = [{"messages": [{"role": "user", "content": f"Sample {i}: hello"},
                          {"role": "assistant", "content": f"reply number {i}"}], "uncertainty": float(i + 1)}
            for i in range(8)]
    ds = Dataset.from_list(rows)
    tr = trainer(tiny_model_dir, ds, tmp_path, assistant_only_loss=True, per_device_train_batch_size=8)
    expected = smoothing_from_uncertainty([r["uncertainty"] for r in rows], alpha=0.1)
    batch = all_batches(tr)[0]
    tok = tr.processing_class
    for r in range(batch["input_ids"].shape[0]):
        text = tok.decode(batch["input_ids"][r])
        i = int(text.split("Sample ")[1].split(":")[0])
        lab = batch["labels"][r] != -100
        assert "hello" not in tok.decode(batch["labels"][r][lab])
        assert torch.allclose(batch[TOKEN_COLUMN][r][lab], torch.tensor(float(expected[i])))


def reference_loss(model, batch, num_items):
    """UAL loss from the full logits with torch's own label-smoothed cross-entropy, token by token."""
    kwargs = {k: v for k, v in batch.items() if k not in ("labels", TOKEN_COLUMN)}
    logits = model(**kwargs).logits[:, :-1]
    labels, eps = batch["labels"][:, 1:], batch[TOKEN_COLUMN][:, 1:]
    total = 0.0
    for r, c in (labels != -100).nonzero().tolist():
        total = total + F.cross_entropy(logits[r, c : c + 1], labels[r, c : c + 1], label_smoothing=float(eps[r, c]),
                                        reduction="sum")
    return total / num_items


@pytest.mark.parametrize("packing", [False, True], ids=["padded", "packed"])
def test_loss_equals_torch_reference(tiny_model_dir, tmp_path, packing):
    tr = trainer(tiny_model_dir, prompt_completion(8), tmp_path, packing=packing, ual_alpha=0.4)
    batch = all_batches(tr)[0]
    n = int((batch["labels"][:, 1:] != -100).sum())
    model = tr.model
    ours = tr.compute_loss(model, dict(batch), num_items_in_batch=torch.tensor(n))
    ref = reference_loss(model, batch, n)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    g1 = torch.autograd.grad(ours, list(p for p in model.parameters()))
    g2 = torch.autograd.grad(ref, list(p for p in model.parameters()))
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def one_sgd_step_delta(tiny_model_dir, ds, tmp_path, **overrides):
    tr = trainer(tiny_model_dir, ds, tmp_path, optim="sgd", learning_rate=1.0, lr_scheduler_type="constant",
                 max_grad_norm=0.0, weight_decay=0.0, max_steps=1, warmup_steps=0,
                 train_sampling_strategy="sequential", **overrides)
    before = copy.deepcopy({k: v.detach().clone() for k, v in tr.model.named_parameters()})
    tr.train()
    return torch.cat([(p.detach() - before[k]).flatten() for k, p in tr.model.named_parameters()])


def rel_err(a, b):
    return float((a - b).norm() / b.norm())


# bf16 (SFTConfig's default) and fp32: micro-batches of other shapes round differently under bf16 autocast, so there
# the bound is bf16's (a wrong 1/GA or 1/N scale would be off by 50 % or more); fp32 shows the normalisation is exact.
@pytest.mark.parametrize("bf16,tol", [(True, 1e-2), (False, 1e-5)], ids=["bf16", "fp32"])
@pytest.mark.parametrize("packing", [False, True], ids=["padded", "packed"])
def test_gradient_accumulation_matches_one_big_batch(tiny_model_dir, tmp_path, packing, bf16, tol):
    ds = prompt_completion(24)
    extra = dict(packing=packing, max_length=48, ual_alpha=0.3, bf16=bf16)
    ref = one_sgd_step_delta(tiny_model_dir, ds, tmp_path / "a", per_device_train_batch_size=4,
                             gradient_accumulation_steps=1, **extra)
    assert ref.norm() > 0
    for bs, ga in [(2, 2), (1, 4)]:
        got = one_sgd_step_delta(tiny_model_dir, ds, tmp_path / f"b{bs}", per_device_train_batch_size=bs,
                                 gradient_accumulation_steps=ga, **extra)
        assert rel_err(got, ref) < tol, (bs, ga, rel_err(got, ref))


def test_alpha_near_zero_reproduces_plain_sft(tiny_model_dir, tmp_path):
    ds = prompt_completion(16)
    ual = one_sgd_step_delta(tiny_model_dir, ds, tmp_path / "u", ual_alpha=1e-9, **FP32)
    sft = one_sgd_step_delta(tiny_model_dir, ds, tmp_path / "s", ual=False, loss_type="nll", **FP32)
    assert rel_err(ual, sft) < 1e-5
    # and a real alpha changes the update
    ual_big = one_sgd_step_delta(tiny_model_dir, ds, tmp_path / "b", ual_alpha=0.5, **FP32)
    assert rel_err(ual_big, sft) > 1e-3


def test_trains_and_logs_ual_smoothing_with_eval_sets(tiny_model_dir, tmp_path):
    train = prompt_completion(16)
    eval_with = prompt_completion(6, seed=1)
    eval_without = eval_with.remove_columns("uncertainty")
    tr = trainer(tiny_model_dir, train, tmp_path, eval_dataset={"with": eval_with, "without": eval_without},
                 ual_alpha=0.2, max_steps=3, eval_strategy="steps", eval_steps=3, per_device_eval_batch_size=3)
    # eval rows get the training fit's beta; a set without the column gets 0
    smap = tr.ual_map
    assert smap is not None and smap.n_fit == 16
    e_with = tr.eval_dataset["with"][0][SAMPLE_COLUMN]
    assert e_with == pytest.approx(smap.apply_one(eval_with[0]["uncertainty"]), rel=1e-6)
    assert set(tr.eval_dataset["without"][SAMPLE_COLUMN]) == {0.0}
    tr.train()
    logs = tr.state.log_history
    train_logs = [h["ual_smoothing"] for h in logs if "ual_smoothing" in h]
    assert len(train_logs) == 3
    assert all(0.05 < v < 0.5 for v in train_logs)
    # TRL logs each evaluation set's metrics next to its loss, with the plain eval_ prefix
    assert any("eval_with_loss" in h and h["eval_ual_smoothing"] > 0 for h in logs)
    assert any("eval_without_loss" in h and h["eval_ual_smoothing"] == 0.0 for h in logs)
    assert all(np.isfinite(h["loss"]) for h in logs if "loss" in h)
    assert all(0.0 <= h["mean_token_accuracy"] <= 1.0 and h["num_tokens"] > 0 for h in logs if "loss" in h)
    assert all(0.0 < h["entropy"] <= np.log(len(tr.processing_class)) for h in logs if "loss" in h)


@pytest.mark.parametrize("loss_type", [None, "nll"], ids=["trl_default", "nll"])
def test_trls_own_training_metrics_equal_stocks_at_smoothing_zero(tiny_model_dir, tmp_path, loss_type):
    """SFTTrainer.compute_loss runs under UAL and computes its own loss, entropy, accuracy and num_tokens from the
    UAL outputs: at smoothing ~0 every logged value equals stock SFTTrainer's (trl 1.9: chunked_nll by default, and
    an explicit 'nll'; trl >= 1.16: the fused head)."""
    ds = prompt_completion(16)
    common = dict(max_steps=3, logging_steps=1, **FP32, **({"loss_type": loss_type} if loss_type else {}))
    runs = {}
    for name, extra in (("ual", dict(ual_alpha=1e-9)), ("stock", dict(ual=False))):
        tr = trainer(tiny_model_dir, ds, tmp_path / name, **common, **extra)
        tr.train()
        runs[name] = [h for h in tr.state.log_history if "loss" in h]
    assert len(runs["ual"]) == len(runs["stock"]) == 3
    for ours, theirs in zip(runs["ual"], runs["stock"], strict=True):
        for key in ("loss", "entropy", "mean_token_accuracy", "num_tokens", "grad_norm"):
            assert ours[key] == pytest.approx(theirs[key], rel=1e-4, abs=1e-6), key
        assert "ual_smoothing" in ours and "ual_smoothing" not in theirs


def test_ppl_mode_needs_no_column_and_logs(tiny_model_dir, tmp_path):
    ds = prompt_completion(12).remove_columns("uncertainty")
    tr = trainer(tiny_model_dir, ds, tmp_path, ual_mode="ppl", ual_alpha=0.1, max_steps=3, packing=True,
                 max_length=64)
    tr.train()
    logs = [h for h in tr.state.log_history if "ual_smoothing" in h]
    assert len(logs) == 3
    assert all(0.0 < h["ual_smoothing"] < 0.99 for h in logs)
    assert all(h["ual_ppl_running_mean"] > 1.0 for h in logs)


@pytest.mark.parametrize(
    ("mutate", "pattern"),
    [
        (lambda rows: rows[5].update(uncertainty=None), r"1 of 10 rows of the train dataset.*'uncertainty'.*row 5"),
        (lambda rows: rows[2].update(uncertainty=float("nan")), r"row 2 \(NaN\)"),
        (lambda rows: rows[7].update(uncertainty=-1.0), r"row 7 \(negative"),
        (lambda rows: [r.pop("uncertainty") for r in rows], r"no column 'uncertainty'"),
    ],
    ids=["missing-value", "nan", "negative", "no-column"],
)
def test_bad_rows_stop_before_training(tiny_model_dir, tmp_path, mutate, pattern):
    rows = prompt_completion(10).to_list()
    mutate(rows)
    with pytest.raises(ValueError, match=pattern):
        trainer(tiny_model_dir, Dataset.from_list(rows), tmp_path)


def test_unreachable_alpha_is_reported(tiny_model_dir, tmp_path):
    rows = prompt_completion(10).to_list()
    for r in rows[:8]:
        r["uncertainty"] = 0.0
    with pytest.raises(ValueError, match="cannot be reached"):
        trainer(tiny_model_dir, Dataset.from_list(rows), tmp_path, ual_alpha=0.5)


@pytest.mark.parametrize(
    ("overrides", "pattern"),
    [
        (dict(ual_mode="tokens"), "ual_mode"),
        (dict(ual_alpha=1.2), "above ual_v_max"),
        (dict(use_liger_kernel=True, liger_kernel_config={"cross_entropy": True}), "cross_entropy"),
        (dict(label_smoothing_factor=0.1), "label_smoothing_factor"),
    ],
)
def test_config_conflicts(tmp_path, overrides, pattern):
    with pytest.raises(ValueError, match=pattern):
        config(tmp_path, **overrides)


def test_compute_loss_func_is_refused_with_ual(tiny_model_dir, tmp_path):
    from ual_plugin import ual_loss

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with pytest.raises(ValueError, match="compute_loss_func"):
        UALSFTTrainer(model=model, args=config(tmp_path), train_dataset=prompt_completion(4),
                      compute_loss_func=ual_loss)


def test_two_processes_match_one_big_batch(tiny_model_dir, tmp_path):
    """DDP on CPU (gloo): 2 processes x batch 2 give the same update as 1 process x batch 4."""
    import os
    import subprocess
    import sys

    script = os.path.join(os.path.dirname(__file__), "ddp_step.py")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.getcwd())
    one = tmp_path / "one.pt"
    two = tmp_path / "two.pt"
    subprocess.run([sys.executable, script, str(tiny_model_dir), str(one), "4", "1"], check=True, env=env,
                   capture_output=True)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--standalone", script, str(tiny_model_dir), str(two), "2", "1"],
                          env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = torch.load(one), torch.load(two)
    assert a.norm() > 0
    assert rel_err(b, a) < 1e-5


def test_plain_text_dataset(tiny_model_dir, tmp_path):
    rows = [{"text": f"Sample {i}: a plain line of text number {i}.", "uncertainty": float(2 + 3 * i)} for i in range(6)]
    tr = trainer(tiny_model_dir, Dataset.from_list(rows), tmp_path, per_device_train_batch_size=6)
    expected = smoothing_from_uncertainty([r["uncertainty"] for r in rows], alpha=0.1)
    batch = all_batches(tr)[0]
    tok = tr.processing_class
    for r in range(batch["input_ids"].shape[0]):
        i = int(tok.decode(batch["input_ids"][r]).split("Sample ")[1].split(":")[0])
        lab = batch["labels"][r] != -100
        assert int(lab.sum()) > 5  # language modelling: every real token is a label
        assert torch.allclose(batch[TOKEN_COLUMN][r][lab], torch.tensor(float(expected[i])))


@pytest.mark.parametrize("mode", ["column", "ppl"])
def test_trl_fused_backend_matches_chunked(tiny_model_dir, tmp_path, mode):
    """UAL riding on TRL's fused log-prob head (trl >= 1.16) equals UAL's own chunked head."""
    ds = prompt_completion(8)
    probe = trainer(tiny_model_dir, ds, tmp_path / "probe")
    if not probe._ual_fused_head_available():
        with pytest.raises(ValueError, match="trl >= 1.16"):
            trainer(tiny_model_dir, ds, tmp_path / "f", ual_loss_backend="trl_fused")
        return
    results = {}
    for backend in ("chunked", "trl_fused"):
        tr = trainer(tiny_model_dir, ds, tmp_path / backend, ual_loss_backend=backend, ual_mode=mode, ual_alpha=0.3)
        assert tr.ual_loss_backend == backend
        batch = all_batches(tr)[0]
        n = torch.tensor(int((batch["labels"][:, 1:] != -100).sum()))
        loss = tr.compute_loss(tr.model, dict(batch), num_items_in_batch=n)
        grads = torch.autograd.grad(loss, list(tr.model.parameters()))
        results[backend] = (loss.detach(), torch.cat([g.flatten() for g in grads]))
    torch.testing.assert_close(results["trl_fused"][0], results["chunked"][0], rtol=1e-5, atol=1e-6)
    assert rel_err(results["trl_fused"][1], results["chunked"][1]) < 1e-5


def test_no_trainer_internal_keyword_reaches_the_model(tiny_model_dir, tmp_path):
    """evaluate(): SFTTrainer's private `_prediction_loss_only` note must not reach the model's forward."""
    tr = trainer(tiny_model_dir, prompt_completion(8), tmp_path, eval_dataset=prompt_completion(6, seed=1),
                 per_device_eval_batch_size=3)
    seen: list[set] = []
    original = tr.model.forward

    def spy(*args, **kwargs):
        seen.append(set(kwargs))
        return original(*args, **kwargs)

    tr.model.forward = spy
    metrics = tr.evaluate()
    assert seen and "eval_ual_smoothing" in metrics
    assert all(not any(k.startswith("_") for k in kw) for kw in seen), seen
    assert all(TOKEN_COLUMN not in kw for kw in seen)  # the smoothing travels beside the call, never as an argument


def test_ppl_running_mean_is_saved_and_restored_on_resume(tiny_model_dir, tmp_path):
    ds = prompt_completion(16).remove_columns("uncertainty")
    extra = dict(ual_mode="ppl", per_device_train_batch_size=4, save_strategy="steps", save_steps=2)
    first = trainer(tiny_model_dir, ds, tmp_path, max_steps=2, **extra)
    first.train()
    saved = first._ual_ppl.state_dict()
    assert saved["count"] == 8
    resumed = trainer(tiny_model_dir, ds, tmp_path, max_steps=4, **extra)
    assert resumed._ual_ppl.count == 0
    resumed.train(resume_from_checkpoint=True)
    # continues the same mean: the 8 samples before the checkpoint plus 8 after it
    assert resumed._ual_ppl.count == 16
    assert resumed._ual_ppl.state_dict()["total"] > saved["total"]
    import json

    from ual_plugin.trainer_core import STATE_FILE

    stored = json.loads((tmp_path / "out" / "checkpoint-2" / STATE_FILE).read_text())["ppl"]
    assert stored == pytest.approx(saved)


def test_predict_returns_the_logits_stock_returns(tiny_model_dir, tmp_path):
    """predict() gives the full [B, T, V] logits of one forward, the values stock SFTTrainer gives."""
    ds = prompt_completion(6)
    ual = trainer(tiny_model_dir, ds, tmp_path / "u", ual_alpha=1e-9, per_device_eval_batch_size=3, **FP32)
    stock = trainer(tiny_model_dir, ds, tmp_path / "s", ual=False, loss_type="nll", per_device_eval_batch_size=3,
                    **FP32)
    got = ual.predict(ual.train_dataset).predictions
    got = got[0] if isinstance(got, tuple) else got  # trl 1.9's chunked_nll: its counts follow the logits
    want = stock.predict(stock.train_dataset).predictions
    assert got.shape == want.shape and got.shape[1] > 1
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_eval_logs_the_unsmoothed_nll_next_to_the_loss(tiny_model_dir, tmp_path):
    ds = prompt_completion(8)
    near_zero = trainer(tiny_model_dir, ds, tmp_path / "z", ual_alpha=1e-9, per_device_eval_batch_size=4)
    metrics = near_zero.evaluate(ds)
    assert metrics["eval_nll"] == pytest.approx(metrics["eval_loss"], rel=1e-5)
    smoothed = trainer(tiny_model_dir, ds, tmp_path / "s", ual_alpha=0.4, per_device_eval_batch_size=4)
    metrics_s = smoothed.evaluate(ds)
    assert metrics_s["eval_nll"] == pytest.approx(metrics["eval_nll"], rel=1e-5)  # same model, same NLL
    # TRL's own entropy and accuracy metrics, as stock SFTTrainer computes them
    stock = trainer(tiny_model_dir, ds, tmp_path / "t", ual=False, loss_type="nll", per_device_eval_batch_size=4)
    metrics_t = stock.evaluate(ds)
    assert metrics["eval_entropy"] == pytest.approx(metrics_t["eval_entropy"], rel=1e-4)
    assert metrics["eval_mean_token_accuracy"] == pytest.approx(metrics_t["eval_mean_token_accuracy"], abs=1e-6)
    assert metrics["eval_loss"] == pytest.approx(metrics_t["eval_loss"], rel=1e-5)
    assert metrics_s["eval_loss"] != pytest.approx(metrics_s["eval_nll"], rel=1e-4)  # the smoothed loss differs


def test_column_mode_without_dataset_preparation_stops_at_construction(tiny_model_dir, tmp_path):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ds = Dataset.from_list([{"input_ids": tok(f"Sample {i}")["input_ids"], "uncertainty": float(i)} for i in range(8)])
    with pytest.raises(ValueError, match="skip_prepare_dataset"):
        trainer(tiny_model_dir, ds, tmp_path, dataset_kwargs={"skip_prepare_dataset": True})


def _tiny_mixtral_dir(tiny_model_dir, tmp_path):
    import transformers

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    cfg = transformers.MixtralConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2, num_local_experts=4,
                                     num_experts_per_tok=2, max_position_embeddings=128, output_router_logits=True,
                                     router_aux_loss_coef=0.02, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    transformers.MixtralForCausalLM(cfg).save_pretrained(tmp_path / "mixtral")
    tok.save_pretrained(tmp_path / "mixtral")
    return str(tmp_path / "mixtral")


def _router_delta(model_dir, tmp_path, model_class=AutoModelForCausalLM, **overrides):
    """One SGD step's change of the routers' parameters."""
    tr = UALSFTTrainer(model=model_class.from_pretrained(model_dir), processing_class=AutoTokenizer.from_pretrained(model_dir),
                       train_dataset=prompt_completion(8), args=config(
                           tmp_path, optim="sgd", learning_rate=1.0, lr_scheduler_type="constant", max_grad_norm=0.0,
                           weight_decay=0.0, max_steps=1, warmup_steps=0, train_sampling_strategy="sequential",
                           **FP32, **overrides))
    before = {k: v.detach().clone() for k, v in tr.model.named_parameters()}
    tr.train()
    delta = {k: (p.detach() - before[k]).flatten() for k, p in tr.model.named_parameters()}
    return torch.cat([d for k, d in delta.items() if "gate" in k and "expert" not in k and d.numel()])


@pytest.mark.parametrize("coef", [0.001, 5.0])
@pytest.mark.parametrize("accumulation", [1, 2])
def test_moe_router_loss_follows_the_trainers_coefficient_and_accumulation(tiny_model_dir, tmp_path, coef,
                                                                           accumulation):
    """At smoothing ~0, UALSFTTrainer's update equals stock SFTTrainer's for a tiny and a large router_aux_loss_coef,
    at GA 1 and 2: TRL's own compute_loss weights and accumulates the router loss in both."""
    import trl
    from packaging.version import Version

    model_dir = _tiny_mixtral_dir(tiny_model_dir, tmp_path)
    common = dict(router_aux_loss_coef=coef, per_device_train_batch_size=8 // accumulation,
                  gradient_accumulation_steps=accumulation)
    stock_loss = "nll" if Version(trl.__version__) >= Version("1.16") else "chunked_nll"
    ual = _router_delta(model_dir, tmp_path / "u", ual_alpha=1e-9, **common)
    stock = _router_delta(model_dir, tmp_path / "s", ual=False, loss_type=stock_loss, **common)
    assert rel_err(ual, stock) < 1e-4
    assert rel_err(ual, _router_delta(model_dir, tmp_path / "u5", ual_alpha=1e-9, **{**common, "router_aux_loss_coef":
                                      coef * 2})) > 1e-3  # the coefficient reaches the router update


def _tiny_vl_moe_dir(tiny_model_dir, tmp_path):
    import transformers

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    text = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, moe_intermediate_size=32, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_experts=4, num_experts_per_tok=2,
                decoder_sparse_step=1, max_position_embeddings=128, router_aux_loss_coef=0.02,
                pad_token_id=tok.pad_token_id, rope_scaling={"rope_type": "default", "mrope_section": [2, 1, 1]})
    vision = dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=32,
                  deepstack_visual_indexes=[])
    torch.manual_seed(0)
    model = transformers.Qwen3VLMoeForConditionalGeneration(transformers.Qwen3VLMoeConfig(text_config=text,
                                                                                          vision_config=vision))
    model.save_pretrained(tmp_path / "vl_moe")
    tok.save_pretrained(tmp_path / "vl_moe")
    return str(tmp_path / "vl_moe")


def test_vision_language_moe_keeps_the_router_loss_stock_trains_with(tiny_model_dir, tmp_path):
    """A vision-language MoE (Qwen3-VL-MoE) takes its router request as a forward argument, which SFTTrainer passes:
    at smoothing ~0 the update equals stock SFTTrainer's, router included, and it depends on the coefficient."""
    pytest.importorskip("transformers", minversion="5.0")
    import trl
    from packaging.version import Version

    model_dir = _tiny_vl_moe_dir(tiny_model_dir, tmp_path)
    stock_loss = "nll" if Version(trl.__version__) >= Version("1.16") else "chunked_nll"
    from transformers import AutoModelForImageTextToText

    vl = dict(model_class=AutoModelForImageTextToText)
    ual = _router_delta(model_dir, tmp_path / "u", ual_alpha=1e-9, router_aux_loss_coef=5.0, **vl)
    stock = _router_delta(model_dir, tmp_path / "s", ual=False, loss_type=stock_loss, router_aux_loss_coef=5.0, **vl)
    assert ual.numel() > 0 and rel_err(ual, stock) < 1e-4
    if Version(trl.__version__) >= Version("1.16"):  # trl 1.9 leaves it out: the text config has no
        # output_router_logits, which it takes as "not MoE"; UAL then matches that, as asserted above
        small = _router_delta(model_dir, tmp_path / "u0", ual_alpha=1e-9, router_aux_loss_coef=0.001, **vl)
        assert rel_err(ual, small) > 1e-3


@pytest.mark.parametrize("packing", [False, True], ids=["padded", "packed"])
def test_prepared_smoothing_is_float32_and_per_sample_where_packing_allows(tiny_model_dir, tmp_path, packing):
    tr = trainer(tiny_model_dir, prompt_completion(8), tmp_path, packing=packing, max_length=128)
    features = tr.train_dataset.features
    if packing:  # packed rows hold several samples: one float32 per token
        assert SAMPLE_COLUMN not in features and features[TOKEN_COLUMN].feature.dtype == "float32"
    else:  # one float32 per sample, spread over its tokens by the collator
        assert TOKEN_COLUMN not in features and features[SAMPLE_COLUMN].dtype == "float32"
        batch = all_batches(tr)[0]
        assert batch[TOKEN_COLUMN].dtype == torch.float32 and batch[TOKEN_COLUMN].shape == batch["input_ids"].shape
