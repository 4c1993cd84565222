"""Shared fixtures: a tiny Llama and tokenizer built locally (no hub), once per test session."""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_DISABLED", "true")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("AXOLOTL_DO_NOT_TRACK", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def _load_triton_interpreter() -> bool:
    """Without a GPU, decorate Triton's language and our kernel under its CPU interpreter.

    The interpreter is chosen when ``triton`` is first imported, so this runs before any test module
    imports it; the variable is removed again so subprocesses (the Axolotl CLI runs) never see it.
    Tests that launch the kernel set ``TRITON_INTERPRET=1`` for their own duration.
    """
    if importlib.util.find_spec("triton") is None or "triton" in sys.modules:
        return False
    import torch

    if torch.cuda.is_available():
        return False
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        import ual_plugin.loss_triton  # noqa: F401
    finally:
        del os.environ["TRITON_INTERPRET"]
    return True


TRITON_INTERPRETED = _load_triton_interpreter()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """Path of a saved random tiny LlamaForCausalLM with a trained BPE tokenizer and chat template."""
    pytest.importorskip("transformers")
    from ual_plugin.demo.tiny import build_tiny_llama

    texts = [f"Sample {i}: what is {i} plus {i}? It is {2 * i}." for i in range(50)]
    return build_tiny_llama(tmp_path_factory.mktemp("tiny_llama"), texts=texts)
