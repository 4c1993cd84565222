"""Model loading and streaming collection of the features that enter the LM head.

Two passes, so memory stays bounded:

1. :func:`tokenize_texts` + :func:`plan_tokens` (tokenizer only, no model): count next-token
   frequencies, pick the most frequent tokens, and choose, per token, which positions to keep
   (all of them, or a seeded random subset of ``max_per_token``). The choice is made once and
   shared by every model, so all models are measured on the very same contexts.
2. :func:`collect_features` (per model): run only the texts that hold a chosen position, each cut
   right after its last chosen position, and copy out the hidden states at those positions.
   Memory is ``top_tokens x max_per_token x hidden`` floats, whatever the number of texts.

Position ``t``'s feature is the input of the LM head at ``t``; it is labelled with the token at
``t + 1`` (the token it predicts). Padding is never used.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ual_plugin.analysis.texts import AnalysisError

ADAPTER_CONFIG = "adapter_config.json"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


# --------------------------------------------------------------------------- model / tokenizer loading


@dataclass(frozen=True)
class ModelLocation:
    """Where a model's weights and tokenizer live. ``adapter`` is set for PEFT adapter folders."""

    path: Path  # as given
    base: Path  # folder holding the (base) model weights
    adapter: Path | None  # PEFT adapter folder, or None
    tokenizer: Path  # folder the tokenizer is loaded from


