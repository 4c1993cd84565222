"""QLoRA check: UAL trains on a 4-bit NF4 base model, and its loss matches full-precision LoRA.

A random Llama (seeded ``LlamaConfig``) is saved with a locally built tokenizer, then loaded
twice: plain LoRA on the full-precision weights (bf16 on GPU, fp32 on CPU), and QLoRA
(bitsandbytes NF4 base weights + ``prepare_model_for_kbit_training``) with the same LoRA config
and seed. LoRA B starts at zero, so at step 0 both compute their base model and the UAL losses on
one fixed batch (prompt half masked, per-sample smoothing from the project's mapping) must agree
to within the NF4 quantisation error. The QLoRA model then runs backward (LoRA gradients must be
finite and non-zero) and takes a few AdamW steps with UAL (the loss on the batch must go down).

    python benchmarks/qlora_check.py --preset cpu-tiny                # CPU, small Llama, fp32, under a minute
    python benchmarks/qlora_check.py --preset llama3-8b               # GPU: Llama-3-8B shape, bf16, seq 4096
    python benchmarks/qlora_check.py --preset llama3-8b --layers 4    # same shape, fewer layers (faster save)

Exit code 1 when the check fails. ``--write`` puts the table into RESULTS.md.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from random_llama import llama_config, preset_dtype
from results_md import provenance, write_section

PRESETS = {
    "cpu-tiny": dict(hidden=256, layers=4, heads=4, kv_heads=2, inter=704, vocab=32000, seq=256, batch=4,
                     dtype="fp32"),
    "llama3-8b": dict(hidden=4096, layers=32, heads=32, kv_heads=8, inter=14336, vocab=128256, seq=4096,
                      batch=2, dtype="bf16"),
}

# Tolerance on |UAL_qlora - UAL_lora| / UAL_lora at step 0. NF4 is close to the optimal 4-bit code
# for normally distributed weights: its RMS error is ~10% of the weight scale, so every quantised
# projection adds ~10% independent noise to its output and the logits move by roughly a tenth of
# their spread. A token's loss then moves by O(0.1 * std(logits)), with random sign; averaged over
# the batch's label tokens the mean moves by far less, plus a second-order bias of ~var(noise) / 2.
# With std(logits) = O(1) at random init and a loss of ~log(vocab) (8-12 nats), that is ~1e-3
# relative (measured: ~5e-4 on both presets' shapes); bf16 rounding in the GPU reference adds a few
# 1e-3 at most. 2e-2 leaves an order of magnitude of headroom over that. Caveat: at random init
# every model's loss sits near log(vocab), and UAL nearly equals NLL (the smoothing term
# e * (z_y - mean z) averages to ~0), so this comparison mainly catches gross failures (NaNs, a
# dtype mix-up, badly wrong dequantisation scales); the printed NLL difference shows the measured
# scale of the error, and the adapters are checked by the gradient and training criteria.
REL_TOL = 2e-2
ALPHA = 0.1
LORA_R = 16
SEED = 0


@dataclass
class LossPair:
    ual: float
    nll: float


def save_random_llama(p: dict, out_dir: Path, device: str) -> Path:
    """A seeded random LlamaForCausalLM in the preset's dtype plus a local tokenizer, saved to ``out_dir``."""
    from transformers import LlamaForCausalLM

    from ual_plugin.demo.tiny import build_tokenizer

    tokenizer = build_tokenizer()
    cfg = llama_config(p, max(2 * p["seq"], 1024), bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                       tie_word_embeddings=False)
    torch.manual_seed(SEED)
    with torch.device(device):  # initialise where it is cheap (an 8B model on the GPU), in the target dtype
        model = LlamaForCausalLM._from_config(cfg, dtype=preset_dtype(p))
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return out_dir


def lora_config():
    from peft import LoraConfig

    # "all-linear" targets every linear layer except the output head (UAL reads lm_head.weight itself)
    return LoraConfig(r=LORA_R, lora_alpha=2 * LORA_R, lora_dropout=0.0, target_modules="all-linear",
                      task_type="CAUSAL_LM")


