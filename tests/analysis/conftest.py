"""Shared fixtures for the `ual analyze` tests: tiny local models built once per session (no hub)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

_SUBJECTS = ["the cat", "a dog", "my friend", "the teacher", "a small bird", "the old man", "our team"]
_VERBS = ["sees", "likes", "finds", "paints", "helps", "follows", "answers"]
_OBJECTS = ["the red ball", "a long letter", "the river", "a blue house", "the question", "a green tree"]
_TAILS = ["today.", "at night.", "in the park.", "with care.", "again and again.", "before lunch."]


def make_texts(n: int = 72, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        s, v, o, t = (rng.choice(x) for x in (_SUBJECTS, _VERBS, _OBJECTS, _TAILS))
        out.append(f"{s.capitalize()} {v} {o} {t} Then {rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} it, {i % 10} times.")
    return out


@pytest.fixture(scope="session")
def analysis_texts() -> list[str]:
    return make_texts()


@pytest.fixture(scope="session")
def models_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("analysis_models")


@pytest.fixture(scope="session")
def tiny_model_dir(models_root, analysis_texts) -> Path:
    from ual_plugin.demo.tiny import build_tiny_llama

    return build_tiny_llama(models_root / "base", texts=analysis_texts)


@pytest.fixture(scope="session")
def perturbed_model_dir(models_root, tiny_model_dir) -> Path:
    """The tiny model with noise added to every weight (same tokenizer files)."""
    import torch
    from transformers import AutoModelForCausalLM

    out = models_root / "perturbed"
    shutil.copytree(tiny_model_dir, out)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), local_files_only=True)
    gen = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5 * p.std().nan_to_num(0.02) * torch.randn(p.shape, generator=gen))
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def lora_adapter_dir(models_root, tiny_model_dir) -> Path:
    """A LoRA adapter (q_proj, v_proj; random non-zero B so it changes the features) on the tiny model."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(7)
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), local_files_only=True)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False,
                     task_type="CAUSAL_LM")
    peft_model = get_peft_model(base, cfg)
    out = models_root / "adapter"
    peft_model.save_pretrained(out)
    cfg_path = out / "adapter_config.json"
    data = json.loads(cfg_path.read_text())
    assert Path(data["base_model_name_or_path"]) == tiny_model_dir
    return out


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir), local_files_only=True)


@pytest.fixture(scope="session")
def texts_jsonl(models_root, analysis_texts) -> Path:
    path = models_root / "texts.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in analysis_texts), encoding="utf-8")
    return path
