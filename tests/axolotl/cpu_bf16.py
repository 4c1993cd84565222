"""Test-only Axolotl plugin: lets ``bf16: true`` train on a machine without a GPU, and shows that it does.

Axolotl has no ``use_cpu`` option, and transformers' ``TrainingArguments`` refuses bf16 without a
bf16 GPU unless ``use_cpu`` is set ("Your setup doesn't support bf16/gpu. You need to assign
use_cpu if you want to train the model on CPU."). This plugin adds ``use_cpu=True`` to the
training arguments when no GPU is present; accelerate then runs the forward under CPU bf16
autocast. It prints, once, whether autocast was on when the LM head ran. Not part of the product.
"""

from __future__ import annotations

import torch
from axolotl.integrations.base import BasePlugin

PROBE = "cpu_bf16 probe: LM head ran with CPU autocast"


class UseCPU(BasePlugin):
    def get_training_args(self, cfg):
        return None if torch.cuda.is_available() else {"use_cpu": True}

    def post_trainer_create(self, cfg, trainer):
        head = trainer.model.get_output_embeddings()
        seen: list[bool] = []

        def report(module, args):
            if not seen:
                seen.append(True)
                dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
                print(f"{PROBE}: {torch.is_autocast_enabled('cpu')}, dtype {dtype}", flush=True)

        head.register_forward_pre_hook(report)
