"""Token-feature clustering analysis (`ual analyze`): the paper's §4 / Table 5 / Fig. 5 measurement.

For each model, the features that enter the LM head are collected at every position whose next
token is one of the most frequent tokens; for random pairs of those tokens a 2-D PCA is fitted on
the pair's features and the silhouette coefficient (token ids as clusters) measures how tightly
features of the same next token sit together. See ``ual_plugin/analysis/README.md``.

Heavy dependencies (torch, transformers, peft, scikit-learn, matplotlib) are imported only when
a function needs them.
"""

from __future__ import annotations

from ual_plugin.analysis.features import (
    ModelLocation,
    TokenPlan,
    check_same_vocab,
    collect_features,
    lm_head_inputs,
    load_model,
    load_tokenizer,
    plan_tokens,
    resolve_model,
    special_token_ids,
    tokenize_texts,
)
from ual_plugin.analysis.pipeline import (
    AnalysisResult,
    ModelResult,
    PairResult,
    analyze,
    score_features,
    write_outputs,
)
from ual_plugin.analysis.plots import plot_pair_pca, plot_silhouette_summary
from ual_plugin.analysis.silhouette import (
    pair_silhouette,
    pair_silhouettes,
    project_pair,
    sample_pairs,
    silhouette,
    summarize,
)
from ual_plugin.analysis.texts import AnalysisError, TextsError, read_texts, record_to_text, render_messages

__all__ = [
    "AnalysisError",
    "AnalysisResult",
    "ModelLocation",
    "ModelResult",
    "PairResult",
    "TextsError",
    "TokenPlan",
    "analyze",
    "check_same_vocab",
    "collect_features",
    "lm_head_inputs",
    "load_model",
    "load_tokenizer",
    "pair_silhouette",
    "pair_silhouettes",
    "plan_tokens",
    "plot_pair_pca",
    "plot_silhouette_summary",
    "project_pair",
    "read_texts",
    "record_to_text",
    "render_messages",
    "resolve_model",
    "sample_pairs",
    "score_features",
    "silhouette",
    "special_token_ids",
    "summarize",
    "tokenize_texts",
    "write_outputs",
]