def resolve_model(path: str | Path, base: str | Path | None = None) -> ModelLocation:
    """Resolve a local HF model folder or PEFT adapter folder (``adapter_config.json``) to its parts.

    For an adapter, the base model is ``base`` when given, else the adapter's
    ``base_model_name_or_path`` (a local folder; a relative path is tried from the working
    directory, then from the adapter folder). Raises :class:`AnalysisError` when a folder is missing.
    """
    p = Path(path)
    if not p.is_dir():
        raise AnalysisError(f"model folder not found: {path} (give a local Hugging Face model or PEFT adapter folder)")
    if (p / ADAPTER_CONFIG).is_file():
        if base is not None:
            base_dir = Path(base)
            origin = "--base"
        else:
            try:
                cfg = json.loads((p / ADAPTER_CONFIG).read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise AnalysisError(f"{p / ADAPTER_CONFIG}: invalid JSON ({e.msg})") from None
            name = cfg.get("base_model_name_or_path")
            if not name:
                raise AnalysisError(
                    f"{p / ADAPTER_CONFIG} has no base_model_name_or_path; pass the base model folder with --base"
                )
            base_dir = Path(name).expanduser()
            if not base_dir.is_absolute() and not base_dir.is_dir() and (p / base_dir).is_dir():
                base_dir = p / base_dir
            origin = f"base_model_name_or_path in {p / ADAPTER_CONFIG}"
        if not base_dir.is_dir():
            raise AnalysisError(
                f"PEFT adapter {p}: base model folder not found: {base_dir} (from {origin}); "
                "the base must be a local folder, pass it with --base PATH"
            )
        if not (base_dir / "config.json").is_file():
            raise AnalysisError(f"PEFT adapter {p}: base model folder {base_dir} has no config.json")
        has_tok = any((p / f).is_file() for f in _TOKENIZER_FILES)
        return ModelLocation(path=p, base=base_dir, adapter=p, tokenizer=p if has_tok else base_dir)
    if not (p / "config.json").is_file():
        raise AnalysisError(f"{p} is neither a Hugging Face model folder (config.json) nor a PEFT adapter ({ADAPTER_CONFIG})")
    return ModelLocation(path=p, base=p, adapter=None, tokenizer=p)


def load_tokenizer(path: str | Path, base: str | Path | None = None) -> Any:
    """The tokenizer of a model folder or PEFT adapter folder (the adapter's own, else its base's)."""
    from transformers import AutoTokenizer

    loc = resolve_model(path, base)
    try:
        return AutoTokenizer.from_pretrained(str(loc.tokenizer), local_files_only=True)
    except Exception as e:
        raise AnalysisError(f"could not load a tokenizer from {loc.tokenizer}: {e}") from e


def pick_device(device: str | None = None) -> Any:
    """``device`` if given, else CUDA when available, else CPU."""
    import torch

    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pick_dtype(device: Any, dtype: str | None = None) -> Any:
    """``dtype`` if given (``float32`` / ``bfloat16`` / ``float16``), else bf16 on CUDA, float32 elsewhere."""
    import torch

    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype and dtype != "auto":
        if dtype not in names:
            raise AnalysisError(f"unknown dtype {dtype!r}; choose one of auto, float32, bfloat16, float16")
        return names[dtype]
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def load_model(path: str | Path, base: str | Path | None = None, device: Any = None, dtype: Any = None) -> Any:
    """Load a local causal LM folder, or a PEFT adapter folder on its base model, in eval mode on ``device``."""
    import torch
    from transformers import AutoModelForCausalLM

    loc = resolve_model(path, base)
    device = pick_device(device) if not isinstance(device, torch.device) else device
    if dtype is None or isinstance(dtype, str):
        dtype = pick_dtype(device, dtype)
    kwargs: dict[str, Any] = {"dtype": dtype, "local_files_only": True}
    if device.type == "cuda":
        kwargs["device_map"] = {"": str(device)}  # load straight onto the GPU
    try:
        try:
            model = AutoModelForCausalLM.from_pretrained(str(loc.base), **kwargs)
        except (ImportError, ValueError):
            if "device_map" not in kwargs:
                raise
            kwargs.pop("device_map")  # e.g. accelerate missing: load on CPU, move below
            model = AutoModelForCausalLM.from_pretrained(str(loc.base), **kwargs)
    except Exception as e:
        raise AnalysisError(f"could not load a causal LM from {loc.base}: {e}") from e
    if loc.adapter is not None:
        try:
            from peft import PeftModel
        except ImportError as e:
            raise AnalysisError(f"{loc.adapter} is a PEFT adapter: install peft to analyse it") from e
        try:
            model = PeftModel.from_pretrained(model, str(loc.adapter), is_trainable=False)
        except Exception as e:
            raise AnalysisError(f"could not apply the PEFT adapter {loc.adapter} to {loc.base}: {e}") from e
    model.to(device)
    model.eval()
    return model


def check_same_vocab(tokenizers: Mapping[str, Any]) -> None:
    """Raise :class:`AnalysisError` unless every tokenizer has the same vocabulary (token -> id)."""
    items = list(tokenizers.items())
    ref_name, ref = items[0]
    ref_vocab = ref.get_vocab()
    for name, tok in items[1:]:
        vocab = tok.get_vocab()
        if vocab != ref_vocab:
            only_ref = len(set(ref_vocab.items()) - set(vocab.items()))
            only_new = len(set(vocab.items()) - set(ref_vocab.items()))
            raise AnalysisError(
                f"models {ref_name!r} and {name!r} do not share a tokenizer vocabulary "
                f"({len(ref_vocab)} vs {len(vocab)} tokens; {only_ref} and {only_new} token->id entries differ): "
                "token features can only be compared between models with the same tokenizer"
            )


def special_token_ids(tokenizer: Any) -> set[int]:
    """Ids of the tokenizer's special tokens (bos / eos / pad / unk / added special tokens)."""
    ids = {int(i) for i in getattr(tokenizer, "all_special_ids", []) or [] if i is not None}
    for idx, tok in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
        if getattr(tok, "special", False):
            ids.add(int(idx))
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
        val = getattr(tokenizer, attr, None)
        if isinstance(val, int):
            ids.add(val)
    return ids


def token_text(tokenizer: Any, token_id: int) -> str:
    """The decoded text of one token (as it appears in text, e.g. ``' the'``)."""
    try:
        text = tokenizer.decode([int(token_id)])
    except Exception:
        text = None
    if not text:
        text = tokenizer.convert_ids_to_tokens(int(token_id)) or f"<{token_id}>"
    return text


# --------------------------------------------------------------------------- first pass: which features


def tokenize_texts(texts: Sequence[str], tokenizer: Any, max_length: int = 512) -> list[np.ndarray]:
    """Token ids of each text, cut to ``max_length``.

    Special tokens (e.g. BOS) are added as the tokenizer does by default, except to a text that
    already starts with the BOS token (chat-template output).
    """
    if max_length < 2:
        raise AnalysisError(f"max_length must be >= 2, got {max_length}")
    bos = getattr(tokenizer, "bos_token", None)
    out = []
    for text in texts:
        add_special = not (bos and text.startswith(bos))
        ids = tokenizer(text, add_special_tokens=add_special, truncation=True, max_length=max_length)["input_ids"]
        out.append(np.asarray(ids[:max_length], dtype=np.int64))
    return out


@dataclass
class TokenPlan:
    """The outcome of the tokenizer-only first pass: which tokens, and which positions, to keep.

    ``tokens``: the chosen next tokens, most frequent first. ``counts[t]``: how often ``t`` is a
    next token in the texts (each repeated context counted once when deduplicated). ``positions[t]``: ``[n, 2]`` int array of ``(text index, position)``
    whose next token is ``t`` and whose feature is kept (sorted).
    """

    sequences: list[np.ndarray]
    tokens: list[int]
    counts: dict[int, int]
    positions: dict[int, np.ndarray]
    n_positions: int = 0  # labelled positions in all texts
    n_unique: int = 0  # of which kept by the dedupe (first occurrence of a context + next token)
    excluded: list[int] = field(default_factory=list)  # ids left out of the selection (special tokens)

    def n_features(self) -> dict[int, int]:
        return {t: int(len(self.positions[t])) for t in self.tokens}


def plan_tokens(
    sequences: Sequence[np.ndarray],
    top_tokens: int = 42,
    max_per_token: int | None = 500,
    exclude: Sequence[int] | set[int] = (),
    min_count: int = 2,
    seed: int = 0,
    dedupe: bool = True,
) -> TokenPlan:
    """Pick the ``top_tokens`` most frequent next tokens and, per token, the positions to keep.

    Tokens in ``exclude`` (special tokens by default in :func:`analyze`) and tokens seen fewer than
    ``min_count`` times are not eligible. Ties in frequency go to the smaller id. When a token has
    more than ``max_per_token`` positions, a random subset is kept (``numpy`` generator seeded by
    ``seed``), so the choice is reproducible and independent of the model.

    ``dedupe`` (default): a position whose context (the tokens up to and including it) and next
    token both repeat those of a position in another text is counted and kept once. A causal model
    gives identical features for identical contexts, so repeats (a shared chat-template header, a
    shared prompt prefix) would add identical points and inflate the clustering.
    """
    if top_tokens < 2:
        raise AnalysisError(f"top_tokens must be >= 2 (a pair needs two tokens), got {top_tokens}")
    if max_per_token is not None and max_per_token < 2:
        raise AnalysisError(f"max_per_token must be >= 2, got {max_per_token}")
    seqs = [np.asarray(s, dtype=np.int64) for s in sequences]
    nxt_parts, text_parts, pos_parts = [], [], []
    for i, s in enumerate(seqs):
        if len(s) < 2:
            continue
        nxt_parts.append(s[1:])
        text_parts.append(np.full(len(s) - 1, i, dtype=np.int64))
        pos_parts.append(np.arange(len(s) - 1, dtype=np.int64))
    if not nxt_parts:
        raise AnalysisError("the texts hold no next-token positions (every text is shorter than 2 tokens)")
    nxt = np.concatenate(nxt_parts)
    text_idx = np.concatenate(text_parts)
    pos = np.concatenate(pos_parts)

    n_positions = int(len(nxt))
    if dedupe:
        # (context, next token) = the text's first pos + 2 tokens: a repeat if shared with the previous text
        keep = pos + 2 > _shared_prefix_lengths(seqs)[text_idx]
        nxt, text_idx, pos = nxt[keep], text_idx[keep], pos[keep]
    counts = np.bincount(nxt)
    excluded = sorted({int(t) for t in exclude if 0 <= int(t) < len(counts) and counts[int(t)] > 0})
    eligible = counts.copy()
    eligible[excluded] = 0
    eligible[eligible < min_count] = 0
    candidates = np.flatnonzero(eligible)
    # most frequent first, ties to the smaller id (stable sort on -count over ascending ids)
    order = candidates[np.argsort(-eligible[candidates], kind="stable")]
    chosen = [int(t) for t in order[:top_tokens]]
    if len(chosen) < 2:
        raise AnalysisError(
            f"only {len(chosen)} token(s) occur at least {min_count} times as a next token "
            "(special tokens excluded): give more or longer texts"
        )

    rng = np.random.default_rng([seed, 1])  # a stream of its own, apart from the pair sampling
    positions = {}
    for t in chosen:
        idx = np.flatnonzero(nxt == t)
        if max_per_token is not None and len(idx) > max_per_token:
            idx = np.sort(rng.choice(idx, size=max_per_token, replace=False))
        positions[t] = np.stack([text_idx[idx], pos[idx]], axis=1)
    return TokenPlan(
        sequences=seqs,
        tokens=chosen,
        counts={t: int(counts[t]) for t in chosen},
        positions=positions,
        n_positions=n_positions,
        n_unique=int(len(nxt)),
        excluded=excluded,
    )


def _shared_prefix_lengths(seqs: Sequence[np.ndarray]) -> np.ndarray:
    """Per text, how many leading tokens it shares with the text just before it in sorted order.

    Sorting the texts' token lists lexicographically puts all texts sharing a prefix next to each
    other, so the first ``k`` tokens of text ``i`` also start another text exactly when ``k`` <= this
    length (the first text of each such group, in sorted order, is the one that keeps them).
    """
    order = sorted(range(len(seqs)), key=lambda i: seqs[i].tolist())
    lcp = np.zeros(len(seqs), dtype=np.int64)
    for prev, cur in zip(order, order[1:], strict=False):
        a, b = seqs[prev], seqs[cur]
        n = min(len(a), len(b))
        diff = np.flatnonzero(a[:n] != b[:n])
        lcp[cur] = diff[0] if len(diff) else n
    return lcp


# --------------------------------------------------------------------------- second pass: the features


class _Captured(Exception):
    """Raised from the LM-head pre-hook to stop the forward once its input is captured."""


def _output_head(model: Any) -> Any:
    try:
        return model.get_output_embeddings()
    except Exception:
        return None


def _accepts(model: Any, name: str) -> bool:
    import inspect

    target = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        return name in inspect.signature(target.forward).parameters
    except (TypeError, ValueError):
        return False


def lm_head_inputs(model: Any, input_ids: Any, attention_mask: Any) -> Any:
    """``[batch, seq, hidden]`` input of the model's LM head (the final, post-norm hidden states).

    A pre-hook on ``model.get_output_embeddings()`` captures the head's input and stops the
    forward there, so no logits are computed. Models without a usable head module fall back to
    the last entry of ``output_hidden_states`` (with ``logits_to_keep=1`` where supported).
    """
    head = _output_head(model)
    seq_len = input_ids.shape[1]
    if head is not None:
        store: dict[str, Any] = {}

        def pre_hook(module, args, kwargs):
            x = args[0] if args else kwargs.get("input", kwargs.get("hidden_states"))
            store["h"] = x
            raise _Captured

        handle = head.register_forward_pre_hook(pre_hook, with_kwargs=True)
        try:
            model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        except _Captured:
            pass
        finally:
            handle.remove()
        h = store.get("h")
        if h is not None and h.dim() == 3 and h.shape[1] == seq_len:
            return h
    kwargs = {"logits_to_keep": 1} if _accepts(model, "logits_to_keep") else {}
    out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                output_hidden_states=True, **kwargs)
    return out.hidden_states[-1]


