"""The per-sample ``uncertainty`` column: an OpenAI-compatible judge or a local perplexity scorer.

``score_dataset("train.jsonl", "train.scored.jsonl", model="gpt-4o")``; CLI ``ual score`` / ``ual stats``.
Importing this package imports neither ``openai``, ``datasets`` nor ``torch``.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "core": ("score", "score_dataset", "ScoreResult"),
    "options": ("ScoreOptions",),
    "parse": ("parse_score", "ScoreParseError"),
    "prompts": ("ScoringPrompt", "load_prompt", "PAPER_PROMPT_VERSION"),
    "layouts": ("detect_layout", "row_to_conversation"),
    "stats": ("summarize",),
}
_WHERE = {name: module for module, names in _LAZY.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"ual_plugin.scoring.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'ual_plugin.scoring' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
