"""`analyze`: the whole measurement (texts -> features -> pair silhouettes -> JSON and plots)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ual_plugin.analysis.features import (
    TokenPlan,
    check_same_vocab,
    collect_features,
    load_model,
    load_tokenizer,
    pick_device,
    pick_dtype,
    plan_tokens,
    release_memory,
    resolve_model,
    special_token_ids,
    token_text,
    tokenize_texts,
)
from ual_plugin.analysis.silhouette import project_pair, sample_pairs, silhouette, summarize
from ual_plugin.analysis.texts import AnalysisError, as_texts


@dataclass
class PairResult:
    tokens: tuple[int, int]
    silhouette: float

    def to_dict(self) -> dict[str, Any]:
        return {"tokens": [int(self.tokens[0]), int(self.tokens[1])], "silhouette": float(self.silhouette)}


@dataclass
class ModelResult:
    """One model's scores. ``projections[pair] = (points [n, 2], labels [n])`` for the plotted pairs."""

    name: str
    path: str
    pairs: list[PairResult]
    projections: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = field(default_factory=dict, repr=False)

    @property
    def values(self) -> list[float]:
        return [p.silhouette for p in self.pairs]

    @property
    def mean(self) -> float:
        return float(summarize(self.values)["mean"])

    @property
    def std(self) -> float:
        return float(summarize(self.values)["std"])

    @property
    def n_pairs(self) -> int:
        return len(self.pairs)

    def to_dict(self) -> dict[str, Any]:
        """``{"mean", "std", "n_pairs", "pairs": [{"tokens", "silhouette"}]}`` (the silhouette.json entry)."""
        return {**summarize(self.values), "pairs": [p.to_dict() for p in self.pairs]}


@dataclass
class AnalysisResult:
    config: dict[str, Any]
    pairs: list[tuple[int, int]]
    token_labels: dict[int, str]
    models: list[ModelResult]

    def __getitem__(self, name: str) -> ModelResult:
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """The content of ``silhouette.json``: ``{"<model name>": {...}, ...}``, one entry per model only."""
        return {m.name: m.to_dict() for m in self.models}

    def table(self) -> str:
        """A short plain-text table: model, mean, std, n_pairs."""
        width = max([5] + [len(m.name) for m in self.models])
        lines = [f"{'model':<{width}}  {'mean':>8}  {'std':>8}  {'n_pairs':>7}"]
        for m in self.models:
            lines.append(f"{m.name:<{width}}  {m.mean:>8.4f}  {m.std:>8.4f}  {m.n_pairs:>7d}")
        return "\n".join(lines)


def _model_names(models: Sequence[str | Path], names: Sequence[str] | None) -> list[str]:
    if names is not None:
        names = [str(n) for n in names]
        if len(names) != len(models):
            raise AnalysisError(f"{len(names)} name(s) given for {len(models)} model(s)")
    else:
        names = [str(m) for m in models]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise AnalysisError(f"model name {dup!r} is used twice; give distinct names (--names)")
    return names


def score_features(
    name: str,
    features_by_token: Mapping[int, np.ndarray],
    pairs: Sequence[tuple[int, int]],
    plot_pairs: Sequence[tuple[int, int]] = (),
    n_components: int | None = 2,
    path: str = "",
) -> ModelResult:
    """Silhouette of every pair for one model's features; keeps the 2-D points of ``plot_pairs``."""
    keep = set(plot_pairs)
    results, projections = [], {}
    for a, b in pairs:
        if a not in features_by_token or b not in features_by_token:
            raise AnalysisError(f"{name}: no features for a token of pair {(a, b)}")
        points, labels = project_pair(features_by_token[a], features_by_token[b], n_components)
        results.append(PairResult((a, b), silhouette(points, labels)))
        if (a, b) in keep:
            if n_components != 2:  # the plots are always 2-D PCA
                points, labels = project_pair(features_by_token[a], features_by_token[b], 2)
            projections[(a, b)] = (points.astype(np.float32), labels)
    return ModelResult(name=name, path=path, pairs=results, projections=projections)


