"""``--scorer ppl``: uncertainty = the response's perplexity under a local causal LM (no API).

Perplexity = exp(mean next-token NLL over the *response* tokens only): the logits at position t
predict token t+1, prompt tokens (system / user turns and the assistant header the chat template
adds) are never targets, and every assistant turn of a multi-turn conversation counts. For the
``text`` layout, which has no prompt/response split, the whole text is the response.

The value is on the perplexity scale (>= 1), not the 0-99 prompt scale; the smoothing map only
needs non-negative numbers, so it can be used directly. As in training's PPL mode, perplexities are
capped at exp(30).
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ual_plugin.scoring.cache import ScoreCache
from ual_plugin.scoring.client import RunStats


@dataclass
class Encoded:
    ids: list[int]
    targets: list[bool]  # targets[t]: token t is a response token (is predicted from t-1)


_PLAIN_LABELS = {"system": "System", "user": "User", "assistant": "Assistant"}


def _template_roles(conv: Sequence[dict[str, str]]) -> list[dict[str, str]]:
    roles = ("system", "user", "assistant")
    return [{"role": m["role"] if m["role"] in roles else "user", "content": m["content"]} for m in conv]


def _segments_chat_template(tok: Any, conv: Sequence[dict[str, str]]) -> list[tuple[str, bool]] | None:
    """Text pieces (text, is_response) whose concatenation is the chat-template rendering, or None."""
    msgs = _template_roles(conv)
    if msgs[0]["role"] == "assistant":
        return None
    pieces: list[tuple[str, bool]] = []
    done = ""
    try:
        for k, m in enumerate(msgs):
            full = tok.apply_chat_template(msgs[: k + 1], tokenize=False)
            if m["role"] == "assistant":
                head = tok.apply_chat_template(msgs[:k], tokenize=False, add_generation_prompt=True)
                if not (head.startswith(done) and full.startswith(head)):
                    return None
                pieces += [(head[len(done):], False), (full[len(head):], True)]
            else:
                if not full.startswith(done):
                    return None
                pieces.append((full[len(done):], False))
            done = full
    except Exception:  # a template that rejects a role order or a system turn
        return None
    return pieces


def _segments_plain(conv: Sequence[dict[str, str]], eos: str) -> list[tuple[str, bool]]:
    pieces = []
    for m in conv:
        label = _PLAIN_LABELS.get(m["role"], m["role"].title())
        if m["role"] == "assistant":
            pieces += [(f"{label}: ", False), (m["content"] + eos + "\n\n", True)]
        else:
            pieces.append((f"{label}: {m['content']}\n\n", False))
    return pieces


def encode_conversation(tok: Any, conv: Sequence[dict[str, str]], max_length: int) -> Encoded:
    """Token ids and the response-token mask for one sample (right-truncated to ``max_length``)."""
    if len(conv) == 1 and conv[0]["role"] == "text":
        ids = tok(conv[0]["content"], add_special_tokens=True)["input_ids"][:max_length]
        return Encoded(ids, [i > 0 for i in range(len(ids))])
    pieces = None
    if getattr(tok, "chat_template", None):
        pieces = _segments_chat_template(tok, conv)
    if pieces is None:
        pieces = _segments_plain(conv, tok.eos_token or "")
        if tok.bos_token and getattr(tok, "add_bos_token", False):
            pieces.insert(0, (tok.bos_token, False))
    ids: list[int] = []
    targets: list[bool] = []
    for text, is_response in pieces:
        if not text:
            continue
        piece = tok(text, add_special_tokens=False)["input_ids"]
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
    parts = [str(p.resolve())]
    for f in sorted(p.iterdir()):
        if f.suffix in (".json", ".safetensors", ".bin") and f.is_file():
            st = f.stat()
            parts.append(f"{f.name}:{st.st_size}:{int(st.st_mtime)}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def response_perplexities(model: Any, batch: Sequence[Encoded], pad_id: int) -> list[float]:
    """exp(mean NLL) over each sample's response targets, for one right-padded batch (no grad).

    The per-token NLL and the per-sample perplexity are the training code's own
    (:func:`ual_plugin.loss.token_nll_and_margin`, :func:`ual_plugin.ppl.per_sample_ppl`).
    """
    import torch

    from ual_plugin.loss import token_nll_and_margin
    from ual_plugin.ppl import per_sample_ppl

    device = next(model.parameters()).device
    width = max(len(e.ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(batch), width), dtype=torch.long)
    for b, e in enumerate(batch):
        ids[b, : len(e.ids)] = torch.tensor(e.ids)
        attn[b, : len(e.ids)] = 1
    nlls, segments, masks = [], [], []
    with torch.no_grad():
        logits = model(input_ids=ids.to(device), attention_mask=attn.to(device)).logits
        for b, e in enumerate(batch):  # one sample at a time: no float32 copy of the whole [B, T, V]
            n = len(e.ids)
            # shift: the logits at position t predict token t + 1; prompt tokens are ignored targets
            targets = torch.tensor([t if keep else -100 for t, keep in zip(e.ids[1:], e.targets[1:], strict=True)],
                                   device=logits.device)
            nll, _, valid = token_nll_and_margin(logits[b, : n - 1], targets)
            nlls.append(nll)
            masks.append(valid)
            segments.append(torch.full_like(targets, b))
        ppl, _ = per_sample_ppl(torch.cat(nlls), torch.cat(segments), torch.cat(masks))
    return [float(x) for x in ppl.double()]


def load_model(path: str, device: str | None = None) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    local = os.path.isdir(path)
    if device in (None, "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device.startswith("cuda") and torch.cuda.is_bf16_supported() else torch.float32
    tok = AutoTokenizer.from_pretrained(path, local_files_only=local)
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=local, dtype=dtype)
    model.to(device).eval()
    return model, tok


def score_ppl(jobs: Sequence[tuple[str, Sequence[dict[str, str]]]], opts: Any, cache: ScoreCache,
              scorer_name: str) -> RunStats:
    """Perplexity of every ``(key, conversation)`` job, appended to ``cache`` batch by batch."""
    from tqdm.auto import tqdm

    stats = RunStats()
    t0 = time.monotonic()
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
    disable = (not sys.stderr.isatty()) if opts.progress is None else not opts.progress
    size = opts.ppl_batch_size
    with tqdm(total=len(encoded), unit="sample", desc="perplexity", disable=disable, dynamic_ncols=True) as bar:
        for start in range(0, len(encoded), size):
            chunk = encoded[start: start + size]
            for (key, enc), ppl in zip(chunk, response_perplexities(model, [e for _, e in chunk], pad_id),
                                       strict=True):
                stats.replies += 1
                stats.tokens_in += len(enc.ids)
                cache.add_reply(key, 0, score=ppl, scorer=scorer_name, model=opts.model,
                                n_tokens=len(enc.ids), n_response_tokens=sum(enc.targets))
            bar.update(len(chunk))
    stats.elapsed = time.monotonic() - t0
    return stats
