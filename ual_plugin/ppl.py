"""PPL mode: each sample's smoothing from its own perplexity under the model being trained.

    v_i = min(alpha * ppl_i / running_mean_ppl, v_max)

``ppl_i`` is exp(mean next-token NLL over the sample's label tokens), computed without gradient.
``running_mean_ppl`` averages the training samples' perplexities seen so far (on every process),
the current batch included, so the very first batch is compared with its own mean:
- ``window=N`` (the default, N = 64): an exponentially weighted mean whose weights fall by 1/e
  every N samples, so it follows the model as its perplexities fall and the mean smoothing stays
  much closer to alpha;
- ``window=0``: the plain average over all history (the paper's "historical average PPL"). Early,
  high perplexities then dominate it and the smoothing fades as training lowers them.
Evaluation batches use the training mean and never change it. Perplexities are capped at exp(30)
so one degenerate sample cannot overflow the average.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import weakref
from typing import Any

import torch

from ual_plugin.data import segment_sums
from ual_plugin.loss import token_nll_and_margin
from ual_plugin.mapping import DEFAULT_ALPHA, DEFAULT_V_MAX, _check_alpha
from ual_plugin.options import DEFAULT_PPL_WINDOW, check_ppl_window

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

    def __init__(self, alpha: float = DEFAULT_ALPHA, v_max: float = DEFAULT_V_MAX,
                 window: int = DEFAULT_PPL_WINDOW) -> None:
        _check_alpha(alpha, v_max)
        check_ppl_window(window)
        self.alpha = float(alpha)
        self.v_max = float(v_max)
        self.window = int(window)
        # [weighted sum of ppl, sum of weights, samples seen]
        self._sums: torch.Tensor = torch.zeros(3, dtype=torch.float64)

    @property
    def count(self) -> int:
        """Training samples seen."""
        return int(self._sums[2])

    @property
    def running_mean(self) -> float:
        total, weight, _ = (float(x) for x in self._sums)
        return total / weight if weight else float("nan")

    def smoothing(self, ppl: torch.Tensor, present: torch.Tensor | None = None, update: bool = True) -> torch.Tensor:
        """Smoothing for each entry of ``ppl`` (entries where ``present`` is False are ignored and get 0).

        ``update=True`` (training) adds the present entries to the running mean first, summed over
        processes; ``update=False`` (evaluation) compares with the training mean as it stands.
        """
        ppl = ppl.detach().float()
        present = torch.ones_like(ppl, dtype=torch.bool) if present is None else present
        self._sums = self._sums.to(ppl.device)
        n = present.sum()
        batch = torch.stack([(ppl * present).sum(), n, n]).to(torch.float64)
        if update:
            batch = _world_sum(batch)
            decay = torch.exp(-batch[1] / self.window) if self.window else torch.ones((), dtype=torch.float64)
            self._sums = self._sums * torch.stack([decay, decay, decay.new_ones(())]) + batch
            sums = self._sums
        else:  # before any training step, an evaluation batch is compared with its own mean
            sums = torch.where(self._sums[1] > 0, self._sums, batch)
        mean = (sums[0] / sums[1].clamp(min=1)).clamp(min=1e-12).float()
        values = (self.alpha * ppl / mean).clamp(max=self.v_max)
        return torch.where(present, values, torch.zeros_like(values))

    def __call__(self, ppl: torch.Tensor) -> torch.Tensor:
        return self.smoothing(ppl)

    def state_dict(self) -> dict[str, Any]:
        total, weight, seen = (float(x) for x in self._sums)
        return {"alpha": self.alpha, "v_max": self.v_max, "window": self.window, "total": total, "weight": weight,
                "count": seen}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        weight = state.get("weight", state["count"])  # states saved before the window existed: plain sums
        self._sums = torch.tensor([float(state["total"]), float(weight), float(state["count"])], dtype=torch.float64)


def segment_ppl(
    token_nll: torch.Tensor, segments: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(perplexity, has-label-tokens) for every possible segment id, without a host sync.

    token_nll, segments, mask share a shape; segment ids are non-negative and below ``numel``.
    """
    sums, counts = segment_sums(token_nll, segments, mask)
    mean_nll = (sums / counts.clamp(min=1)).clamp(max=_MAX_LOG_PPL)
    return mean_nll.exp(), counts > 0


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


