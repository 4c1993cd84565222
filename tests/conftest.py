"""Shared fixtures: a tiny Llama and tokenizer built locally (no hub), once per test session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_DISABLED", "true")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("AXOLOTL_DO_NOT_TRACK", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """Path of a saved random tiny LlamaForCausalLM with a trained BPE tokenizer and chat template."""
    pytest.importorskip("transformers")
    from ual_plugin.demo.tiny import build_tiny_llama

    texts = [f"Sample {i}: what is {i} plus {i}? It is {2 * i}." for i in range(50)]
    return build_tiny_llama(tmp_path_factory.mktemp("tiny_llama"), texts=texts)
