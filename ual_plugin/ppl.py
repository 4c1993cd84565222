"""PPL mode: each sample's smoothing from its own perplexity under the model being trained.

    v_i = min(alpha * ppl_i / running_mean_ppl, v_max)

``ppl_i`` is exp(mean next-token NLL over the sample's label tokens), computed without gradient.
``running_mean_ppl`` is the plain average of every training sample's perplexity seen so far (on
every process), the current batch included, so the very first batch is compared with its own
mean. Evaluation batches use the training mean and never change it. Perplexities are capped at
exp(30) so one degenerate sample cannot overflow the average.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import torch

from ual_plugin.loss import token_nll_and_margin
from ual_plugin.mapping import DEFAULT_ALPHA, DEFAULT_V_MAX, _check_alpha

_MAX_LOG_PPL = 30.0
LOG = logging.getLogger("ual_plugin")


def _world_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum over processes when ``torch.distributed`` runs with more than one (every rank must call)."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        values = values.clone()
        dist.all_reduce(values)
    return values


class PPLSmoother:
    """Turns per-sample perplexities into smoothing values against a running average.

    The running sums stay on the device (no host sync per step) and are summed over processes, so
    every rank uses the same mean; ``state_dict`` / ``load_state_dict`` carry them across a resume.
    """

    def __init__(self, alpha: float = DEFAULT_ALPHA, v_max: float = DEFAULT_V_MAX) -> None:
        _check_alpha(alpha, v_max)
        self.alpha = float(alpha)
        self.v_max = float(v_max)
        self._sums: torch.Tensor = torch.zeros(2, dtype=torch.float64)  # [sum of ppl, number of samples]

    @property
    def count(self) -> int:
        return int(self._sums[1])

    @property
    def running_mean(self) -> float:
        total, count = (float(x) for x in self._sums)
        return total / count if count else float("nan")

    def smoothing(self, ppl: torch.Tensor, present: torch.Tensor | None = None, update: bool = True) -> torch.Tensor:
        """Smoothing for each entry of ``ppl`` (entries where ``present`` is False are ignored and get 0).

        ``update=True`` (training) adds the present entries to the running mean first, summed over
        processes; ``update=False`` (evaluation) compares with the training mean as it stands.
        """
        ppl = ppl.detach().float()
        present = torch.ones_like(ppl, dtype=torch.bool) if present is None else present
        self._sums = self._sums.to(ppl.device)
        batch = torch.stack([(ppl * present).sum(), present.sum()]).to(torch.float64)
        if update:
            self._sums = self._sums + _world_sum(batch)
            sums = self._sums
        else:  # before any training step, an evaluation batch is compared with its own mean
            sums = torch.where(self._sums[1] > 0, self._sums, batch)
        mean = (sums[0] / sums[1].clamp(min=1)).clamp(min=1e-12).float()
        values = (self.alpha * ppl / mean).clamp(max=self.v_max)
        return torch.where(present, values, torch.zeros_like(values))

    def __call__(self, ppl: torch.Tensor) -> torch.Tensor:
        return self.smoothing(ppl)

    def state_dict(self) -> dict[str, Any]:
        total, count = (float(x) for x in self._sums)
        return {"alpha": self.alpha, "v_max": self.v_max, "count": count, "total": total}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._sums = torch.tensor([float(state["total"]), float(state["count"])], dtype=torch.float64)


def segment_ppl(
    token_nll: torch.Tensor, segments: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(perplexity, has-label-tokens) for every possible segment id, without a host sync.

    token_nll, segments, mask share a shape; segment ids are non-negative and below ``numel``.
    """
    seg = segments.reshape(-1)
    m = mask.reshape(-1)
    nll = token_nll.reshape(-1).float() * m
    slots = seg.numel()
    sums = torch.zeros(slots, device=nll.device).index_add_(0, seg, nll)
    counts = torch.zeros(slots, device=nll.device).index_add_(0, seg, m.float())
    present = counts > 0
    mean_nll = (sums / counts.clamp(min=1)).clamp(max=_MAX_LOG_PPL)
    return mean_nll.exp(), present


def per_sample_ppl(token_nll: torch.Tensor, segments: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Perplexity of each segment that owns label tokens, and each token's index into that result."""
    ppl, present = segment_ppl(token_nll, segments, mask)
    compact = torch.full(present.shape, -1, dtype=torch.long, device=ppl.device)
    compact[present] = torch.arange(int(present.sum()), device=ppl.device)
    return ppl[present], compact[segments.reshape(-1)].reshape(segments.shape)


def ppl_token_smoothing(
    smoother: PPLSmoother, token_nll: torch.Tensor, segments: torch.Tensor, mask: torch.Tensor, update: bool = True
) -> torch.Tensor:
    """Per-token smoothing (0 where ``mask`` is False) from per-token NLL and sample ids."""
    ppl, present = segment_ppl(token_nll, segments, mask)
    per_segment = smoother.smoothing(ppl, present, update=update)
    values = per_segment[segments.reshape(-1)].reshape(segments.shape)
    return torch.where(mask, values, torch.zeros_like(values))


def _calling_trainer(max_depth: int = 6) -> Any:
    """The ``transformers.Trainer`` whose ``compute_loss`` called us (``compute_loss_func`` is never given it)."""
    trainer_cls = getattr(sys.modules.get("transformers"), "Trainer", None)
    frame = sys._getframe(2)
    for _ in range(max_depth):
        if frame is None or trainer_cls is None:
            return None
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, trainer_cls):
            return candidate
        frame = frame.f_back
    return None


