"""Test-only Axolotl plugin: lets DDP run on a machine without a GPU.

Axolotl 0.19's ``normalize_config`` sets ``device_map = {"": LOCAL_RANK}`` whenever WORLD_SIZE > 1,
and transformers reads an integer device as a CUDA index, so a CPU-only DDP run fails while loading
the model ("Cannot access accelerator device when none is available"). The ``load_datasets`` hook
is the first plugin hook that sees the normalised config (and returns None, so Axolotl loads the
datasets as usual); it points the model at the CPU instead. Not part of the product.
"""

from __future__ import annotations

import torch
from axolotl.integrations.base import BasePlugin


class CPUDeviceMap(BasePlugin):
    def load_datasets(self, cfg, preprocess=False):
        if not torch.cuda.is_available() and isinstance(cfg.device_map, dict):
            cfg.device_map = "cpu"
        return None