def load_lora(path: Path, p: dict, device: str) -> torch.nn.Module:
    """Plain LoRA on the full-precision base weights."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(path, dtype=preset_dtype(p), device_map={"": device})
    torch.manual_seed(SEED)
    return get_peft_model(base, lora_config())


def load_qlora(path: Path, p: dict, device: str) -> torch.nn.Module:
    """QLoRA: NF4 base weights (double-quantised scales), kbit preparation, the same LoRA config and seed."""
    from peft import get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                             bnb_4bit_compute_dtype=preset_dtype(p))
    base = AutoModelForCausalLM.from_pretrained(path, quantization_config=bnb, dtype=preset_dtype(p),
                                                device_map={"": device})
    # also turns on gradient checkpointing, as QLoRA recipes do
    base = prepare_model_for_kbit_training(base, gradient_checkpointing_kwargs={"use_reentrant": False})
    torch.manual_seed(SEED)
    return get_peft_model(base, lora_config())


def build_batch(p: dict, device: str) -> dict[str, torch.Tensor]:
    """Random tokens, labels on the second half, per-token smoothing from per-sample uncertainty."""
    from ual_plugin import fit_smoothing_map
    from ual_plugin.data import TOKEN_COLUMN, collate_token_column, expand_to_tokens

    g = torch.Generator().manual_seed(SEED)
    batch, seq = p["batch"], p["seq"]
    input_ids = torch.randint(10, p["vocab"], (batch, seq), generator=g)
    labels = input_ids.clone()
    labels[:, : seq // 2] = -100
    uncertainty = (torch.rand(batch, generator=g) * 99).tolist()
    smoothing = fit_smoothing_map(uncertainty, alpha=ALPHA)(uncertainty)
    token_eps = collate_token_column([expand_to_tokens(v, seq) for v in smoothing], input_ids)
    out = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels,
           TOKEN_COLUMN: token_eps}
    return {k: v.to(device) for k, v in out.items()}


def without_smoothing(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    from ual_plugin.data import TOKEN_COLUMN

    return {**batch, TOKEN_COLUMN: torch.zeros_like(batch[TOKEN_COLUMN])}


def ual_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The trainers' own UAL path: the model's forward computes the UAL loss for the request around it."""
    from ual_plugin.causal_lm import UALRequest, install_ual_forward, ual_request
    from ual_plugin.data import TOKEN_COLUMN

    install_ual_forward(model)
    with ual_request(UALRequest(smoothing=batch[TOKEN_COLUMN])):
        return model(**{k: v for k, v in batch.items() if k != TOKEN_COLUMN}).loss


