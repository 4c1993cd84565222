"""Adding the per-sample ``uncertainty`` column: an OpenAI-compatible judge or a local perplexity scorer.

    from ual_plugin.scoring import score_dataset
    ds = score_dataset("train.jsonl", "train.scored.jsonl", model="gpt-4o", concurrency=32)

CLI: ``ual score`` (see ``ual_plugin/scoring/README.md``) and ``ual stats``. Importing this package
imports neither ``openai`` nor ``torch``; they load when a scorer runs.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "PAPER_PROMPT_VERSION",
    "ScoreParseError",
    "ScoreResult",
    "ScoringPrompt",
    "detect_layout",
    "load_prompt",
    "parse_score",
    "score",
    "score_dataset",
    "summarize",
]

_LAZY = {
    "score": "ual_plugin.scoring.core",
    "score_dataset": "ual_plugin.scoring.core",
    "ScoreResult": "ual_plugin.scoring.core",
    "parse_score": "ual_plugin.scoring.parse",
    "ScoreParseError": "ual_plugin.scoring.parse",
    "ScoringPrompt": "ual_plugin.scoring.prompts",
    "load_prompt": "ual_plugin.scoring.prompts",
    "PAPER_PROMPT_VERSION": "ual_plugin.scoring.prompts",
    "detect_layout": "ual_plugin.scoring.formats",
    "summarize": "ual_plugin.scoring.stats",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ual_plugin.scoring' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
