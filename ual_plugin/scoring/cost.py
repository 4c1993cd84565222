"""Token counts (tiktoken, only from its local cache, never downloading) and cost estimates."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

# USD per 1M tokens (input, output), standard tier, OpenAI's public pricing page as of 2025-06.
# Prices change: override with --price-in / --price-out. The Batch API bills half.
PRICES_AS_OF = "2025-06"
PRICES_PER_1M: dict[str, tuple[float, float]] = {
    "gpt-4o": (2.50, 10.00), "gpt-4o-mini": (0.15, 0.60), "gpt-4.1": (2.00, 8.00), "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40), "gpt-4-turbo": (10.00, 30.00), "gpt-4": (30.00, 60.00),
    "gpt-3.5-turbo": (0.50, 1.50),
}
BATCH_DISCOUNT = 0.5
_SNAPSHOT = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{4})")
TOKENS_PER_MESSAGE = TOKENS_REPLY_PRIMING = 3  # what the chat format adds per message and to prime the reply
EST_OUTPUT_TOKENS = 8  # '{"score": 42}' is 6 tokens with OpenAI tokenizers; a little slack


def price_for(model: str) -> tuple[float, float] | None:
    """(input, output) USD per 1M tokens for a known model or a dated snapshot of one, else None."""
    name = model.lower().removeprefix("openai/")
    # dated snapshots (gpt-4o-2024-08-06, gpt-4-0613) take their family's price, longest family first
    family = next((f for f in sorted(PRICES_PER_1M, key=len, reverse=True)
                   if name == f or (name.startswith(f) and _SNAPSHOT.fullmatch(name[len(f):]))), None)
    return PRICES_PER_1M[family] if family else None


@dataclass
class Pricing:
    model: str
    price_in: float | None
    price_out: float | None
    source: str  # "price table of 2025-06" | "--price-in/--price-out" | "unknown" | "custom endpoint"
    batch: bool = False

    @classmethod
    def resolve(cls, model: str, price_in: float | None = None, price_out: float | None = None,
                batch: bool = False, openai_hosted: bool = True) -> Pricing:
        """Prices given, else the table's for a model OpenAI hosts; a custom endpoint's cost is unknown."""
        table = price_for(model) if openai_hosted else None
        if price_in is not None or price_out is not None:
            table = table or (None, None)
            return cls(model, table[0] if price_in is None else price_in, table[1] if price_out is None else price_out,
                       "--price-in/--price-out", batch)
        if table is None:
            return cls(model, None, None, "unknown" if openai_hosted else "custom endpoint", batch)
        return cls(model, *table, f"price table of {PRICES_AS_OF}", batch)

    def cost(self, tokens_in: int, tokens_out: int) -> float | None:
        if self.price_in is None or self.price_out is None:
            return None
        return (BATCH_DISCOUNT if self.batch else 1.0) * (tokens_in * self.price_in + tokens_out * self.price_out) / 1e6

    def describe(self, tokens_in: int, tokens_out: int) -> str:
        cost = self.cost(tokens_in, tokens_out)
        if cost is None:
            why = "a custom endpoint" if self.source == "custom endpoint" else f"no price for {self.model!r}"
            return f"cost unknown ({why}; pass --price-in/--price-out in USD per 1M tokens)"
        tier = ", Batch API -50%" if self.batch else ""
        return f"${cost:,.4f} ({self.source}: ${self.price_in}/1M in, ${self.price_out}/1M out{tier})"


class _OfflineOnly(RuntimeError):
    pass


def load_tiktoken_offline(model: str) -> tuple[object | None, str]:
    """(encoding, note); the encoding is None when tiktoken would have to download its table."""
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
        return cls(enc.encode_ordinary, note) if enc is not None else \
            cls(None, f"APPROXIMATE (characters / 4): {note}")  # type: ignore[attr-defined]

    def count_text(self, text: str) -> int:
        return math.ceil(len(text) / 4) if self.encode is None else len(self.encode(text))

    def count_messages(self, messages: Iterable[dict[str, str]]) -> int:
        return TOKENS_REPLY_PRIMING + sum(TOKENS_PER_MESSAGE + self.count_text(m.get("content", ""))
                                          + self.count_text(m.get("role", "")) for m in messages)
