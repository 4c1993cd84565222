"""Reading a score out of a model reply: JSON ``{"score": N}`` first, else a reply holding one number.

Also the logprob variant: the expected score over the score tokens' top alternatives.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?![\w])")
_NUMBER_ANY = re.compile(r"-?\d+(?:\.\d+)?")
_JSON_OBJECT = re.compile(r"\{[^{}]*\}", re.S)
_SCORE_KEYS = ("score", "uncertainty", "rating", "value")


class ScoreParseError(ValueError):
    """The reply holds no usable score; the message says why (and quotes the reply, shortened)."""


@dataclass(frozen=True)
class ParsedScore:
    value: float
    start: int  # character span of the number in the reply (for logprob alignment)
    end: int


def _quote(text: str, limit: int = 80) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def _check_range(value: float, max_score: float, reply: str) -> float:
    if not math.isfinite(value) or value < 0 or value > max_score:
        raise ScoreParseError(f"score {value:g} is outside 0..{max_score:g} in reply {_quote(reply)}")
    return float(value)


def parse_score(reply: str | None, max_score: float = 99) -> ParsedScore:
    """The score in ``reply`` or :class:`ScoreParseError`.

    Accepted: a JSON object with a ``score`` key (also inside a code fence or surrounded by text),
    or plain text holding exactly one number (``"42"``, ``"Score: 42"``, ``"42/99"``).
    """
    if reply is None or not reply.strip():
        raise ScoreParseError("empty reply")
    for m in _JSON_OBJECT.finditer(reply):
        try:
            obj = json.loads(m.group(0))
        except json.JSONDecodeError:
            continue
        if not isinstance(obj, dict):
            continue
        lowered = {str(k).lower(): v for k, v in obj.items()}
        for key in _SCORE_KEYS:
            if key in lowered:
                raw = lowered[key]
                if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
                    raise ScoreParseError(f"'{key}' is not a number in reply {_quote(reply)}")
                try:
                    value = float(raw)
                except ValueError:
                    raise ScoreParseError(f"'{key}' is not a number in reply {_quote(reply)}") from None
                obj_text = m.group(0)
                key_at = obj_text.lower().find(f'"{key}"')
                num = _NUMBER_ANY.search(obj_text, max(key_at, 0) + len(key) + 2)
                start, end = (m.start() + num.start(), m.start() + num.end()) if num else (m.start(), m.end())
                return ParsedScore(_check_range(value, max_score, reply), start, end)
    numbers = list(_NUMBER.finditer(reply))
    # "42/99" or "42 out of 99": the denominator is the scale, not a second score
    kept = []
    for i, m in enumerate(numbers):
        before = reply[numbers[i - 1].end():m.start()] if i else ""
        if i and re.fullmatch(r"\s*(?:/|out of)\s*", before) and float(m.group(0)) == float(max_score):
            continue
        kept.append(m)
    if not kept:
        raise ScoreParseError(f"no number in reply {_quote(reply)}")
    if len({float(m.group(0)) for m in kept}) > 1:
        raise ScoreParseError(f"{len(kept)} different numbers in reply {_quote(reply)}; expected one score")
    m = kept[0]
    return ParsedScore(_check_range(float(m.group(0)), max_score, reply), m.start(), m.end())


def _get(obj: Any, name: str) -> Any:
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)


def expected_score(tokens: Sequence[Any] | None, parsed: ParsedScore, max_score: float = 99) -> float | None:
    """Expected score over the alternatives at the score token, or None when it cannot be computed.

    ``tokens`` is ``choice.logprobs.content`` (objects or dicts with ``token``, ``logprob`` and
    ``top_logprobs``). The number in the reply must be a single token (true for 0..999 with OpenAI's
    tokenizers); alternatives that are integers in 0..max_score are weighted by their probability,
    renormalised over those alternatives. Multi-token numbers (e.g. digit-by-digit tokenizers)
    return None, and the caller keeps the sampled score.
    """
    if not tokens:
        return None
    pos = 0
    for tok in tokens:
        text = _get(tok, "token") or ""
        start, end = pos, pos + len(text)
        pos = end
        if end <= parsed.start:
            continue
        if start > parsed.start:
            return None
        if parsed.value != int(parsed.value) or text.strip() != str(int(parsed.value)):
            return None  # the score spans several tokens, or the token holds more than the number
        weights: dict[float, float] = {}
        for alt in _get(tok, "top_logprobs") or []:
            alt_text = (_get(alt, "token") or "").strip()
            if not alt_text.isdigit():
                continue
            value = float(alt_text)
            if value > max_score:
                continue
            weights[value] = weights.get(value, 0.0) + math.exp(float(_get(alt, "logprob")))
        if not weights:
            return None
        total = sum(weights.values())
        return float(sum(v * w for v, w in weights.items()) / total)
    return None