def _with_router_loss(loss: torch.Tensor, outputs: Any, trainer: Any, num_items_in_batch: Any) -> torch.Tensor:
    """``loss`` plus the MoE router loss, weighted and accumulated as the calling trainer weights it without a
    ``compute_loss_func`` (which it leaves the router loss to): trl >= 1.16 keeps its coefficient on the trainer and
    averages the term over the accumulation steps; trl 1.9 and ``transformers.Trainer`` take the model's own loss,
    which adds it per micro-batch at the model's own coefficient (set from its config when it was built)."""
    aux = outputs.get("aux_loss") if isinstance(outputs, dict) else getattr(outputs, "aux_loss", None)
    if aux is None:
        return loss
    if trainer is None:
        raise ValueError("ual_loss got a MoE router loss outside a Trainer, so it cannot tell the router loss's weight")
    coef = getattr(trainer, "router_aux_loss_coef", None)
    steps = 1
    if coef is not None:  # trl >= 1.16
        if num_items_in_batch is not None:
            steps = getattr(trainer, "current_gradient_accumulation_steps", 1)
    else:
        model = trainer.model  # Trainer keeps the unwrapped model here (PEFT's wrapper forwards attributes)
        coef = getattr(model, "router_aux_loss_coef", None)  # what the model's own forward weights it with
        if coef is None:
            config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
            coef = getattr(config, "router_aux_loss_coef", None)
        if coef is None:
            raise ValueError(f"{type(model).__name__} returned a router loss but its config has no router_aux_loss_coef")
    return loss + coef * aux.to(loss.device) / steps


class _Run:
    """One trainer's share of a ``UALLoss``: its own running mean and its own metric window."""

    def __init__(self, alpha: float, v_max: float, window: int) -> None:
        self.smoother = PPLSmoother(alpha, v_max, window)
        self.window = torch.zeros(2, dtype=torch.float64)  # [sum of smoothing, label tokens] since the last log

    def pop_mean_smoothing(self) -> float | None:
        """Mean smoothing over the label tokens since the last call (None if there were none)."""
        total, count = (float(x) for x in self.window)
        self.window = torch.zeros_like(self.window)
        return total / count if count else None