class UALLoss:
    """PPL-mode UAL loss for ``compute_loss_func=`` on a stock ``Trainer`` or ``SFTTrainer``.

    ``compute_loss_func(outputs, labels, num_items_in_batch)`` never sees the batch, so it cannot
    read a per-sample uncertainty column: that column mode needs ``UALSFTTrainer``. Here each
    padded row is one sample; its smoothing comes from its perplexity (see module docstring).
    Returns sum of token losses / ``num_items_in_batch`` (the mean over label tokens without it).
    With padding-free packing a whole packed row counts as one sample: use ``UALSFTTrainer``.

    At its first call it logs one ``UAL active`` line and attaches to the calling trainer, which
    then logs ``ual_smoothing`` (mean smoothing over the label tokens since the last log).
    """

    def __init__(self, alpha: float = DEFAULT_ALPHA, v_max: float = DEFAULT_V_MAX, ignore_index: int = -100):
        self.smoother = PPLSmoother(alpha, v_max)
        self.ignore_index = ignore_index
        self.last_mean_smoothing = float("nan")
        self._window = torch.zeros(2, dtype=torch.float64)  # [sum of smoothing, label tokens] since the last log
        self._trainers: set[int] = set()

    def _attach(self, trainer: Any) -> None:
        if trainer is None or id(trainer) in self._trainers:
            return
        loss_type = getattr(trainer.args, "loss_type", None)
        if loss_type == "chunked_nll":
            raise ValueError(
                "compute_loss_func=ual_loss needs the model's full logits, but this SFTTrainer uses "
                "loss_type='chunked_nll' (trl 1.9's default), which never builds them. Pass "
                "SFTConfig(..., loss_type='nll'), or use UALSFTTrainer."
            )
        self._trainers.add(id(trainer))
        # first in line, so the printing and reporting callbacks see the metric too
        trainer.callback_handler.callbacks.insert(0, _loss_logger(self))
        LOG.warning(
            "UAL active: mode=ppl, alpha=%s, v_max=%s (compute_loss_func=%s on %s); ual_smoothing is logged with "
            "the loss.", self.smoother.alpha, self.smoother.v_max, self, type(trainer).__name__,
        )

    def pop_mean_smoothing(self) -> float | None:
        """Mean smoothing over the label tokens since the last call (None if there were none)."""
        total, count = (float(x) for x in self._window)
        self._window = torch.zeros_like(self._window)
        return total / count if count else None

    def __call__(self, outputs: Any, labels: torch.Tensor, num_items_in_batch: Any = None) -> torch.Tensor:
        if not self._trainers:
            self._attach(_calling_trainer())
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs.logits
        if logits is None or labels is None:
            raise ValueError("ual_loss needs the model's logits and the labels (got None)")
        tgt = labels[:, 1:].to(logits.device)
        mask = tgt != self.ignore_index
        # one pass over the logits: the NLL sets each sample's smoothing and is half of the loss too
        nll, margin, _ = token_nll_and_margin(logits[:, :-1, :], tgt, self.ignore_index)
        nll, margin = nll.reshape(tgt.shape), margin.reshape(tgt.shape)
        training = torch.is_grad_enabled()  # evaluation runs under no_grad and leaves the running mean alone
        with torch.no_grad():
            rows = torch.arange(tgt.shape[0], device=tgt.device).unsqueeze(1).expand_as(tgt)
            eps = ppl_token_smoothing(self.smoother, nll.detach(), rows, mask, update=training)
            stats = torch.stack([(eps * mask).sum().double(), mask.sum().double()])
            self._window = self._window.to(stats.device) + stats
        total = (nll + eps * margin).sum()
        n = mask.sum()
        self.last_mean_smoothing = float(stats[0] / stats[1]) if int(n) > 0 else self.last_mean_smoothing
        denom = num_items_in_batch if num_items_in_batch is not None else n.clamp(min=1)
        if isinstance(denom, torch.Tensor):
            denom = denom.to(total.device)
        return total / denom

    def __repr__(self) -> str:
        return f"UALLoss(alpha={self.smoother.alpha}, v_max={self.smoother.v_max}, mode='ppl')"


def _loss_logger(loss: UALLoss) -> Any:
    """A ``TrainerCallback`` that adds ``ual_smoothing`` to a stock trainer's training logs."""
    from transformers import TrainerCallback

    class UALLossLogger(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
            if logs is None or "loss" not in logs:
                return
            value = loss.pop_mean_smoothing()
            if value is None:
                return
            logs["ual_smoothing"] = value
            if state.log_history and state.log_history[-1].get("step") == state.global_step:
                state.log_history[-1]["ual_smoothing"] = value  # Trainer.log records the entry before callbacks run

    return UALLossLogger()


ual_loss = UALLoss()
"""Ready-made PPL-mode loss (alpha=0.1, v_max=0.99): ``SFTTrainer(..., compute_loss_func=ual_loss)``."""

__all__ = ["PPLSmoother", "UALLoss", "per_sample_ppl", "ppl_token_smoothing", "segment_ppl", "ual_loss"]
