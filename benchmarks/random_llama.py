"""The random Llama every benchmark builds: a config from a preset's shape fields, and its dtype."""

from __future__ import annotations

from typing import Any

import torch


def preset_dtype(p: dict[str, Any]) -> torch.dtype:
    return torch.bfloat16 if p["dtype"] == "bf16" else torch.float32


def llama_config(p: dict[str, Any], max_positions: int | None = None, **overrides: Any):
    """``LlamaConfig`` with the preset's vocab / hidden / inter / layers / heads / kv_heads."""
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=p["vocab"], hidden_size=p["hidden"], intermediate_size=p["inter"],
                       num_hidden_layers=p["layers"], num_attention_heads=p["heads"],
                       num_key_value_heads=p["kv_heads"], max_position_embeddings=max_positions or 2 * p["seq"],
                       **overrides)
