"""An Axolotl plugin used by ``axolotl_step_bench.py``: wall time and peak memory of every training step.

    plugins:
      - axolotl_step_timer.StepTimerPlugin   # with benchmarks/ on PYTHONPATH

It adds a ``TrainerCallback`` (through ``add_callbacks_post_trainer``) that times each optimizer step
from ``on_step_begin`` to ``on_step_end`` (forward, backward, clipping, optimizer update; the batch is
already fetched, logging comes after), with ``torch.cuda.synchronize()`` at both ends on a GPU.
From the first measured step on (after ``$AXOLOTL_STEP_TIMER_WARMUP`` steps) it tracks peak memory:
``torch.cuda.max_memory_allocated()`` on a GPU, else the process's peak RSS (``VmHWM``, reset through
``/proc/self/clear_refs``), read at the end of every measured step (Axolotl's logging, which runs after
``on_step_end``, resets the CUDA peak counters). At the end of training it writes JSON to
``$AXOLOTL_STEP_TIMER_OUT``, also naming the trainer class and where the model's ``forward`` comes from
(Liger patches it). The plugin does nothing when that variable is unset.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import torch
from axolotl.integrations.base import BasePlugin
from peak_memory import reset_cpu_peak, status_bytes
from transformers import TrainerCallback

OUT_ENV = "AXOLOTL_STEP_TIMER_OUT"
WARMUP_ENV = "AXOLOTL_STEP_TIMER_WARMUP"


class _Memory:
    """Peak memory since ``reset()``: CUDA allocator peak on a GPU, else the process's peak RSS."""

    def __init__(self) -> None:
        self.cuda = torch.cuda.is_available()
        self.kind = "torch.cuda.max_memory_allocated" if self.cuda else "VmHWM (peak RSS)"

    def current(self) -> int:
        return torch.cuda.memory_allocated() if self.cuda else status_bytes("VmRSS")

    def reset(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        else:
            reset_cpu_peak()

    def peak(self) -> int:
        return torch.cuda.max_memory_allocated() if self.cuda else status_bytes("VmHWM")


def lm_forward(model: Any) -> str:
    """Where the causal LM's ``forward`` comes from (a loss plugin such as Liger's patches it)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    forward = type(base).forward
    return f"{forward.__module__}.{forward.__qualname__}"


class StepTimerCallback(TrainerCallback):
    def __init__(self, path: str, warmup: int, trainer_cls: str, forward: str) -> None:
        self.path = path
        self.warmup = warmup
        self.trainer_cls = trainer_cls
        self.forward = forward
        self.memory = _Memory()
        self.step_seconds: list[float] = []
        self.start_bytes: int | None = None
        self.peak_bytes = 0
        self._t0 = 0.0

    def _sync(self) -> None:
        if self.memory.cuda:
            torch.cuda.synchronize()

    def on_step_begin(self, args, state, control, **kwargs):
        self._sync()
        if len(self.step_seconds) == self.warmup:
            self.start_bytes = self.memory.current()
            self.memory.reset()
        self._t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self._sync()
        self.step_seconds.append(time.perf_counter() - self._t0)
        if len(self.step_seconds) > self.warmup:
            self.peak_bytes = max(self.peak_bytes, self.memory.peak())

    def on_train_end(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        result: dict[str, Any] = {
            "trainer_cls": self.trainer_cls,
            "lm_forward": self.forward,
            "warmup": self.warmup,
            "step_seconds": self.step_seconds,
            "memory_kind": self.memory.kind,
            "start_bytes": self.start_bytes,
            "peak_bytes": self.peak_bytes,
        }
        with open(self.path, "w", encoding="utf-8") as f:
            json.dump(result, f)


class StepTimerPlugin(BasePlugin):
    """Adds ``StepTimerCallback`` when ``$AXOLOTL_STEP_TIMER_OUT`` is set."""

    def add_callbacks_post_trainer(self, cfg, trainer):
        path = os.environ.get(OUT_ENV)
        if not path:
            return []
        warmup = int(os.environ.get(WARMUP_ENV, "1"))
        return [StepTimerCallback(path, warmup, type(trainer).__name__, lm_forward(trainer.model))]


__all__ = ["OUT_ENV", "WARMUP_ENV", "StepTimerCallback", "StepTimerPlugin", "lm_forward"]
