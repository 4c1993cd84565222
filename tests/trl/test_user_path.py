"""UALSFTTrainer as users run it: SFTConfig's default precision (bf16 autocast, with accelerate's fp32 output wrapper),
through ``train()``, ``evaluate()`` and ``predict()``; torch.compile; evaluation sets that never refit the map."""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("trl")

import trl  # noqa: E402
from packaging.version import Version  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402
from trl import SFTConfig, SFTTrainer  # noqa: E402

from tests.trl.test_trainer import config_kwargs, prompt_completion, rel_err, trainer  # noqa: E402

pytestmark = pytest.mark.slow

# trl 1.9 answers two loss contracts (its default chunked_nll and nll); trl >= 1.16 has one (the fused head)
LOSS_TYPES = [None] if Version(trl.__version__) >= Version("1.16") else ["chunked_nll", "nll"]


@pytest.mark.parametrize("loss_type", LOSS_TYPES, ids=lambda x: x or "default")
@pytest.mark.parametrize("mode", ["column", "uniform", "ppl"])
def test_default_precision_trains_evaluates_and_predicts(tiny_model_dir, tmp_path, mode, loss_type):
    extra = {} if loss_type is None else {"loss_type": loss_type}
    tr = trainer(tiny_model_dir, prompt_completion(16), tmp_path, eval_dataset=prompt_completion(6, seed=1),
                 ual_mode=mode, max_steps=2, **extra)
    assert tr.args.bf16 is True  # SFTConfig's default, which the fixture keeps
    tr.train()
    logs = [h for h in tr.state.log_history if "loss" in h]
    assert len(logs) == 2 and all(math.isfinite(h["loss"]) and 0 < h["ual_smoothing"] < 1 for h in logs)
    metrics = tr.evaluate()
    assert math.isfinite(metrics["eval_loss"]) and metrics["eval_nll"] > 0
    prediction = tr.predict(tr.eval_dataset)
    assert math.isfinite(prediction.metrics["test_loss"])
    # the full logits, first (trl 1.9's chunked_nll adds its counts after them, as stock adds them alone)
    logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
    assert logits.shape[:2] == prediction.label_ids.shape and logits.shape[-1] == tr.model.config.vocab_size
    if loss_type != "chunked_nll":
        assert not isinstance(prediction.predictions, tuple)  # nothing but the logits, as stock gives


def _one_step(tr):
    before = {k: v.detach().clone() for k, v in tr.model.named_parameters()}
    tr.train()
    loss = tr.state.log_history[0]["loss"]
    return loss, torch.cat([(p.detach() - before[k]).flatten() for k, p in tr.model.named_parameters()])


SGD = dict(optim="sgd", learning_rate=1.0, lr_scheduler_type="constant", max_grad_norm=0.0, weight_decay=0.0,
           max_steps=1, warmup_steps=0, train_sampling_strategy="sequential")


@pytest.mark.parametrize("loss_type", LOSS_TYPES, ids=lambda x: x or "default")
def test_default_precision_at_tiny_smoothing_equals_stock_sft(tiny_model_dir, tmp_path, loss_type):
    """Same autocast, same batch: UAL at alpha ~0 gives stock SFTTrainer's loss and update within bf16's rounding
    (the logits come from GEMMs of other shapes), and a real alpha moves the update by far more than that."""
    ds = prompt_completion(16)
    extra = {} if loss_type is None else {"loss_type": loss_type}
    ual_loss, ual = _one_step(trainer(tiny_model_dir, ds, tmp_path / "u", ual_alpha=1e-9, **SGD, **extra))
    stock_model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    stock_args = SFTConfig(**config_kwargs(tmp_path / "s", **SGD, **extra))
    stock = SFTTrainer(model=stock_model, args=stock_args, train_dataset=ds,
                       processing_class=AutoTokenizer.from_pretrained(tiny_model_dir))
    stock_loss, stock_delta = _one_step(stock)
    assert stock_args.bf16 is True
    assert ual_loss == pytest.approx(stock_loss, rel=1e-2)
    assert rel_err(ual, stock_delta) < 2e-2
    _, big = _one_step(trainer(tiny_model_dir, ds, tmp_path / "b", ual_alpha=0.5, **SGD, **extra))
    assert rel_err(big, stock_delta) > 10 * rel_err(ual, stock_delta)


def test_trains_when_a_wrapper_rebuilds_the_output_from_its_keys(tiny_model_dir, tmp_path):
    """Guards the design rather than today's accelerate: any wrapper that rebuilds the model's output from its keys
    (here a forward hook on the outermost model) leaves the trainer with everything TRL reads."""
    ds = prompt_completion(16)
    plain_loss, plain = _one_step(trainer(tiny_model_dir, ds, tmp_path / "a", **SGD))
    tr = trainer(tiny_model_dir, ds, tmp_path / "b", **SGD)
    tr.model.register_forward_hook(lambda _m, _a, out: type(out)({k: v for k, v in out.items()}))
    loss, delta = _one_step(tr)
    assert loss == pytest.approx(plain_loss, rel=1e-6)
    assert rel_err(delta, plain) < 1e-6


