"""UAL loss from a Hugging Face causal LM's hidden states, without building the full logits.

The model runs through its (possibly DDP / PEFT / accelerate-wrapped) forward with
``logits_to_keep=1`` so the LM head projects one position only; a forward hook on the backbone
captures the final hidden states, and ``linear_smoothed_cross_entropy`` does the rest chunk by
chunk. Shared by the TRL and Axolotl trainers.
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from ual_plugin.loss import linear_smoothed_cross_entropy


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The bare ``PreTrainedModel``: strips DDP/accelerate (``.module``) and PEFT wrappers."""
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    if hasattr(model, "get_base_model") and callable(model.get_base_model):
        model = model.get_base_model()
    return model


@dataclass
class HeadParams:
    weight: torch.Tensor
    bias: torch.Tensor | None
    softcap: float | None
    logit_scale: float


def _text_config(model: torch.nn.Module) -> Any:
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def head_params(model: torch.nn.Module) -> HeadParams:
    """LM-head weight/bias plus the logit post-processing the model's own head applies."""
    lm = unwrap_model(model)
    head = lm.get_output_embeddings()
    if head is None or not hasattr(head, "weight"):
        raise ValueError("UAL needs a causal LM with an output embedding (lm_head); this model has none")
    if hasattr(head, "base_layer") or hasattr(head, "lora_A"):
        raise ValueError(
            "UAL computes the loss from lm_head.weight directly, so a PEFT adapter on lm_head would never be "
            "trained. Remove 'lm_head' from the LoRA target modules (or use modules_to_save instead)."
        )
    cfg = _text_config(lm)
    scale = getattr(cfg, "logit_scale", None)
    if scale is None:
        scale = getattr(cfg, "output_multiplier", None)
    if scale is None:
        scale = getattr(cfg, "lm_head_multiplier", None)
    if scale is None and getattr(cfg, "logits_scaling", None) is not None:
        scale = cfg.logits_scaling if getattr(cfg, "model_type", "") == "hyperclovax" else 1.0 / cfg.logits_scaling
    softcap = getattr(cfg, "final_logit_softcapping", None)
    return HeadParams(
        weight=head.weight,
        bias=getattr(head, "bias", None),
        softcap=float(softcap) if softcap else None,
        logit_scale=1.0 if scale is None else float(scale),
    )


def _backbone(lm: torch.nn.Module) -> torch.nn.Module:
    backbone = getattr(lm, "base_model", None)
    if backbone is None or backbone is lm:
        backbone = getattr(lm, "model", None)
    if backbone is None or backbone is lm:
        raise ValueError(f"cannot find the backbone of {type(lm).__name__} to read its hidden states")
    return backbone


@contextmanager
def _capture_hidden(backbone: torch.nn.Module):
    box: dict[str, torch.Tensor] = {}

    def hook(_module, _args, output):
        hidden = getattr(output, "last_hidden_state", None)
        if hidden is None:
            hidden = output[0]
        box["hidden"] = hidden

    handle = backbone.register_forward_hook(hook)
    try:
        yield box
    finally:
        handle.remove()


def _accepts(model: torch.nn.Module, name: str) -> bool:
    params = inspect.signature(model.forward).parameters
    return name in params or any(p.kind == p.VAR_KEYWORD for p in params.values())


def forward_hidden_states(model: torch.nn.Module, inputs: dict[str, Any]) -> tuple[torch.Tensor, Any]:
    """Run ``model(**inputs)`` (no labels) and return (final hidden states [B, T, H], model outputs)."""
    lm = unwrap_model(model)
    kwargs = dict(inputs)
    kwargs.pop("labels", None)
    kwargs["use_cache"] = False
    if _accepts(lm, "logits_to_keep"):
        kwargs["logits_to_keep"] = 1
    with _capture_hidden(_backbone(lm)) as box:
        outputs = model(**kwargs)
    if "hidden" not in box:
        raise RuntimeError("UAL could not capture the model's final hidden states (backbone forward not called)")
    return box["hidden"], outputs


@dataclass
class UALLossOutput:
    loss: torch.Tensor
    smoothing_sum: torch.Tensor  # sum of smoothing over label tokens (for logging)
    n_tokens: torch.Tensor  # label tokens in this micro-batch
    n_correct: torch.Tensor  # label tokens that are the model's top-1 prediction