@torch.no_grad()
def eval_losses(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> LossPair:
    """UAL and NLL on the batch without gradients, leaving the model in training mode.

    Nothing here depends on the mode (no dropout, LoRA dropout 0), and on CPUs with AVX512-BF16
    bitsandbytes (0.50) repacks a Linear4bit's weight for an inference-only kernel the first time
    it runs in eval mode without gradients, for good: later training forwards then go through a
    kernel with no autograd and the gradient stops at every quantised layer.
    """
    model.train()
    return LossPair(ual=float(ual_loss(model, batch)), nll=float(ual_loss(model, without_smoothing(batch))))


def lora_params(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {n: q for n, q in model.named_parameters() if q.requires_grad}


def adapters_match(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    pa, pb = lora_params(a), lora_params(b)
    return pa.keys() == pb.keys() and all(
        torch.equal(pa[n].detach().float().cpu(), pb[n].detach().float().cpu()) for n in pa)


def grad_report(model: torch.nn.Module) -> dict[str, int]:
    """Counts over trainable tensors: total, with a finite gradient, with a non-zero gradient; split A / B."""
    rep = dict(total=0, finite=0, nonzero_a=0, nonzero_b=0, n_a=0, n_b=0)
    for name, q in lora_params(model).items():
        rep["total"] += 1
        g = q.grad
        finite = g is not None and bool(torch.isfinite(g).all())
        nonzero = g is not None and bool(g.abs().sum() > 0)
        rep["finite"] += finite
        part = "a" if "lora_A" in name else "b"
        rep[f"n_{part}"] += 1
        rep[f"nonzero_{part}"] += nonzero
    return rep


def train_steps(model: torch.nn.Module, batch: dict[str, torch.Tensor], steps: int, lr: float):
    """AdamW on the LoRA weights with the UAL loss; gradient reports after the first and the last backward."""
    model.train()
    opt = torch.optim.AdamW(lora_params(model).values(), lr=lr, weight_decay=0.0)
    reports = []
    for step in range(steps):
        opt.zero_grad(set_to_none=True)
        ual_loss(model, batch).backward()
        if step in (0, steps - 1):
            reports.append(grad_report(model))
        opt.step()
    return reports[0], reports[-1]


def rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


def run_check(p: dict, device: str, steps: int, lr: float) -> tuple[str, bool]:
    with tempfile.TemporaryDirectory() as tmp:
        path = save_random_llama(p, Path(tmp), device)
        batch = build_batch(p, device)
        lora = load_lora(path, p, device)
        ref = eval_losses(lora, batch)
        qlora = load_qlora(path, p, device)
        same_init = adapters_match(lora, qlora)
        del lora
        if device == "cuda":
            torch.cuda.empty_cache()
        q = eval_losses(qlora, batch)
        first, last = train_steps(qlora, batch, steps, lr)
        after = eval_losses(qlora, batch)
    base = "bf16" if p["dtype"] == "bf16" else "fp32"
    ual_diff, nll_diff = rel(q.ual, ref.ual), rel(q.nll, ref.nll)
    # at step 0 LoRA B is zero, so dL/dA = 0 by construction: B must get gradients, A must after one step
    grads_ok = (first["finite"] == first["total"] and first["nonzero_b"] == first["n_b"] > 0
                and last["finite"] == last["total"] and last["nonzero_a"] == last["n_a"]
                and last["nonzero_b"] == last["n_b"])
    all_finite = all(math.isfinite(x) for x in (ref.ual, ref.nll, q.ual, q.nll, after.ual))
    decreased = after.ual < q.ual
    ok = ual_diff < REL_TOL and grads_ok and decreased and all_finite
    lines = [
        "| model | base weights | UAL loss | NLL | UAL rel. diff vs LoRA | NLL rel. diff vs LoRA |",
        "|---|---|---|---|---|---|",
        f"| LoRA | {base} | {ref.ual:.6f} | {ref.nll:.6f} | - | - |",
        f"| QLoRA | NF4, compute {base} | {q.ual:.6f} | {q.nll:.6f} | {ual_diff:.2e} | {nll_diff:.2e} |",
        "",
        f"QLoRA UAL loss on the batch: {q.ual:.6f} before, {after.ual:.6f} after {steps} AdamW steps "
        f"(lr {lr:g}); NLL {q.nll:.6f} -> {after.nll:.6f}.  ",
        f"LoRA gradients, first backward: {first['finite']}/{first['total']} finite, "
        f"{first['nonzero_b']}/{first['n_b']} lora_B non-zero (lora_A gets none while B = 0); "
        f"last backward: {last['finite']}/{last['total']} finite, {last['nonzero_a']}/{last['n_a']} lora_A and "
        f"{last['nonzero_b']}/{last['n_b']} lora_B non-zero.  ",
        f"Adapters identical at start: {'yes' if same_init else 'no'}; alpha {ALPHA}, r {LORA_R}, "
        f"{p['batch']} x {p['seq']} tokens (labels on the second half).  ",
        f"**{'PASS' if ok else 'FAIL'}**: UAL rel. diff {ual_diff:.2e} {'<' if ual_diff < REL_TOL else '>='} "
        f"{REL_TOL:g}, gradients {'ok' if grads_ok else 'NOT ok'}, loss "
        f"{'decreased' if decreased else 'did NOT decrease'}.",
    ]
    return "\n".join(lines), ok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=list(PRESETS), default="cpu-tiny")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--layers", type=int, help="override the preset's layer count")
    ap.add_argument("--seq", type=int, help="override the preset's sequence length")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--write", action="store_true", help="write the table into benchmarks/RESULTS.md")
    args = ap.parse_args(argv)
    p = dict(PRESETS[args.preset])
    p.update({k: v for k, v in (("layers", args.layers), ("seq", args.seq)) if v is not None})
    if p["dtype"] == "bf16" and args.device == "cpu":
        p["dtype"] = "fp32"  # CPU: full-precision reference in fp32
    os.environ.setdefault("WANDB_DISABLED", "true")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    table, ok = run_check(p, args.device, args.steps, args.lr)
    body = f"preset={args.preset} {p} device={args.device}\n\n{table}"
    print("\n" + body)
    if args.write:
        write_section(f"qlora-{args.preset}", provenance(args.device) + "\n" + body)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
