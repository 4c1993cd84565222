"""The UAL loss inside a causal LM's forward, computed by the model's own call of its LM-head module.

``install_ual_forward(model)`` wraps the causal LM's ``forward`` once. While a ``UALRequest`` is
active (``with ual_request(request): model(**batch)``), that forward runs the model with
``logits_to_keep=1``; when the model calls its LM-head module, the head computes the summed UAL
loss from the final hidden states (``linear_smoothed_cross_entropy``, never the ``[tokens, vocab]``
logits) and carries it out through the call's output. The loss comes back as ``outputs.loss``
(sum / ``num_items_in_batch``, plus the MoE router loss as the model adds it).

The outputs also answer the loss contracts of TRL's ``SFTTrainer.compute_loss``, so that TRL keeps
its own normalisation, router-loss weighting and metrics: every UAL forward carries
``num_valid_tokens``, ``num_correct_tokens`` and ``entropy_sum`` (trl 1.9's ``chunked_nll``), and
a call with ``fused_lm_head=True`` (trl >= 1.16) gets per-token ``log_probs`` (minus UAL's
per-token loss, so TRL's NLL of them is UAL's loss), ``entropy``, ``is_top1`` and ``label_mask``.

Why inside the model's head call: every engine gathers a sharded head around that call and hooks
its backward on the call's output (FSDP1 units, FSDP2 units and groups such as accelerate's
``[norm, lm_head]``, DeepSpeed ZeRO-3), and PEFT's ``modules_to_save`` wrapper routes it to the
trained copy; a loss computed after ``model()`` from ``lm_head.weight`` sees a shard. The per-token
smoothing travels in the request, not as a forward argument, so mixed precision policies that cast
float inputs never round it. Without a request the model is unchanged.
"""

from __future__ import annotations

import functools
import inspect
import types
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import torch

from ual_plugin.data import sample_means, segment_ids
from ual_plugin.loss import linear_smoothed_cross_entropy
from ual_plugin.outputs import with_fields
from ual_plugin.ppl import PPLSmoother, ppl_token_smoothing


@dataclass
class UALRequest:
    """One batch's UAL inputs, set around ``model(**batch)``; the forward fills ``stats``.

    ``smoothing``: per-token values laid out like ``labels`` (column mode), or ``ppl``: the
    smoother that derives them from each sample's perplexity (PPL mode; ``update_ppl`` only while
    training). ``backend``: "chunked" or "trl_fused" (TRL's fused log-prob head, unsharded only).
    ``router_aux``: add the MoE router loss to ``outputs.loss`` as the model weights it (True), or
    leave it in ``outputs.aux_loss`` for the trainer to weight (False). ``keep_logits``: return the
    full logits (evaluation with metrics, ``predict``) instead of the last position's.
    ``plain_nll``: also put the summed unsmoothed NLL in ``stats`` (an extra no-grad pass; evaluation).
    ``entropy``: also put the predictive entropy summed over label tokens in ``stats`` (``entropy_sum``,
    with ``entropy_tokens``). ``trl_counts``: answer trl < 1.16's ``chunked_nll`` contract (``num_valid_tokens``,
    ``num_correct_tokens``, ``entropy_sum`` in the outputs); off, the outputs carry only what the model's do.
    """

    smoothing: torch.Tensor | None = None
    ppl: PPLSmoother | None = None
    update_ppl: bool = True
    backend: str = "chunked"
    router_aux: bool = True
    keep_logits: bool = False
    plain_nll: bool = False
    entropy: bool = False
    trl_counts: bool = False
    stats: dict[str, torch.Tensor] = field(default_factory=dict)
    _head: _HeadCall | None = None


_REQUEST: ContextVar[UALRequest | None] = ContextVar("ual_request", default=None)


@contextmanager
def ual_request(request: UALRequest) -> Iterator[UALRequest]:
    """Make ``request`` the one the UAL forward serves while the block runs."""
    token = _REQUEST.set(request)
    try:
        yield request
    finally:
        _REQUEST.reset(token)


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The bare ``PreTrainedModel``: strips ``torch.compile`` (``._orig_mod``), DDP/accelerate (``.module``) and PEFT
    wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None)
        if not isinstance(inner, torch.nn.Module):
            inner = getattr(model, "module", None)
        if not isinstance(inner, torch.nn.Module):
            break
        model = inner
    if hasattr(model, "get_base_model") and callable(model.get_base_model):
        model = model.get_base_model()
    return model


