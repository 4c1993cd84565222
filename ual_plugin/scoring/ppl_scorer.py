"""``--scorer ppl``: uncertainty = the response's perplexity under a local causal LM (no API).

exp(mean next-token NLL) over the response tokens only (every assistant turn; the whole text for the
``text`` layout), computed by the training code's own chunked head (never the ``[tokens, vocab]``
logits). The scale is perplexity (>= 1). Under ``torchrun`` / ``accelerate launch`` each process
scores its share of the batches and the first process writes every result to the one cache.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ual_plugin.scoring.cache import ScoreCache
from ual_plugin.scoring.client import RunStats
from ual_plugin.scoring.layouts import LABELS


@dataclass
class Encoded:
    ids: list[int]
    targets: list[bool]  # targets[t]: token t is a response token (is predicted from t-1)


def _segments_chat_template(tok: Any, conv: Sequence[dict[str, str]]) -> list[tuple[str, bool]] | None:
    """Text pieces (text, is_response) whose concatenation is the chat-template rendering, or None."""
    msgs = [{"role": m["role"] if m["role"] in LABELS else "user", "content": m["content"]} for m in conv]
    if msgs[0]["role"] == "assistant":
        return None
    pieces: list[tuple[str, bool]] = []
    done = ""
    try:
        for k, m in enumerate(msgs):
            full = tok.apply_chat_template(msgs[: k + 1], tokenize=False)
            head = tok.apply_chat_template(msgs[:k], tokenize=False, add_generation_prompt=True) \
                if m["role"] == "assistant" else done
            if not (head.startswith(done) and full.startswith(head)):
                return None
            pieces += [(head[len(done):], False), (full[len(head):], m["role"] == "assistant")]
            done = full
    except Exception:  # a template that rejects a role order or a system turn
        return None
    return pieces


def encode_conversation(tok: Any, conv: Sequence[dict[str, str]], max_length: int) -> Encoded:
    """Token ids and the response-token mask for one sample (right-truncated to ``max_length``)."""
    if len(conv) == 1 and conv[0]["role"] == "text":
        ids = tok(conv[0]["content"], add_special_tokens=True)["input_ids"][:max_length]
        return Encoded(ids, [i > 0 for i in range(len(ids))])
    pieces = _segments_chat_template(tok, conv) if getattr(tok, "chat_template", None) else None
    if pieces is None:  # no usable chat template: "Label: text" turns
        pieces = [(tok.bos_token, False)] if tok.bos_token and getattr(tok, "add_bos_token", False) else []
        for m in conv:
            label = LABELS.get(m["role"], m["role"].title())
            pieces += [(f"{label}: ", False), (m["content"] + (tok.eos_token or "") + "\n\n", True)] \
                if m["role"] == "assistant" else [(f"{label}: {m['content']}\n\n", False)]
    ids: list[int] = []
    targets: list[bool] = []
    for text, is_response in pieces:
        piece = tok(text, add_special_tokens=False)["input_ids"] if text else []
        ids += piece
        targets += [is_response] * len(piece)
    ids, targets = ids[:max_length], targets[:max_length]
    if targets:
        targets[0] = False  # nothing predicts the first token
    return Encoded(ids, targets)


def model_fingerprint(path: str) -> str:
    """Path plus size/mtime of the config and weight files: a retrained model at the same path re-scores."""
    p = Path(path)
    if not p.is_dir():
        return path
    parts = [str(p.resolve())] + [f"{f.name}:{f.stat().st_size}:{int(f.stat().st_mtime)}" for f in sorted(p.iterdir())
                                  if f.suffix in (".json", ".safetensors", ".bin") and f.is_file()]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def response_perplexities(model: Any, batch: Sequence[Encoded], pad_id: int) -> list[float]:
    """exp(mean NLL) over each sample's response targets, for one right-padded batch (no grad): the
    backbone's hidden states through :func:`~ual_plugin.loss.linear_smoothed_cross_entropy` (chunked)."""
    import torch

    from ual_plugin.causal_lm import logit_transform
    from ual_plugin.loss import linear_smoothed_cross_entropy
    from ual_plugin.ppl import per_sample_ppl

    device = next(model.parameters()).device
    width = max(len(e.ids) for e in batch)
    ids = torch.tensor([e.ids + [pad_id] * (width - len(e.ids)) for e in batch], device=device)
    attn = torch.tensor([[1] * len(e.ids) + [0] * (width - len(e.ids)) for e in batch], device=device)
    # the hidden state at position t predicts token t + 1; prompt tokens and padding are ignored targets
    targets = torch.tensor([[t if keep else -100 for t, keep in zip(e.ids[1:], e.targets[1:], strict=True)]
                            + [-100] * (width - len(e.ids) + 1) for e in batch], device=device)
    head = model.get_output_embeddings()
    softcap, scale = logit_transform(model)
    with torch.no_grad():
        hidden = model.base_model(input_ids=ids, attention_mask=attn).last_hidden_state
        nll = linear_smoothed_cross_entropy(hidden, head.weight, targets, 0.0, bias=getattr(head, "bias", None),
                                            reduction="none", softcap=softcap, logit_scale=scale)
        segments = torch.arange(len(batch), device=device)[:, None].expand_as(targets)
        ppl, _ = per_sample_ppl(nll.float().reshape(-1), segments.reshape(-1), (targets != -100).reshape(-1))
    return [float(x) for x in ppl.double()]