@pytest.mark.parametrize("packing", [False, True], ids=["padded", "packed"])
def test_torch_compile_gives_eager_gradients_with_compiled_blocks(tiny_model_dir, tmp_path, packing):
    """torch_compile=True: the decoder blocks run compiled and the update equals eager's to 1e-5 (fp32: the claim is
    exactness, which bf16's rounding would hide). aot_eager traces forward and backward as inductor does, without
    its C++ build time; it is the backend under which the old side channel gave N times the gradient."""
    from torch._dynamo.utils import counters

    ds = prompt_completion(16)
    extra = dict(SGD, bf16=False, packing=packing, max_length=48)
    _, eager = _one_step(trainer(tiny_model_dir, ds, tmp_path / "e", **extra))
    torch._dynamo.reset()
    counters.clear()
    tr = trainer(tiny_model_dir, ds, tmp_path / "c", torch_compile=True, torch_compile_backend="aot_eager", **extra)
    _, compiled = _one_step(tr)
    assert counters["stats"]["unique_graphs"] > 0  # something was compiled
    for block in tr.model.model.layers:  # with gradient checkpointing (trl >= 1.16's default) the blocks' parts
        parts = list(block.children()) if tr.args.gradient_checkpointing else [block]
        assert all(part._compiled_call_impl is not None for part in parts)
    assert rel_err(compiled, eager) < 1e-5
    torch._dynamo.reset()


@pytest.mark.parametrize("when", ["init", "evaluate"])
def test_an_eval_set_named_train_never_refits_the_map(tiny_model_dir, tmp_path, when):
    train = prompt_completion(16)
    other = prompt_completion(8, seed=3)
    other = other.map(lambda row, i: {"uncertainty": float(100 - 5 * i)}, with_indices=True)  # another distribution
    evals = {"train": other, "test": prompt_completion(6, seed=1)}
    tr = trainer(tiny_model_dir, train, tmp_path, eval_dataset=evals if when == "init" else None, max_steps=1)
    fitted = tr.ual_map
    assert fitted is not None and fitted.n_fit == 16
    if when == "evaluate":
        tr.train()
        tr.evaluate({"train": other})
    assert tr.ual_map is fitted
    prepared = tr.eval_dataset["train"] if when == "init" else None
    if prepared is not None:  # the eval set named "train" got the training map's values
        from ual_plugin.data import SAMPLE_COLUMN

        assert prepared[0][SAMPLE_COLUMN] == pytest.approx(fitted.apply_one(other[0]["uncertainty"]), rel=1e-6)


def test_liger_kernels_run_beside_the_ual_loss(tiny_model_dir, tmp_path):
    """use_liger_kernel=True: Liger's SwiGLU kernel replaces the MLP activation, Liger's loss stays off, and the update
    is UAL's (alpha 0.3) as without Liger, to 1e-4 (fp32; Liger's kernels run under Triton's CPU interpreter)."""
    pytest.importorskip("liger_kernel")
    import os
    import subprocess
    import sys

    script = os.path.join(os.path.dirname(__file__), "ddp_step.py")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.getcwd())
    plain, liger = tmp_path / "plain.pt", tmp_path / "liger.pt"
    subprocess.run([sys.executable, script, str(tiny_model_dir), str(plain), "4", "1"], check=True, env=env,
                   capture_output=True)
    proc = subprocess.run([sys.executable, script, str(tiny_model_dir), str(liger), "4", "1", "liger"],
                          env={**env, "TRITON_INTERPRET": "1"}, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "LigerSwiGLUMLP" in proc.stdout
    a, b = torch.load(plain), torch.load(liger)
    assert a.norm() > 0 and rel_err(b, a) < 1e-4


def test_liger_loss_kernels_are_refused_by_name(tmp_path):
    from ual_plugin.trl import UALSFTConfig

    with pytest.raises(ValueError, match="fused_linear_cross_entropy"):
        UALSFTConfig(output_dir=str(tmp_path), use_cpu=True, use_liger_kernel=True,
                     liger_kernel_config={"fused_linear_cross_entropy": True})
    args = UALSFTConfig(output_dir=str(tmp_path), use_cpu=True, use_liger_kernel=True, liger_kernel_config={"rope": True})
    assert args.liger_kernel_config == {"rope": True, "fused_linear_cross_entropy": False, "cross_entropy": False}


def test_evaluate_after_train_runs_under_the_same_autocast(tiny_model_dir, tmp_path):
    """accelerate wraps the forward (UAL's included) in autocast when train() starts; taking UAL's patches off at the
    end of train() must not take that wrapper with them, or evaluate() afterwards would run without autocast."""
    tr = trainer(tiny_model_dir, prompt_completion(16), tmp_path, eval_dataset=prompt_completion(6, seed=1))
    seen = []
    tr.model.model.register_forward_hook(lambda *_: seen.append(torch.is_autocast_enabled("cpu")))
    tr.train()
    assert seen and all(seen)
    seen.clear()
    tr.evaluate()
    assert seen and all(seen)  # as in stock SFTTrainer's evaluate() after train()


def test_prompt_tuning_trains_in_column_mode(tiny_model_dir, tmp_path):
    """PEFT prompt tuning prepends virtual tokens inside its forward; UAL's column mode trains through it (the
    per-token placement is checked against torch's loss in tests/test_causal_lm.py)."""
    peft = pytest.importorskip("peft")
    from ual_plugin.trl import UALSFTConfig, UALSFTTrainer

    tr = UALSFTTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                       args=UALSFTConfig(**config_kwargs(tmp_path, max_steps=2)), train_dataset=prompt_completion(16),
                       processing_class=AutoTokenizer.from_pretrained(tiny_model_dir),
                       peft_config=peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    prompt = next(p for n, p in tr.model.named_parameters() if p.requires_grad)
    before = prompt.detach().clone()
    tr.train()
    logs = [h for h in tr.state.log_history if "loss" in h]
    assert len(logs) == 2 and all(0 < h["ual_smoothing"] < 1 for h in logs)
    assert not torch.equal(before, prompt.detach())