def _text_config(model: torch.nn.Module) -> Any:
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def logit_transform(model: torch.nn.Module) -> tuple[float | None, float]:
    """(soft-cap, scale) that the model's own head applies to its logits, read from its config."""
    cfg = _text_config(unwrap_model(model))
    scale = getattr(cfg, "logit_scale", None)
    if scale is None:
        scale = getattr(cfg, "output_multiplier", None)
    if scale is None:
        scale = getattr(cfg, "lm_head_multiplier", None)
    if scale is None and getattr(cfg, "logits_scaling", None) is not None:
        scale = cfg.logits_scaling if getattr(cfg, "model_type", "") == "hyperclovax" else 1.0 / cfg.logits_scaling
    softcap = getattr(cfg, "final_logit_softcapping", None)
    return (float(softcap) if softcap else None), (1.0 if scale is None else float(scale))


def _backbone(lm: torch.nn.Module) -> torch.nn.Module:
    backbone = getattr(lm, "base_model", None)
    if backbone is None or backbone is lm:
        backbone = getattr(lm, "model", None)
    if backbone is None or backbone is lm:
        raise ValueError(f"cannot find the backbone of {type(lm).__name__} to read its hidden states")
    return backbone


@contextmanager
def _capture_hidden(backbone: torch.nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """A dict whose ``"hidden"`` the backbone's final hidden states fill while the block runs."""
    box: dict[str, torch.Tensor] = {}

    def hook(_module, _args, output):
        hidden = getattr(output, "last_hidden_state", None)
        box["hidden"] = output[0] if hidden is None else hidden

    handle = backbone.register_forward_hook(hook)
    try:
        yield box
    finally:
        handle.remove()


def _add(stats: dict[str, torch.Tensor], **values: torch.Tensor) -> None:
    for key, value in values.items():
        value = value.detach()
        stats[key] = value if key not in stats else stats[key] + value.to(stats[key].device)


@dataclass
class _HeadCall:
    """One UAL forward's state: the captured hidden states in, the summed loss and the head's output out."""

    request: UALRequest
    targets: torch.Tensor  # [B, T-1], already shifted
    position_ids: torch.Tensor | None
    softcap: float | None
    logit_scale: float
    captured: dict[str, torch.Tensor] = field(default_factory=dict)  # "hidden": the backbone's output
    total: torch.Tensor | None = None
    output: torch.Tensor | None = None
    token_outputs: bool = False  # also keep per-token losses, top-1 flags and entropies (TRL's fused contract)
    upstream: torch.Tensor | None = None  # the loss's incoming gradient, handed from _EmitLoss to _CarryLoss
    last_logits: torch.Tensor | None = None  # the last position's logits as UAL's loss sees them
    kernel_stats: dict[str, torch.Tensor] = field(default_factory=dict)  # this forward's counts from the kernel
    mask: torch.Tensor | None = None  # which targets are label tokens (set by ``loss``)

    def token_smoothing(self, head: torch.nn.Module, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        request = self.request
        if request.ppl is None:
            return request.smoothing[:, 1:].to(device=hidden.device, dtype=torch.float32)
        with torch.no_grad():
            bias = None if head.bias is None else head.bias.detach()
            nll = linear_smoothed_cross_entropy(
                hidden.detach(), head.weight.detach(), self.targets, 0.0, bias=bias, reduction="none",
                softcap=self.softcap, logit_scale=self.logit_scale,
            )
            shape = (self.targets.shape[0], self.targets.shape[1] + 1)
            segments = segment_ids(self.position_ids, shape, hidden.device)[:, 1:]
            return ppl_token_smoothing(request.ppl, nll, segments, mask, update=request.update_ppl)

    def loss(self, head: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        self.targets = self.targets.to(hidden.device)
        mask = self.mask = self.targets != -100
        eps = self.token_smoothing(head, hidden, mask)
        stats = self.kernel_stats
        want_entropy = self.request.entropy or self.token_outputs  # TRL's fused contract always carries it
        total = linear_smoothed_cross_entropy(
            hidden, head.weight, self.targets, eps, bias=head.bias, reduction="sum",
            softcap=self.softcap, logit_scale=self.logit_scale, stats=stats, entropy=want_entropy,
            token_stats=self.token_outputs,
        )
        shape = (self.targets.shape[0], self.targets.shape[1] + 1)
        per_sample, n_samples = sample_means(eps, segment_ids(self.position_ids, shape, hidden.device)[:, 1:], mask)
        _add(
            self.request.stats, smoothing_sum=(eps * mask).sum(), n_tokens=mask.sum(),
            n_correct=torch.as_tensor(stats.get("n_correct", 0), device=hidden.device),
            sample_smoothing_sum=per_sample, n_samples=n_samples,
        )
        if want_entropy:
            _add(self.request.stats, entropy_sum=stats["entropy_sum"], entropy_tokens=mask.sum())
        if self.request.plain_nll:
            with torch.no_grad():
                bias = None if head.bias is None else head.bias.detach()
                _add(self.request.stats, nll_sum=linear_smoothed_cross_entropy(
                    hidden.detach(), head.weight.detach(), self.targets, 0.0, bias=bias, reduction="sum",
                    softcap=self.softcap, logit_scale=self.logit_scale))
        return total

    def carry(self, head: torch.nn.Module, logits: torch.Tensor) -> torch.Tensor:
        """The head call's output: the model's logits in value, the UAL loss in gradient (adds exactly 0)."""
        if self.total is not None:
            raise RuntimeError("UAL: the model called its LM head twice in one forward; this model is not supported")
        if "hidden" not in self.captured:
            raise RuntimeError("UAL could not capture the model's final hidden states (backbone forward not called)")
        self.total = self.loss(head, self.captured["hidden"][:, :-1])
        self.last_logits = _transformed(logits[:, -1].detach().float(), self.softcap, self.logit_scale)
        return _CarryLoss.apply(logits.detach(), self.total, self)

    def record_output(self, _module: torch.nn.Module, _args: Any, output: Any) -> None:
        """Forward hook on the head, run after the engines' own hooks: the output the model received."""
        self.output = output

    def summed_loss(self) -> torch.Tensor:
        """The summed loss, reached through the head call's output so the engines' backward hooks run first."""
        return self._emit(self.total.detach() if self.total is not None else None, None)

    def token_losses(self) -> torch.Tensor:
        """Each label token's loss ([B, T-1], zero where ignored), whose gradient reaches the summed loss the same
        way; the caller must reduce it with one weight for every token (a sum or a mean, as TRL's NLL does)."""
        return self._emit(self.kernel_stats.get("token_losses"), self.mask)

    def _emit(self, value: torch.Tensor | None, mask: torch.Tensor | None) -> torch.Tensor:
        if value is None or not isinstance(self.output, torch.Tensor):
            raise RuntimeError("UAL: the model's forward did not call its LM head module")
        return _EmitLoss.apply(value, self.output.reshape(-1)[0], self, mask)


def _transformed(z: torch.Tensor, softcap: float | None, logit_scale: float) -> torch.Tensor:
    """The head's raw logits after the scale and soft-cap that UAL's loss applies (read from the config)."""
    z = z * logit_scale
    return z if softcap is None else softcap * torch.tanh(z / softcap)


def _check_logits_once(lm: torch.nn.Module, call: _HeadCall, outputs: Any) -> None:
    """Stop, on the model's first UAL forward, if the logits it returns are not the ones UAL's loss uses.

    A model that post-processes its head output in a way its config does not name (a slice to an
    unpadded vocabulary, an extra scale) would otherwise train on a loss for other logits.
    """
    if lm.__dict__.get("_ual_logits_checked") or call.last_logits is None:
        return
    theirs = getattr(outputs, "logits", None)
    if not isinstance(theirs, torch.Tensor):
        return  # the model returned no logits to compare with (nothing for a user to be misled by either)
    theirs = theirs[:, -1].detach().float().to(call.last_logits.device)
    ours = call.last_logits
    if theirs.shape != ours.shape:
        raise ValueError(
            f"UAL: {type(lm).__name__} returns logits of shape {tuple(theirs.shape)} per position, but its LM head "
            f"produces {tuple(ours.shape)}: the model post-processes its logits in a way UAL cannot reproduce, so "
            "UAL would train on a loss for other logits. This model is not supported."
        )
    err = float((theirs - ours).abs().max())
    if err > 2e-2 * float(ours.abs().max()) + 1e-4:
        raise ValueError(
            f"UAL: {type(lm).__name__}'s logits differ from its LM head's output after the logit scale / soft-cap "
            f"its config names (max difference {err:.3g}): the model post-processes its logits in a way UAL cannot "
            "reproduce, so UAL would train on a loss for other logits. This model is not supported."
        )
    lm._ual_logits_checked = True


class _EmitLoss(torch.autograd.Function):
    """The loss in value (the sum, or per token); in backward, hands the float32 gradient of the sum to the
    head call as it is, and sends a placeholder through the head output (whose dtype, bf16 under autocast,
    would round it). Per token, the gradient must be one value on every label token, which is checked."""

    @staticmethod
    def forward(ctx, value: torch.Tensor, anchor: torch.Tensor, call: _HeadCall, mask: torch.Tensor | None):
        ctx.call, ctx.anchor_dtype = call, anchor.dtype
        ctx.mask = mask
        return value.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        ctx.call.upstream = grad if ctx.mask is None else _uniform_gradient(grad, ctx.mask)
        return None, torch.ones((), dtype=ctx.anchor_dtype, device=grad.device), None, None


def _uniform_gradient(grad: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The one gradient every label token's loss received (asserted on the device, without a host sync)."""
    flat, valid = grad.reshape(-1), mask.reshape(-1).to(grad.device)
    first = flat[valid.to(torch.int8).argmax()]
    torch._assert_async(
        ((flat == first) | ~valid).all(),
        "UAL: the per-token losses were reduced with different weights per token (e.g. DFT), which UAL's loss "
        "cannot honour; reduce them with a plain sum or mean",
    )
    return first.float()


class _CarryLoss(torch.autograd.Function):
    """The head's logits in value; in backward, the summed loss gets the gradient _EmitLoss handed over.

    The gradient thus still travels through the head's output (the engines' backward hooks run in
    order), but no scale (1/N, 1/GA, the world size) is ever rounded to the output's dtype.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, total: torch.Tensor, call: _HeadCall) -> torch.Tensor:
        ctx.call = call
        return logits.view_as(logits)

    @staticmethod
    def backward(ctx, grad_logits: torch.Tensor):
        upstream, ctx.call.upstream = ctx.call.upstream, None
        if upstream is None:  # reached through the logits alone, not through outputs.loss
            upstream = grad_logits.float().sum()
        return None, upstream.float(), None


def _head_forward(self: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """The LM head's forward: its usual projection, which also carries the UAL loss during a UAL forward."""
    request = _REQUEST.get()
    call = None if request is None else request._head
    if call is None:
        return self._ual_plain_forward(hidden)
    with torch.no_grad():
        logits = self._ual_plain_forward(hidden)
    return call.carry(self, logits)


def _router_aux_loss(lm: torch.nn.Module, outputs: Any, loss: torch.Tensor, request: UALRequest) -> torch.Tensor:
    """``loss`` plus the MoE router loss at its config's weight, as the model's own forward and TRL's loss heads add
    it (unless the request leaves the weighting to the trainer)."""
    aux = getattr(outputs, "aux_loss", None)
    if aux is None or not request.router_aux:
        return loss
    coef = getattr(_text_config(lm), "router_aux_loss_coef", None)  # where trainers set theirs (TRL does)
    if coef is None:
        coef = getattr(lm, "router_aux_loss_coef", None)
    if coef is None:
        raise ValueError(f"{type(lm).__name__} returned a router aux loss but has no router_aux_loss_coef")
    return loss + coef * aux.to(loss.device)


def _normalise(total: torch.Tensor, num_items: Any, n_tokens: torch.Tensor) -> torch.Tensor:
    denom = n_tokens.clamp(min=1) if num_items is None else num_items
    if isinstance(denom, torch.Tensor):
        denom = denom.to(total.device)
    return total / denom


def _chunked_forward(lm, request: UALRequest, args: tuple, kwargs: dict, labels, num_items, fused: bool) -> Any:
    if lm._ual_accepts_logits_to_keep and not request.keep_logits:
        kwargs["logits_to_keep"] = 1  # the model's own projection then covers one position only
    softcap, scale = lm._ual_logit_transform
    call = _HeadCall(request, labels[:, 1:], kwargs.get("position_ids"), softcap, scale, token_outputs=fused)
    request._head = call
    recorder = lm.get_output_embeddings().register_forward_hook(call.record_output)
    try:
        with _capture_hidden(_backbone(lm)) as call.captured:
            outputs = lm._ual_original_forward(*args, **kwargs)
    finally:
        recorder.remove()
        request._head = None
    total = call.summed_loss()
    _check_logits_once(lm, call, outputs)
    loss = _router_aux_loss(lm, outputs, _normalise(total, num_items, request.stats["n_tokens"]), request)
    stats = call.kernel_stats
    answers = _trl_counts(stats["n_tokens"], stats["n_correct"], stats.get("entropy_sum")) if request.trl_counts else {}
    if fused:  # TRL's fused-head contract (trl >= 1.16): per-token fields, zero where the label is ignored
        answers.update(log_probs=-call.token_losses(), entropy=stats["token_entropies"],
                       is_top1=stats["token_top1"], label_mask=call.mask)
    return with_fields(outputs, loss=loss, **answers)


def _trl_counts(n_valid: torch.Tensor, n_correct: torch.Tensor, entropy_sum: torch.Tensor | None) -> dict:
    """The counts TRL's ``chunked_nll`` contract reads (trl < 1.16)."""
    return {"num_valid_tokens": n_valid, "num_correct_tokens": n_correct, "entropy_sum": entropy_sum}


def smoothing_correction(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor
) -> torch.Tensor:
    """Per token, z_y - mean_k z_k of the unscaled logits z = h W^T + b, in float32, from O(tokens x hidden)
    work: h . (W[y] - mean_v W) + b[y] - mean(b). The mean row is reduced in float32 without a float32
    copy of the head (that copy would be 2.1 GB at 128256 x 4096)."""
    direction = weight[targets].float() - weight.mean(0, dtype=torch.float32)
    correction = (hidden.float() * direction).sum(-1)
    if bias is not None:
        correction = correction + bias[targets].float() - bias.mean(dtype=torch.float32)
    return correction


def _trl_fused_forward(lm, request: UALRequest, args: tuple, kwargs: dict, labels, num_items) -> Any:
    """UAL on TRL's fused log-prob head: -log p(y) + e * (z_y - mean_k z_k), the second term linear in z.

    With z = s * (h W^T + b) the correction is s * (h . (W[y] - mean_v W) + b[y] - mean(b)):
    O(tokens x hidden) on TRL's kernel. Reads the head weight directly, so only unsharded. The
    per-token ``log_probs`` it returns are minus UAL's per-token loss, so TRL's NLL of them is UAL's.
    """
    with _capture_hidden(_backbone(lm)) as box:
        outputs = lm._ual_original_forward(*args, labels=labels, fused_lm_head=True, **kwargs)
    head = lm.get_output_embeddings()
    hidden = box["hidden"][:, :-1].to(head.weight.device)
    tgt = labels[:, 1:].to(head.weight.device)
    mask = tgt != -100
    segments = segment_ids(kwargs.get("position_ids"), labels.shape, tgt.device)[:, 1:]
    if request.ppl is not None:
        eps = ppl_token_smoothing(request.ppl, -outputs.log_probs.detach(), segments, mask, update=request.update_ppl)
    else:
        eps = request.smoothing[:, 1:].to(device=tgt.device, dtype=torch.float32)
    safe = torch.where(mask, tgt, torch.zeros_like(tgt))
    correction = smoothing_correction(hidden, head.weight, head.bias, safe) * lm._ual_logit_transform[1]
    token_losses = -outputs.log_probs.float() + eps * correction * mask
    total = token_losses.sum()
    n_correct = (outputs.is_top1 & mask).sum()
    per_sample, n_samples = sample_means(eps, segments, mask)
    _add(request.stats, smoothing_sum=(eps * mask).sum(), n_tokens=mask.sum(), n_correct=n_correct,
         sample_smoothing_sum=per_sample, n_samples=n_samples)
    entropy_sum = (outputs.entropy.detach().float() * mask).sum()  # TRL's fused head computes it anyway
    _add(request.stats, entropy_sum=entropy_sum, entropy_tokens=mask.sum())
    if request.plain_nll:
        _add(request.stats, nll_sum=-outputs.log_probs.detach().float().sum())
    loss = _router_aux_loss(lm, outputs, _normalise(total, num_items, request.stats["n_tokens"]), request)
    # TRL's head already set entropy, is_top1 and label_mask
    return with_fields(outputs, loss=loss, log_probs=-token_losses)


def _aligned_smoothing(smoothing: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The per-token smoothing laid out like the labels the model sees: PEFT's prompt learning (prompt tuning,
    P-tuning) prepends its virtual tokens, labelled -100, so the smoothing gets as many leading zeros."""
    extra = labels.shape[-1] - smoothing.shape[-1]
    if extra == 0 or smoothing.shape[0] != labels.shape[0]:
        return smoothing  # equal, or a mismatch the loss reports with both shapes
    if extra < 0 or bool((labels[:, :extra] != -100).any()):
        raise ValueError(
            f"UAL: the labels reaching the model have shape {tuple(labels.shape)} but the batch's smoothing has "
            f"{tuple(smoothing.shape)}, and the difference is not a prefix of ignored (-100) tokens such as PEFT's "
            "virtual tokens: cannot tell which smoothing belongs to which token"
        )
    return torch.nn.functional.pad(smoothing, (extra, 0))


@torch.compiler.disable
def _ual_forward(self: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
    """The causal LM's forward while UAL is installed. Never traced by ``torch.compile``: the loss hands its exact
    float32 scale between two autograd functions outside the graph, which a traced backward would not replay;
    blocks compiled on their own (``compile_repeated_blocks``) still run compiled inside it."""
    request = _REQUEST.get()
    if request is None:
        return self._ual_original_forward(*args, **kwargs)
    if kwargs.get("shift_labels") is not None:
        raise ValueError(
            "UAL does not support context / sequence parallelism (the batch carries `shift_labels`): each rank would "
            "hold part of a sample, while UAL's smoothing is per sample. Train without context parallelism."
        )
    fused = bool(kwargs.pop("fused_lm_head", False))  # TRL >= 1.16 asks for per-token log-probs this way
    liger_accuracy = _pop_liger_loss_kwargs(kwargs)
    labels = kwargs.pop("labels", None)
    if labels is None:
        if fused:
            raise ValueError("UAL: the fused LM-head call reached the model without `labels`")
        return self._ual_original_forward(*args, **kwargs)  # a logits-only forward (TRL's metrics), no loss
    num_items = kwargs.pop("num_items_in_batch", None)
    kwargs["use_cache"] = False
    if request.smoothing is not None:
        request.smoothing = _aligned_smoothing(request.smoothing, labels)
    if request.backend == "trl_fused":
        return _trl_fused_forward(self, request, args, kwargs, labels, num_items)
    if request.backend != "chunked":
        raise ValueError(f"unknown UAL loss backend {request.backend!r}; expected 'chunked' or 'trl_fused'")
    outputs = _chunked_forward(self, request, args, kwargs, labels, num_items, fused)
    if liger_accuracy:  # trl < 1.16 with use_liger_kernel reads the accuracy from the outputs
        stats = request.stats
        outputs = with_fields(outputs, token_accuracy=stats["n_correct"] / stats["n_tokens"].clamp(min=1))
    return outputs


def _pop_liger_loss_kwargs(kwargs: dict) -> bool:
    """Take off the arguments trl < 1.16 passes, with ``use_liger_kernel``, to Liger's loss forward (UAL computes
    the loss); returns whether it asked for ``token_accuracy``."""
    kwargs.pop("skip_logits", None)  # UAL never builds the full logits while training
    if kwargs.pop("use_token_scaling", False):
        raise ValueError("UAL: token scaling (DFT) weights each token's loss differently, which UAL's loss cannot honour")
    return bool(kwargs.pop("return_token_accuracy", False))


def compile_repeated_blocks(model: torch.nn.Module, checkpointed: bool = False, **compile_kwargs: Any) -> int:
    """Compile, in place, each block of the model's repeated layers (regional compilation, as accelerate's
    ``compile_regions`` does for DeepSpeed); returns how many. The UAL forward around them runs eagerly.
    ``checkpointed``: gradient checkpointing wraps each block's call, and dynamo gives up on a block whose trace
    holds the checkpoint, so each block's children (attention, MLP, norms) are compiled instead."""

    def visit(module: torch.nn.Module) -> int:
        if isinstance(module, torch.nn.ModuleList) and len(module) > 1 and len({type(m) for m in module}) == 1:
            for block in module:
                for part in (block.children() if checkpointed else (block,)):
                    part.compile(**compile_kwargs)
            return len(module)
        return sum(visit(child) for child in module.children())

    return visit(unwrap_model(model))


def _check_head(head: torch.nn.Module | None) -> None:
    if head is None or not any("weight" in m._parameters for m in head.modules()):
        raise ValueError("UAL needs a causal LM with an output embedding (lm_head); this model has none")
    if any(hasattr(m, "lora_A") or hasattr(m, "base_layer") for m in head.modules()):
        raise ValueError(
            "UAL computes the loss from the LM head as one dense matrix, so a LoRA adapter on lm_head itself would "
            "be bypassed and never trained. Remove 'lm_head' from the LoRA target modules (train it fully with "
            "modules_to_save=['lm_head'] instead, or leave it frozen)."
        )


def install_ual_forward(model: torch.nn.Module) -> torch.nn.Module:
    """Put the UAL loss entry on the causal LM inside ``model`` (idempotent); returns that LM.

    Call it on the unwrapped model (PEFT wrappers are fine), before DDP / FSDP / DeepSpeed wrap it.
    ``forward`` keeps its signature, so trainers still see which batch columns the model takes. The
    head is checked on every call, so an adapter added to ``lm_head`` after a first install is refused.
    """
    lm = unwrap_model(model)
    head = lm.get_output_embeddings()
    _check_head(head)
    for leaf in head.modules():  # the module(s) holding the weight: one, or PEFT's original + trained copies
        if "weight" in leaf._parameters and "_ual_plain_forward" not in leaf.__dict__:
            _patch_forward(leaf, types.MethodType(_head_forward, leaf), "_ual_plain_forward")
    if "_ual_original_forward" in lm.__dict__:
        return lm
    signature = inspect.signature(type(lm).forward).parameters
    lm._ual_accepts_logits_to_keep = "logits_to_keep" in signature
    lm._ual_logit_transform = logit_transform(lm)

    @functools.wraps(type(lm).forward)
    def forward(self, *args, **kwargs):
        return _ual_forward(self, *args, **kwargs)

    _patch_forward(lm, types.MethodType(forward, lm), "_ual_original_forward")
    return lm


def _patch_forward(module: torch.nn.Module, forward: Any, saved: str) -> None:
    """Replace ``module.forward``, keeping the one it had under ``saved`` (and whether it was its own)."""
    setattr(module, saved, module.forward)
    module._ual_own_forward = "forward" in module.__dict__
    module.forward = module._ual_installed_forward = forward


def remove_ual_forward(model: torch.nn.Module) -> torch.nn.Module:
    """Take the UAL entry off the causal LM inside ``model`` (also after ``merge_and_unload``); returns it.

    Where a wrapper was put around UAL's forward after it was installed (accelerate's mixed precision wraps
    ``model.forward`` in autocast and the fp32 output conversion when training starts), both stay: removing UAL's
    would remove the wrapper too, and UAL's passes every call through unchanged when no UAL request is active.
    """
    lm = unwrap_model(model)
    for module in lm.modules():
        saved = next((k for k in ("_ual_original_forward", "_ual_plain_forward") if k in module.__dict__), None)
        if saved is None or module.__dict__.get("forward") is not module.__dict__.get("_ual_installed_forward"):
            continue
        original = module.__dict__.pop(saved)
        if module.__dict__.pop("_ual_own_forward"):
            module.forward = original
        else:
            del module.forward
        for key in ("_ual_installed_forward", "_ual_accepts_logits_to_keep", "_ual_logit_transform",
                    "_ual_logits_checked"):
            module.__dict__.pop(key, None)
    return lm


__all__ = ["UALRequest", "compile_repeated_blocks", "install_ual_forward", "logit_transform", "remove_ual_forward", "ual_request", "unwrap_model"]
