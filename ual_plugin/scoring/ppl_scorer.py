"""``--scorer ppl``: uncertainty = the response's perplexity under a local causal LM (no API).

exp(mean next-token NLL) over the response tokens only (every assistant turn; the whole text for the
``text`` layout), computed by the training code's own functions. The scale is perplexity (>= 1).
"""

from __future__ import annotations

import hashlib
import os
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
    """exp(mean NLL) over each sample's response targets, for one right-padded batch (no grad), through
    training's :func:`~ual_plugin.loss.token_nll_and_margin` and :func:`~ual_plugin.ppl.per_sample_ppl`."""
    import torch

    from ual_plugin.loss import token_nll_and_margin
    from ual_plugin.ppl import per_sample_ppl

    device = next(model.parameters()).device
    width = max(len(e.ids) for e in batch)
    ids = torch.tensor([e.ids + [pad_id] * (width - len(e.ids)) for e in batch])
    attn = torch.tensor([[1] * len(e.ids) + [0] * (width - len(e.ids)) for e in batch])
    nlls, segments, masks = [], [], []
    with torch.no_grad():
        logits = model(input_ids=ids.to(device), attention_mask=attn.to(device)).logits
        for b, e in enumerate(batch):  # one sample at a time: no float32 copy of the whole [B, T, V]
            # the logits at position t predict token t + 1; prompt tokens are ignored targets
            targets = torch.tensor([t if keep else -100 for t, keep in zip(e.ids[1:], e.targets[1:], strict=True)],
                                   device=logits.device)
            nll, _, valid = token_nll_and_margin(logits[b, : len(e.ids) - 1], targets)
            nlls.append(nll)
            masks.append(valid)
            segments.append(torch.full_like(targets, b))
        ppl, _ = per_sample_ppl(torch.cat(nlls), torch.cat(segments), torch.cat(masks))
    return [float(x) for x in ppl.double()]


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
    """Perplexity of every ``(key, conversation)`` job, appended to ``cache`` batch by batch."""
    from tqdm.auto import tqdm

    stats = RunStats()
    model, tok = load_model(opts.model, opts.device)
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
    with tqdm(total=len(encoded), unit="sample", desc="perplexity", disable=not opts.show_progress,
              dynamic_ncols=True) as bar:
        for start in range(0, len(encoded), size):
            chunk = encoded[start: start + size]
            for (key, enc), ppl in zip(chunk, response_perplexities(model, [e for _, e in chunk], pad_id),
                                       strict=True):
                stats.replies += 1
                stats.tokens_in += len(enc.ids)
                cache.add_reply(key, 0, score=ppl, scorer=scorer_name, model=opts.model,
                                n_tokens=len(enc.ids), n_response_tokens=sum(enc.targets))
            bar.update(len(chunk))
    return stats