class UALLoss:
    """PPL-mode UAL loss for ``compute_loss_func=`` on a stock ``Trainer`` or ``SFTTrainer``.

    ``compute_loss_func(outputs, labels, num_items_in_batch)`` never sees the batch, so it cannot
    read a per-sample uncertainty column: that column mode needs ``UALSFTTrainer``. Here each
    padded row is one sample; its smoothing comes from its perplexity (see module docstring).
    Returns sum of token losses / ``num_items_in_batch`` (the mean over label tokens without it).
    With padding-free packing a whole packed row counts as one sample: use ``UALSFTTrainer``.

    Each trainer that calls it gets its own running mean (so one object serves a sweep or a notebook
    of runs): at its first call it logs one ``UAL active`` line, the trainer then logs
    ``ual_smoothing`` (mean smoothing over the label tokens since the last log), and its checkpoints
    carry the running mean, which a resumed run reads back.
    """

    def __init__(self, alpha: float = DEFAULT_ALPHA, v_max: float = DEFAULT_V_MAX, ignore_index: int = -100,
                 window: int = DEFAULT_PPL_WINDOW):
        _check_alpha(alpha, v_max)
        check_ppl_window(window)
        self.alpha, self.v_max, self.window = float(alpha), float(v_max), int(window)
        self.ignore_index = ignore_index
        self.last_mean_smoothing = float("nan")
        self._runs: weakref.WeakKeyDictionary[Any, _Run] = weakref.WeakKeyDictionary()
        self._outside = _Run(self.alpha, self.v_max, self.window)  # calls made outside any trainer

    def run_of(self, trainer: Any) -> _Run:
        """The state ``trainer`` trains with (made, announced and hooked into its logs at its first call)."""
        if trainer is None:
            return self._outside
        run = self._runs.get(trainer)
        if run is None:
            run = self._runs[trainer] = self._attach(trainer)
        return run

    def _attach(self, trainer: Any) -> _Run:
        loss_type = getattr(trainer.args, "loss_type", None)
        if loss_type == "chunked_nll":
            raise ValueError(
                "compute_loss_func=ual_loss needs the model's full logits, but this SFTTrainer uses "
                "loss_type='chunked_nll' (trl 1.9's default), which never builds them. Pass "
                "SFTConfig(..., loss_type='nll'), or use UALSFTTrainer."
            )
        run = _Run(self.alpha, self.v_max, self.window)
        if trainer.state.global_step > 0:  # resumed: Trainer has restored its state from this checkpoint
            load_run_state(run.smoother, checkpoint_folder(trainer.args, trainer.state))
        # first in line, so the printing and reporting callbacks see the metric too
        trainer.callback_handler.callbacks.insert(0, _run_callback(run))
        LOG.warning(
            "UAL active: mode=ppl, alpha=%s, v_max=%s, ppl_window=%s (compute_loss_func=%s on %s); ual_smoothing is "
            "logged with the loss.", self.alpha, self.v_max, self.window, self, type(trainer).__name__,
        )
        return run

    def __call__(self, outputs: Any, labels: torch.Tensor, num_items_in_batch: Any = None) -> torch.Tensor:
        trainer = _calling_trainer()
        run = self.run_of(trainer)
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
            eps = ppl_token_smoothing(run.smoother, nll.detach(), rows, mask, update=training)
            stats = torch.stack([(eps * mask).sum().double(), mask.sum().double()])
            run.window = run.window.to(stats.device) + stats
        total = (nll + eps * margin).sum()
        n = mask.sum()
        self.last_mean_smoothing = float(stats[0] / stats[1]) if int(n) > 0 else self.last_mean_smoothing
        denom = num_items_in_batch if num_items_in_batch is not None else n.clamp(min=1)
        if isinstance(denom, torch.Tensor):
            denom = denom.to(total.device)
        return _with_router_loss(total / denom, outputs, trainer, num_items_in_batch)

    def __repr__(self) -> str:
        return f"UALLoss(alpha={self.alpha}, v_max={self.v_max}, window={self.window}, mode='ppl')"


STATE_FILE = "ual_state.json"


def checkpoint_folder(args: Any, state: Any) -> str:
    """The folder Trainer saves the checkpoint of ``state.global_step`` in."""
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    return os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")


def save_run_state(smoother: PPLSmoother, folder: str) -> None:
    """Write the PPL running mean into a checkpoint folder."""
    with open(os.path.join(folder, STATE_FILE), "w", encoding="utf-8") as f:
        json.dump({"ppl": smoother.state_dict()}, f)


def load_run_state(smoother: PPLSmoother, folder: str | None) -> bool:
    """Read the PPL running mean back from a checkpoint folder; False (with a warning) when it has none."""
    path = os.path.join(folder, STATE_FILE) if folder else None
    if path is None or not os.path.isfile(path):
        LOG.warning("UAL: %s has no %s; the PPL running mean starts afresh", folder, STATE_FILE)
        return False
    with open(path, encoding="utf-8") as f:
        smoother.load_state_dict(json.load(f)["ppl"])
    return True


def _run_callback(run: _Run) -> Any:
    """A ``TrainerCallback`` that adds ``ual_smoothing`` to a stock trainer's logs and saves the running mean."""
    from transformers import TrainerCallback

    class UALLossCallback(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
            if logs is None or "loss" not in logs:
                return
            value = run.pop_mean_smoothing()
            if value is None:
                return
            logs["ual_smoothing"] = value
            if state.log_history and state.log_history[-1].get("step") == state.global_step:
                state.log_history[-1]["ual_smoothing"] = value  # Trainer.log records the entry before callbacks run

        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            folder = checkpoint_folder(args, state)
            if state.is_world_process_zero and os.path.isdir(folder):
                save_run_state(run.smoother, folder)

    return UALLossCallback()


ual_loss = UALLoss()
"""Ready-made PPL-mode loss (alpha=0.1, v_max=0.99): ``SFTTrainer(..., compute_loss_func=ual_loss)``."""

__all__ = ["STATE_FILE", "PPLSmoother", "UALLoss", "checkpoint_folder", "load_run_state", "per_sample_ppl", "ppl_token_smoothing",
           "save_run_state", "segment_ppl", "ual_loss"]
