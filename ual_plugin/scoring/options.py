"""Every setting of a scoring run in one object: the ``ual score`` flags and ``score()`` keywords share its names."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import urlparse

RESPONSE_FORMATS = ("auto", "json_schema", "json_object", "none")


@dataclass
class ScoreOptions:
    """Settings of one run (see ``ual score --help`` for each)."""

    scorer: str = "openai"  # "openai" (any OpenAI-compatible endpoint) | "ppl" (local causal LM at `model`)
    model: str | None = None  # default: gpt-4o on OpenAI/Azure; the only model a custom endpoint serves
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)  # default: OPENAI_API_KEY / the Azure variables
    concurrency: int = 16  # the most requests in flight; lowered on timeouts and slow replies
    prompt: str | None = "paper"
    samples: int = 1
    min_samples: int = 1  # usable replies a row needs (of `samples`)
    logprobs: bool = False
    temperature: float | None = None  # default 0 (1 with samples > 1)
    response_format: str = "auto"  # auto: json_schema, then json_object, then plain text
    format: str | None = None  # row layout; None = detect
    split: str | None = None
    field: str = "uncertainty"
    batch: bool = False
    batch_ids: Sequence[str] = ()
    wait: bool = True
    poll_interval: float = 30.0
    dry_run: bool = False
    cache_path: str | os.PathLike | None | bool = None  # None: OUTPUT.ual-cache.jsonl; False: no cache
    max_retries: int = 6
    timeout: float = 60.0
    max_tokens: int | None = None  # default: 16 for the paper prompt, 256 for a prompt file
    parse_retries: int = 1
    max_sample_chars: int | None = 24_000
    max_score: int = 99
    price_in: float | None = None
    price_out: float | None = None
    ppl_batch_size: int = 8
    max_length: int = 2048
    device: str | None = None
    progress: bool | None = None

    def __post_init__(self) -> None:
        if self.scorer not in ("openai", "ppl"):
            raise ValueError(f"scorer must be 'openai' or 'ppl', got {self.scorer!r}")
        if self.response_format not in RESPONSE_FORMATS:
            raise ValueError(f"response_format must be one of {', '.join(RESPONSE_FORMATS)}, "
                             f"got {self.response_format!r}")
        for name in ("samples", "concurrency", "min_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.min_samples > self.samples:
            raise ValueError(f"min_samples ({self.min_samples}) cannot exceed samples ({self.samples})")
        if self.scorer == "ppl" and (self.batch or self.logprobs or self.samples != 1):
            raise ValueError("--batch, --logprobs and --samples apply to the API scorer, not --scorer ppl")
        if self.batch and self.response_format == "auto":
            self.response_format = "json_schema"  # a batch cannot adapt: say --response-format otherwise

    @classmethod
    def from_namespace(cls, ns: Any) -> ScoreOptions:
        """From parsed ``ual score`` arguments (their ``dest`` names are the field names)."""
        return cls(**{f.name: getattr(ns, f.name) for f in fields(cls) if hasattr(ns, f.name)})

    @property
    def effective_temperature(self) -> float:
        return float(self.temperature) if self.temperature is not None else 0.0 if self.samples == 1 else 1.0

    @property
    def show_progress(self) -> bool:
        return sys.stderr.isatty() if self.progress is None else self.progress

    @property
    def endpoint(self) -> str | None:
        return self.base_url or os.environ.get("OPENAI_BASE_URL") or None

    @property
    def azure(self) -> bool:
        return (self.endpoint is None and bool(os.environ.get("AZURE_OPENAI_ENDPOINT"))
                and bool(os.environ.get("AZURE_OPENAI_API_KEY") or os.environ.get("AZURE_OPENAI_AD_TOKEN")))

    @property
    def openai_hosted(self) -> bool:
        """OpenAI itself (or Azure OpenAI): the only endpoints whose model names the price table knows."""
        return self.endpoint is None or urlparse(self.endpoint).hostname == "api.openai.com"
