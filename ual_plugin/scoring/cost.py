"""Token counting (tiktoken, strictly offline) and cost estimates.

tiktoken downloads its BPE tables on first use. This module never lets it: an encoding is used only
when its file is already in tiktoken's local cache (``TIKTOKEN_CACHE_DIR`` / ``DATA_GYM_CACHE_DIR`` /
the temp-dir default). Otherwise counts fall back to an approximation (characters / 4) that is
labelled as such wherever it is shown.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

# USD per 1M tokens (input, output), standard (non-batch) tier, from OpenAI's public pricing page
# as of 2025-06. Prices change: override with --price-in / --price-out. The Batch API bills half.
PRICES_AS_OF = "2025-06"
PRICES_PER_1M: dict[str, tuple[float, float]] = {
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4-turbo": (10.00, 30.00),
    "gpt-4": (30.00, 60.00),
    "gpt-3.5-turbo": (0.50, 1.50),
}
BATCH_DISCOUNT = 0.5
_SNAPSHOT = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{4})")

# Tokens the chat format adds: per message (role, separators) and to prime the reply.
TOKENS_PER_MESSAGE = 3
TOKENS_REPLY_PRIMING = 3
# Expected reply length: '{"score": 42}' is 6 tokens with OpenAI tokenizers; a little slack.
EST_OUTPUT_TOKENS = 8


def price_for(model: str) -> tuple[float, float] | None:
    """(input, output) USD per 1M tokens for a known model or a dated snapshot of one, else None."""
    name = model.lower().removeprefix("openai/")
    if name in PRICES_PER_1M:
        return PRICES_PER_1M[name]
    # dated snapshots: gpt-4o-2024-08-06 -> gpt-4o, gpt-4-0613 -> gpt-4 (longest family first, so
    # gpt-4o-mini-... is not priced as gpt-4o); anything else (gpt-4-32k, *-preview) stays unknown
    for family in sorted(PRICES_PER_1M, key=len, reverse=True):
        if name.startswith(family) and _SNAPSHOT.fullmatch(name[len(family):]):
            return PRICES_PER_1M[family]
    return None


@dataclass
class Pricing:
    model: str
    price_in: float | None
    price_out: float | None
    source: str  # "table (2025-06)" | "--price-in/--price-out" | "unknown"
    batch: bool = False

    @classmethod
    def resolve(cls, model: str, price_in: float | None = None, price_out: float | None = None,
                batch: bool = False, openai_hosted: bool = True) -> Pricing:
        """Prices given, else the table's for a model OpenAI hosts; a custom endpoint's cost is unknown."""
        table = price_for(model) if openai_hosted else None
        if price_in is not None or price_out is not None:
            table = table or (None, None)
            return cls(model, price_in if price_in is not None else table[0],
                       price_out if price_out is not None else table[1], "--price-in/--price-out", batch)
        if table is None:
            return cls(model, None, None, "unknown" if openai_hosted else "custom endpoint", batch)
        known = table
        return cls(model, known[0], known[1], f"price table of {PRICES_AS_OF}", batch)

    def cost(self, tokens_in: int, tokens_out: int) -> float | None:
        if self.price_in is None or self.price_out is None:
            return None
        factor = BATCH_DISCOUNT if self.batch else 1.0
        return factor * (tokens_in * self.price_in + tokens_out * self.price_out) / 1e6

    def describe(self, tokens_in: int, tokens_out: int) -> str:
        cost = self.cost(tokens_in, tokens_out)
        if cost is None:
            why = "a custom endpoint" if self.source == "custom endpoint" else f"no price for {self.model!r}"
            return f"cost unknown ({why}; pass --price-in/--price-out in USD per 1M tokens)"
        tier = ", Batch API -50%" if self.batch else ""
        return f"${cost:,.4f} ({self.source}: ${self.price_in}/1M in, ${self.price_out}/1M out{tier})"


# ----------------------------------------------------------------------------------------------
# token counting
# ----------------------------------------------------------------------------------------------
class _OfflineOnly(RuntimeError):
    pass


def load_tiktoken_offline(model: str) -> tuple[object | None, str]:
    """(encoding, note). The encoding is None when tiktoken would have to download its table."""
    try:
        import tiktoken
        import tiktoken.load as tl
    except ImportError:
        return None, "tiktoken is not installed"
    try:
        enc_name = tiktoken.encoding_name_for_model(model)
    except KeyError:
        enc_name = "o200k_base"
    original = tl.read_file

    def refuse_network(blobpath: str) -> bytes:
        if "://" in blobpath:
            raise _OfflineOnly(blobpath)
        return original(blobpath)

    tl.read_file = refuse_network  # a cache miss would download: refuse instead
    try:
        return tiktoken.get_encoding(enc_name), f"tiktoken {enc_name}"
    except _OfflineOnly:
        return None, (f"tiktoken's {enc_name} table is not cached locally (set TIKTOKEN_CACHE_DIR to a folder "
                      "holding it for exact counts)")
    except Exception as err:  # a corrupt cache file, an unknown encoding ...
        return None, f"tiktoken could not load {enc_name} ({type(err).__name__})"
    finally:
        tl.read_file = original


@dataclass
class TokenCounter:
    """Counts chat-prompt tokens exactly (tiktoken) or approximately (characters / 4)."""

    encode: Callable[[str], list] | None
    note: str

    @property
    def exact(self) -> bool:
        return self.encode is not None

    @classmethod
    def for_model(cls, model: str) -> TokenCounter:
        enc, note = load_tiktoken_offline(model)
        if enc is None:
            return cls(None, f"APPROXIMATE (characters / 4): {note}")
        return cls(enc.encode_ordinary, note)  # type: ignore[attr-defined]

    def count_text(self, text: str) -> int:
        if self.encode is None:
            return math.ceil(len(text) / 4)
        return len(self.encode(text))

    def count_messages(self, messages: Iterable[dict[str, str]]) -> int:
        total = TOKENS_REPLY_PRIMING
        for m in messages:
            total += TOKENS_PER_MESSAGE + self.count_text(m.get("content", "")) + self.count_text(m.get("role", ""))
        return total