def collect_features(
    model: Any,
    plan: TokenPlan,
    batch_size: int = 8,
    pad_token_id: int | None = 0,
    progress: bool = True,
    desc: str | None = None,
) -> dict[int, np.ndarray]:
    """Run the planned texts through ``model`` and return ``{token: float32 [n_token, hidden]}``.

    Only texts holding a planned position are run, longest first, in batches of ``batch_size``,
    right-padded with an attention mask and cut after their last planned position (causal
    attention makes later tokens irrelevant). Row ``k`` of ``result[t]`` is the feature at
    ``plan.positions[t][k]``.
    """
    import torch
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise AnalysisError(f"batch_size must be >= 1, got {batch_size}")
    # text index -> (positions, tokens, row in that token's array)
    needed: dict[int, list[tuple[int, int, int]]] = {}
    for t in plan.tokens:
        for row, (ti, p) in enumerate(plan.positions[t]):
            needed.setdefault(int(ti), []).append((int(p), t, row))
    cut = {ti: max(p for p, _, _ in items) + 1 for ti, items in needed.items()}
    order = sorted(needed, key=lambda ti: (-cut[ti], ti))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]

    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    pad = 0 if pad_token_id is None else int(pad_token_id)
    feats: dict[int, np.ndarray] = {}

    with torch.inference_mode():
        for batch in tqdm(batches, desc=desc or "features", unit="batch", disable=not progress):
            width = max(cut[ti] for ti in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for b, ti in enumerate(batch):
                seq = torch.as_tensor(plan.sequences[ti][: cut[ti]], dtype=torch.long)
                ids[b, : len(seq)] = seq
                mask[b, : len(seq)] = 1
            hidden = lm_head_inputs(model, ids.to(device), mask.to(device))
            b_idx, p_idx, toks, rows = [], [], [], []
            for b, ti in enumerate(batch):
                for p, t, row in needed[ti]:
                    b_idx.append(b)
                    p_idx.append(p)
                    toks.append(t)
                    rows.append(row)
            picked = hidden[torch.tensor(b_idx, device=hidden.device), torch.tensor(p_idx, device=hidden.device)]
            picked = picked.float().cpu().numpy()
            if not feats:
                feats = {t: np.empty((len(plan.positions[t]), picked.shape[1]), dtype=np.float32) for t in plan.tokens}
            toks_arr, rows_arr = np.asarray(toks), np.asarray(rows)
            for t in set(toks):
                sel = toks_arr == t
                feats[t][rows_arr[sel]] = picked[sel]
            del hidden, picked
    return feats


def release_memory() -> None:
    """Collect garbage and give cached GPU memory back (call after dropping a model)."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:
        pass