def analyze(
    models: Sequence[str | Path],
    texts: str | Path | Sequence[str],
    out_dir: str | Path | None = None,
    *,
    names: Sequence[str] | None = None,
    base: str | Path | None = None,
    pairs: int = 100,
    top_tokens: int = 42,
    max_texts: int | None = None,
    max_per_token: int | None = 500,
    max_length: int = 512,
    batch_size: int = 8,
    seed: int = 0,
    device: str | None = None,
    dtype: str | None = None,
    include_special: bool = False,
    dedupe: bool = True,
    min_count: int = 2,
    plots: int = 3,
    pca_components: int | None = 2,
    progress: bool = True,
) -> AnalysisResult:
    """Measure token-feature clustering (paper §4, Table 5) of one or more local models.

    ``models``: local Hugging Face causal-LM folders and/or PEFT adapter folders (the base comes
    from ``adapter_config.json`` or ``base``); all must share one tokenizer vocabulary.
    ``texts``: a texts file (see :mod:`ual_plugin.analysis.texts`) or a list of strings.
    Steps: pick the ``top_tokens`` most frequent next tokens (special tokens excluded unless
    ``include_special``) with the first model's tokenizer, counting a (context, next token) that
    repeats across texts once (unless ``dedupe=False``); draw ``pairs`` distinct pairs of them
    with ``numpy.random.default_rng(seed)``; per model, collect the LM-head input features at (at
    most ``max_per_token`` seeded-random) positions predicting those tokens, and for each pair fit a
    2-D PCA and compute the silhouette coefficient with the two tokens as clusters.
    Writes ``silhouette.json`` (one entry per model), ``settings.json`` (the run's settings and
    tokens), ``silhouette.png`` and ``pca_<i>.png`` (``plots`` pairs) to ``out_dir`` when given.
    """
    if not models:
        raise AnalysisError("give at least one model")
    if plots < 0:
        raise AnalysisError(f"plots must be >= 0, got {plots}")
    if min_count < 2:
        raise AnalysisError(f"min_count must be >= 2 (a silhouette needs two features per token), got {min_count}")
    model_names = _model_names(models, names)
    locations = [resolve_model(m, base) for m in models]  # fail early on a missing folder
    tokenizers = {n: load_tokenizer(m, base) for n, m in zip(model_names, models, strict=True)}
    check_same_vocab(tokenizers)
    tokenizer = tokenizers[model_names[0]]

    text_list = as_texts(texts, tokenizer, max_texts)
    sequences = tokenize_texts(text_list, tokenizer, max_length)
    exclude = set() if include_special else special_token_ids(tokenizer)
    plan: TokenPlan = plan_tokens(sequences, top_tokens, max_per_token, exclude, min_count, seed, dedupe)
    chosen_pairs = sample_pairs(plan.tokens, pairs, seed)
    plot_pairs = chosen_pairs[:plots]
    labels = {t: token_text(tokenizer, t) for t in plan.tokens}

    dev = pick_device(device)
    torch_dtype = pick_dtype(dev, dtype)
    pad_id = next((v for v in (tokenizer.pad_token_id, tokenizer.eos_token_id) if isinstance(v, int)), 0)
    n_feats = plan.n_features()
    config = {
        "texts": str(texts) if isinstance(texts, (str, Path)) else f"<{len(text_list)} texts>",
        "n_texts": len(text_list),
        "n_positions": plan.n_positions,
        "n_unique_positions": plan.n_unique,
        "seed": seed,
        "pairs": pairs,
        "n_pairs": len(chosen_pairs),
        "top_tokens": top_tokens,
        "max_per_token": max_per_token,
        "max_length": max_length,
        "min_count": min_count,
        "include_special": include_special,
        "dedupe": dedupe,
        "pca_components": pca_components,
        "device": str(dev),
        "dtype": str(torch_dtype).replace("torch.", ""),
        "models": {n: str(m) for n, m in zip(model_names, models, strict=True)},
        "base": None if base is None else str(base),
        "tokens": [
            {"id": t, "text": labels[t], "count": plan.counts[t], "n_features": n_feats[t]} for t in plan.tokens
        ],
    }

    results = []
    for name, loc in zip(model_names, locations, strict=True):
        model = load_model(loc.path, base, dev, torch_dtype)
        try:
            feats = collect_features(model, plan, batch_size=batch_size, pad_token_id=pad_id,
                                     progress=progress, desc=name)
        finally:
            del model
            release_memory()
        results.append(score_features(name, feats, chosen_pairs, plot_pairs, pca_components, str(loc.path)))
        del feats

    result = AnalysisResult(config=config, pairs=chosen_pairs, token_labels=labels, models=results)
    if out_dir is not None:
        write_outputs(result, out_dir, plots=plots)
    return result


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def write_outputs(result: AnalysisResult, out_dir: str | Path, plots: int = 3) -> dict[str, Path]:
    """Write ``silhouette.json``, ``settings.json``, ``silhouette.png`` and ``pca_1.png`` ... ``pca_<plots>.png``."""
    from ual_plugin.analysis.plots import plot_pair_pca, plot_silhouette_summary

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    json_path = out / "silhouette.json"
    json_path.write_text(json.dumps(_json_safe(result.to_dict()), indent=2, ensure_ascii=False) + "\n",
                         encoding="utf-8")
    written["json"] = json_path
    settings_path = out / "settings.json"
    settings_path.write_text(json.dumps(_json_safe(result.config), indent=2, ensure_ascii=False) + "\n",
                             encoding="utf-8")
    written["settings"] = settings_path
    written["summary"] = plot_silhouette_summary(
        [m.name for m in result.models], [m.mean for m in result.models], [m.std for m in result.models],
        out / "silhouette.png",
        title=f"Token-feature clustering: {result.config.get('n_pairs', '?')} token pairs",
    )
    for i, pair in enumerate(result.pairs[:plots], 1):
        panels = []
        for m in result.models:
            if pair not in m.projections:
                continue
            points, labels = m.projections[pair]
            sil = next(p.silhouette for p in m.pairs if p.tokens == pair)
            panels.append((m.name, points, labels, sil))
        if panels:
            written[f"pca_{i}"] = plot_pair_pca(panels, pair, result.token_labels, out / f"pca_{i}.png")
    return written