def shifted(labels: torch.Tensor, *per_token: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Next-token alignment: position t predicts label t+1; per-token values follow the label."""
    return (labels[..., 1:],) + tuple(t[..., 1:] for t in per_token)


def causal_lm_ual_loss(
    model: torch.nn.Module,
    hidden: torch.Tensor,
    labels: torch.Tensor,
    token_smoothing: torch.Tensor,
    num_items_in_batch: torch.Tensor | int | None = None,
    ignore_index: int = -100,
) -> UALLossOutput:
    """UAL loss of a causal LM: sum over label tokens / ``num_items_in_batch`` (else their count).

    ``token_smoothing`` is laid out like ``labels`` (the smoothing of the sample owning each token).
    """
    head = head_params(model)
    tgt, eps = shifted(labels, token_smoothing)
    h = hidden[:, :-1, :].to(head.weight.device)
    tgt = tgt.to(head.weight.device)
    eps = eps.to(device=head.weight.device, dtype=torch.float32)
    stats: dict = {}
    total = linear_smoothed_cross_entropy(
        h,
        head.weight,
        tgt,
        eps,
        bias=head.bias,
        ignore_index=ignore_index,
        reduction="sum",
        softcap=head.softcap,
        logit_scale=head.logit_scale,
        stats=stats,
    )
    mask = tgt != ignore_index
    n_tokens = mask.sum()
    denom = num_items_in_batch if num_items_in_batch is not None else n_tokens.clamp(min=1)
    if isinstance(denom, torch.Tensor):
        denom = denom.to(total.device)
    return UALLossOutput(
        loss=total / denom,
        smoothing_sum=(eps * mask).sum().detach(),
        n_tokens=n_tokens.detach(),
        n_correct=torch.as_tensor(stats.get("n_correct", 0), device=total.device),
    )


def has_trl_fused_head(model: torch.nn.Module) -> bool:
    """Whether TRL (>= 1.16) patched this model's forward with its fused, chunked log-prob head."""
    forward = getattr(unwrap_model(model).forward, "__func__", None)
    return forward is not None and "fused_lm_head" in forward.__code__.co_varnames


def _trl_fused_loss(
    model: torch.nn.Module,
    model_inputs: dict[str, Any],
    labels: torch.Tensor,
    token_eps: torch.Tensor | None,
    num_items_in_batch: torch.Tensor | int | None,
    ppl_smoother: Any,
) -> tuple[UALLossOutput, Any]:
    """UAL riding on TRL's fused log-prob head: loss_t = -log p(y_t) + e_t * (z_y - mean_k z_k).

    The correction is linear in the logits, so with z = s * (h W^T + b) it is
    s * (h . (W[y] - mean_v W) + b[y] - mean(b)): O(tokens x hidden) on top of TRL's own kernel,
    exact whenever the head has no soft-capping (the caller checks).
    """
    from ual_plugin.data import segment_ids
    from ual_plugin.ppl import ppl_token_smoothing

    lm = unwrap_model(model)
    head = head_params(model)
    with _capture_hidden(_backbone(lm)) as box:
        outputs = model(**model_inputs, labels=labels, fused_lm_head=True)
    hidden = box["hidden"][:, :-1].to(head.weight.device)
    tgt = labels[:, 1:].to(head.weight.device)
    mask = tgt != -100
    if ppl_smoother is not None:
        segments = segment_ids(model_inputs.get("position_ids"), labels.shape, tgt.device)[:, 1:]
        eps = ppl_token_smoothing(ppl_smoother, -outputs.log_probs.detach(), segments, mask)
    else:
        eps = token_eps[:, 1:].to(device=tgt.device, dtype=torch.float32)
    rows = mask.nonzero(as_tuple=True)
    y = tgt[rows]
    w = head.weight
    direction = w.index_select(0, y).float() - w.float().mean(0)
    correction = (hidden[rows].float() * direction).sum(-1)
    if head.bias is not None:
        correction = correction + head.bias.index_select(0, y).float() - head.bias.float().mean()
    correction = correction * head.logit_scale
    total = -outputs.log_probs.float().sum() + (eps[rows] * correction).sum()
    n_tokens = mask.sum()
    denom = num_items_in_batch if num_items_in_batch is not None else n_tokens.clamp(min=1)
    if isinstance(denom, torch.Tensor):
        denom = denom.to(total.device)
    is_top1 = getattr(outputs, "is_top1", None)
    n_correct = (is_top1 & mask).sum() if is_top1 is not None else torch.zeros((), device=total.device)
    out = UALLossOutput(loss=total / denom, smoothing_sum=(eps * mask).sum().detach(), n_tokens=n_tokens.detach(),
                        n_correct=n_correct.detach())
    return out, outputs


def ual_batch_loss(
    model: torch.nn.Module,
    inputs: dict[str, Any],
    num_items_in_batch: torch.Tensor | int | None = None,
    ppl_smoother: Any = None,
    loss_scale: float = 1.0,
    backend: str = "chunked",
) -> tuple[UALLossOutput, Any, dict[str, Any]]:
    """A trainer's UAL loss for one collated batch: (loss output, model outputs, model inputs).

    Column mode reads the batch's per-token ``ual_smoothing``; with a ``PPLSmoother`` the smoothing
    comes from each sample's perplexity instead. ``loss_scale`` multiplies the loss (the number of
    processes, when ``num_items_in_batch`` counts every rank's tokens and DDP averages gradients).
    ``backend``: "chunked" (our own head, everywhere) or "trl_fused" (TRL >= 1.16's fused head plus
    the linear correction; no soft-capping).
    """
    from ual_plugin.data import TOKEN_COLUMN
    from ual_plugin.ppl import ppl_smoothing_from_hidden

    labels = inputs["labels"]
    token_eps = inputs.get(TOKEN_COLUMN)
    model_inputs = {k: v for k, v in inputs.items() if k not in ("labels", TOKEN_COLUMN)}
    if ppl_smoother is None and token_eps is None:
        raise ValueError(
            f"UAL column mode: the batch has no '{TOKEN_COLUMN}' tensor (was the data collator replaced after the "
            "trainer was built?)"
        )
    if backend == "trl_fused":
        out, outputs = _trl_fused_loss(model, model_inputs, labels, token_eps, num_items_in_batch, ppl_smoother)
        if loss_scale != 1.0:
            out.loss = out.loss * loss_scale
        return out, outputs, model_inputs
    if backend != "chunked":
        raise ValueError(f"unknown UAL loss backend {backend!r}; expected 'chunked' or 'trl_fused'")
    hidden, outputs = forward_hidden_states(model, model_inputs)
    if ppl_smoother is not None:
        token_eps = ppl_smoothing_from_hidden(ppl_smoother, model, hidden, labels, inputs.get("position_ids"))
    out = causal_lm_ual_loss(model, hidden, labels, token_eps, num_items_in_batch)
    if loss_scale != 1.0:
        out.loss = out.loss * loss_scale
    return out, outputs, model_inputs


class SmoothingWindow:
    """Per-mode running sums (smoothing, label tokens, top-1 hits) between two log calls.

    Kept on the device, so a training step adds no host sync; summed over processes only when
    read, from ``Trainer.log``, which every rank calls.
    """

    def __init__(self) -> None:
        self._sums: dict[str, torch.Tensor] = {}

    def add(self, mode: str, out: UALLossOutput) -> None:
        stats = torch.stack([out.smoothing_sum.double(), out.n_tokens.double(), out.n_correct.double()])
        current = self._sums.get(mode)
        self._sums[mode] = stats if current is None else current + stats.to(current.device)

    def pop(self, mode: str, accelerator: Any = None) -> dict[str, float]:
        """{'ual_smoothing': ..., 'mean_token_accuracy': ...} over the window (empty if no tokens)."""
        sums = self._sums.pop(mode, None)
        if sums is None:
            sums = torch.zeros(3, dtype=torch.float64)
        if accelerator is not None and accelerator.num_processes > 1:
            sums = accelerator.reduce(sums.to(accelerator.device), "sum")
        total, count, correct = (float(x) for x in sums)
        if count <= 0:
            return {}
        return {"ual_smoothing": total / count, "mean_token_accuracy": correct / count}


def refuse_sharded_head(is_fsdp_enabled: bool) -> None:
    """UAL reads lm_head.weight outside the model's forward: stop clearly where it stays sharded."""
    if is_fsdp_enabled:
        raise ValueError(
            "ual does not support FSDP: the UAL loss reads lm_head.weight outside the model's forward, where FSDP "
            "keeps it sharded. Use DDP or DeepSpeed ZeRO-1/2, or turn ual off."
        )
    try:
        from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled
    except ImportError:  # pragma: no cover
        return
    if is_deepspeed_zero3_enabled():
        raise ValueError(
            "ual does not support DeepSpeed ZeRO-3: it partitions lm_head.weight, which the UAL loss reads outside "
            "the model's forward. Use ZeRO-1/2 or DDP, or turn ual off."
        )