def launch_state(device: str | None = None) -> Any:
    """accelerate's ``PartialState`` when started by ``torchrun`` / ``accelerate launch`` with several
    processes, else None (one process). On CPU (``--device cpu``, or no accelerator) the processes
    join over gloo."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    try:
        import torch
        from accelerate import PartialState
    except ImportError as err:
        raise RuntimeError("--scorer ppl on several processes needs accelerate (pip install accelerate)") from err
    accelerator = getattr(torch, "accelerator", None)  # torch >= 2.6; CUDA alone before
    has_accelerator = accelerator.is_available() if accelerator is not None else torch.cuda.is_available()
    cpu = device == "cpu" or (device in (None, "auto") and not has_accelerator)
    state = PartialState(cpu=cpu)
    if state.num_processes != world:  # each process would score every row
        raise RuntimeError(f"--scorer ppl: the launch started {world} processes, but accelerate joined "
                           f"{state.num_processes}; check the launcher's settings (e.g. `accelerate launch --cpu` on a "
                           "machine without GPUs)")
    state.wait_for_everyone()  # every process has read the cache before the first one writes to it
    return state


def load_model(path: str, device: str | None = None) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    local = os.path.isdir(path)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if device in (None, "auto") else device
    dtype = torch.bfloat16 if device.startswith("cuda") and torch.cuda.is_bf16_supported() else torch.float32
    tok = AutoTokenizer.from_pretrained(path, local_files_only=local)
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=local, dtype=dtype)
    return model.to(device).eval(), tok


def score_ppl(jobs: Sequence[tuple[str, Sequence[dict[str, str]]]], opts: Any, cache: ScoreCache,
              scorer_name: str) -> RunStats:
    """Perplexity of every ``(key, conversation)`` job, appended to ``cache`` batch by batch.

    On several processes every one sees the same jobs (the cache was read before any of them wrote),
    scores batches ``rank, rank + world, ...`` and, after each round, every process gets the round's
    results; the cache on the first process is the only one that writes them.
    """
    from tqdm.auto import tqdm

    state = launch_state(opts.device)
    rank, world = (state.process_index, state.num_processes) if state is not None else (0, 1)
    device = opts.device if state is None or opts.device not in (None, "auto") else str(state.device)
    stats = RunStats()
    model, tok = load_model(opts.model, device)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    encoded: list[tuple[str, Encoded]] = []
    for key, conv in jobs:
        enc = encode_conversation(tok, conv, opts.max_length)
        if any(enc.targets):
            encoded.append((key, enc))
            continue
        stats.failures[key] = (f"no response tokens within --max-length {opts.max_length}"
                               if len(enc.ids) >= opts.max_length else "no response tokens")
        cache.add_failure(key, 0, stats.failures[key], scorer=scorer_name)
    encoded.sort(key=lambda kv: len(kv[1].ids))  # similar lengths per batch: less padding
    size = opts.ppl_batch_size
    batches = [encoded[start: start + size] for start in range(0, len(encoded), size)]
    if state is not None:
        print(f"perplexity: process {rank} of {world} scores {len(batches[rank::world])} of {len(batches)} batches",
              file=sys.stderr, flush=True)
    with tqdm(total=len(encoded), unit="sample", desc="perplexity", disable=not opts.show_progress or rank != 0,
              dynamic_ncols=True) as bar:
        for first in range(0, len(batches), world):
            mine = batches[first + rank] if first + rank < len(batches) else []
            done = [(key, ppl, len(enc.ids), sum(enc.targets)) for (key, enc), ppl in
                    zip(mine, response_perplexities(model, [e for _, e in mine], pad_id) if mine else [], strict=True)]
            if state is not None:
                from accelerate.utils import gather_object

                done = gather_object(done)
            for key, ppl, n_tokens, n_response in done:
                stats.replies += 1
                stats.tokens_in += n_tokens
                cache.add_reply(key, 0, score=ppl, scorer=scorer_name, model=opts.model,
                                n_tokens=n_tokens, n_response_tokens=n_response)
            bar.update(len(done))
    return stats
