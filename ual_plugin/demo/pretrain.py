"""Stage 0: pre-train the tiny model on everything the world states (plain next-token loss, all tokens)."""

from __future__ import annotations

import random
from pathlib import Path

from ual_plugin.demo.world import World, pretraining_texts


def encode(tokenizer, text: str, messages: list[dict] | None) -> list[int]:
    if messages is not None:
        return list(tokenizer.apply_chat_template(messages, return_dict=True)["input_ids"])
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) + [tokenizer.eos_token_id]


def pretrain(model_dir: Path, world: World, steps: int, batch_size: int, learning_rate: float, seed: int) -> Path:
    """Train the saved random model in ``model_dir`` for ``steps`` on fresh stage-0 batches; save it back."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rng = random.Random(seed + 31)
    cache: dict[str, list[int]] = {}  # the stream repeats its items: encode each once

    def enc(text: str, messages: list[dict] | None) -> list[int]:
        key = text if messages is None else "\x00".join(m["content"] for m in messages)
        if key not in cache:
            cache[key] = encode(tokenizer, text, messages)
        return cache[key]

    opt = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        seqs = [enc(t, m) for t, m in pretraining_texts(world, batch_size, rng)]
        width = max(map(len, seqs))
        ids = torch.full((len(seqs), width), tokenizer.pad_token_id)
        labels = torch.full((len(seqs), width), -100)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
            labels[i, : len(s)] = torch.tensor(s)
        loss = model(input_ids=ids, attention_mask=(labels != -100).long(), labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.save_pretrained(model_dir)
    return model_dir
