"""PPL mode: each sample's smoothing from its own perplexity under the model being trained.

    v_i = min(alpha * ppl_i / running_mean_ppl, v_max)

``ppl_i`` is exp(mean next-token NLL over the sample's label tokens), computed without gradient.
``running_mean_ppl`` is the plain average of every sample perplexity seen so far in this process,
the current batch included (so the very first batch is compared with its own mean). Perplexities
are capped at exp(30) so one degenerate sample cannot overflow the average.
"""

from __future__ import annotations

from typing import Any

import torch

from ual_plugin.loss import token_nll_and_margin
from ual_plugin.mapping import DEFAULT_ALPHA, DEFAULT_V_MAX, _check_alpha

_MAX_LOG_PPL = 30.0


class PPLSmoother:
    """Turns per-sample perplexities into smoothing values against a running average."""

    def __init__(self, alpha: float = DEFAULT_ALPHA, v_max: float = DEFAULT_V_MAX) -> None:
        _check_alpha(alpha, v_max)
        self.alpha = float(alpha)
        self.v_max = float(v_max)
        self.count = 0
        self.total = 0.0

    @property
    def running_mean(self) -> float:
        return self.total / self.count if self.count else float("nan")

    def __call__(self, ppl: torch.Tensor) -> torch.Tensor:
        ppl = ppl.detach().float()
        if ppl.numel():
            self.count += int(ppl.numel())
            self.total += float(ppl.sum())
        mean = max(self.running_mean, 1e-12) if self.count else 1.0
        return (self.alpha * ppl / mean).clamp(max=self.v_max)

    def state_dict(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "v_max": self.v_max, "count": self.count, "total": self.total}


def per_sample_ppl(token_nll: torch.Tensor, segments: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Perplexity of each segment that owns label tokens, and each token's index into that result.

    token_nll, segments, mask share a shape; segments are non-negative sample ids.
    """
    seg = segments.reshape(-1)
    m = mask.reshape(-1)
    nll = token_nll.reshape(-1).float() * m
    n_seg = int(seg.max()) + 1 if seg.numel() else 0
    sums = torch.zeros(n_seg, device=nll.device).index_add_(0, seg, nll)
    counts = torch.zeros(n_seg, device=nll.device).index_add_(0, seg, m.float())
    present = counts > 0
    compact = torch.full((n_seg,), -1, dtype=torch.long, device=nll.device)
    compact[present] = torch.arange(int(present.sum()), device=nll.device)
    mean_nll = (sums[present] / counts[present]).clamp(max=_MAX_LOG_PPL)
    return mean_nll.exp(), compact[seg].reshape(segments.shape)


def ppl_token_smoothing(
    smoother: PPLSmoother, token_nll: torch.Tensor, segments: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Per-token smoothing (0 where ``mask`` is False) from per-token NLL and sample ids."""
    ppl, index = per_sample_ppl(token_nll, segments, mask)
    per_sample = smoother(ppl)
    safe = index.clamp(min=0)
    values = per_sample[safe] if per_sample.numel() else torch.zeros_like(token_nll, dtype=torch.float32)
    return torch.where(mask, values, torch.zeros_like(values))


def ppl_smoothing_from_hidden(
    smoother: PPLSmoother,
    model: torch.nn.Module,
    hidden: torch.Tensor,
    labels: torch.Tensor,
    position_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-token smoothing (laid out like ``labels``) from each sample's perplexity, no gradient.

    Samples are the rows of a padded batch, or the packed sequences that ``position_ids`` delimit.
    """
    from ual_plugin.causal_lm import head_params
    from ual_plugin.data import segment_ids
    from ual_plugin.loss import linear_smoothed_cross_entropy

    head = head_params(model)
    tgt = labels[:, 1:].to(head.weight.device)
    with torch.no_grad():
        nll = linear_smoothed_cross_entropy(
            hidden[:, :-1].detach().to(head.weight.device), head.weight.detach(), tgt, 0.0,
            bias=None if head.bias is None else head.bias.detach(),
            reduction="none", softcap=head.softcap, logit_scale=head.logit_scale,
        )
        segments = segment_ids(position_ids, labels.shape, tgt.device)[:, 1:]
        eps = ppl_token_smoothing(smoother, nll, segments, tgt != -100)
    return torch.nn.functional.pad(eps, (1, 0))


class UALLoss:
    """PPL-mode UAL loss for ``compute_loss_func=`` on a stock ``Trainer`` or ``SFTTrainer``.

    ``compute_loss_func(outputs, labels, num_items_in_batch)`` never sees the batch, so it cannot
    read a per-sample uncertainty column: that column mode needs ``UALSFTTrainer``. Here each
    padded row is one sample; its smoothing comes from its perplexity (see module docstring).
    Returns sum of token losses / ``num_items_in_batch`` (the mean over label tokens without it).
    With padding-free packing a whole packed row counts as one sample: use ``UALSFTTrainer``.
    """

    def __init__(self, alpha: float = DEFAULT_ALPHA, v_max: float = DEFAULT_V_MAX, ignore_index: int = -100):
        self.smoother = PPLSmoother(alpha, v_max)
        self.ignore_index = ignore_index
        self.last_mean_smoothing = float("nan")

    def __call__(self, outputs: Any, labels: torch.Tensor, num_items_in_batch: Any = None) -> torch.Tensor:
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs.logits
        if logits is None or labels is None:
            raise ValueError("ual_loss needs the model's logits and the labels (got None)")
        tgt = labels[:, 1:].to(logits.device)
        mask = tgt != self.ignore_index
        # one pass over the logits: the NLL sets each sample's smoothing and is half of the loss too
        nll, margin, _ = token_nll_and_margin(logits[:, :-1, :], tgt, self.ignore_index)
        nll, margin = nll.reshape(tgt.shape), margin.reshape(tgt.shape)
        with torch.no_grad():
            rows = torch.arange(tgt.shape[0], device=tgt.device).unsqueeze(1).expand_as(tgt)
            eps = ppl_token_smoothing(self.smoother, nll.detach(), rows, mask)
        total = (nll + eps * margin).sum()
        n = mask.sum()
        if n > 0:
            self.last_mean_smoothing = float((eps * mask).sum() / n)
        denom = num_items_in_batch if num_items_in_batch is not None else n.clamp(min=1)
        if isinstance(denom, torch.Tensor):
            denom = denom.to(total.device)
        return total / denom

    def __repr__(self) -> str:
        return f"UALLoss(alpha={self.smoother.alpha}, v_max={self.smoother.v_max}, mode='ppl')"


ual_loss = UALLoss()
"""Ready-made PPL-mode loss (alpha=0.1, v_max=0.99): ``SFTTrainer(..., compute_loss_func=ual_loss)``."""

__all__ = ["PPLSmoother", "UALLoss", "per_sample_ppl", "ppl_smoothing_from_hidden", "ppl_token_smoothing", "ual_loss"]
