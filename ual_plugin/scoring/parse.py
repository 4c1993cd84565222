"""Reading a score out of a judge's reply, only where the reply states it as the score.

Accepted: a JSON ``score`` field, a reply that is just the number, or an explicit ``score: N`` /
``rating of N`` / ``N/99`` / ``N out of 99``; any other number ("70 seconds", "98.5%") is not a score.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

_NUM = r"(-?\d+(?:\.\d+)?)(?![\d%]|\.\d)"
_JSON_OBJECT = re.compile(r"\{[^{}]*\}", re.S)
_KEYS = ("score", "uncertainty", "rating")
_KEYED = re.compile(r"\b(?:uncertainty\s+)?(?:score|rating|uncertainty)\b\"?\s*(?:is|of|would be|=|:)?\s*[:=]?"
                    r"\s*\**\s*" + _NUM, re.I)
_RATE = re.compile(r"\brated? (?:this|it)(?: sample)?(?: (?:as|at))?(?: an?)?\s+\**" + _NUM, re.I)
_BARE = re.compile(r"[^\w-]*" + _NUM + r"\W*", re.S)
DIGIT_SPLIT = "the score spanned several tokens or its alternatives were single digits"


class ScoreParseError(ValueError):
    """The reply holds no usable score; the message says why (and quotes the reply, shortened)."""


@dataclass(frozen=True)
class ParsedScore:
    value: float
    start: int  # character span of the number in the reply (for logprob alignment)
    end: int


def get(obj: Any, name: str, default: Any = None) -> Any:
    """``obj[name]`` for a dict, else ``obj.name``: the client's objects and plain JSON alike."""
    return obj.get(name, default) if isinstance(obj, dict) else getattr(obj, name, default)


def _quote(text: str, limit: int = 80) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def parse_score(reply: str | None, max_score: float = 99) -> ParsedScore:
    """The score stated in ``reply``, or :class:`ScoreParseError` saying why there is none."""
    if reply is None or not reply.strip():
        raise ScoreParseError("no score: empty reply")
    found: list[ParsedScore] = []
    for m in _JSON_OBJECT.finditer(reply):
        try:
            obj = json.loads(m.group(0))
        except json.JSONDecodeError:
            continue
        fields = {str(k).lower(): v for k, v in obj.items()} if isinstance(obj, dict) else {}
        key = next((k for k in _KEYS if k in fields), None)
        if key is None:
            continue
        raw = fields[key]
        try:
            value = float(raw) if isinstance(raw, (int, float, str)) and not isinstance(raw, bool) else None
        except ValueError:
            value = None
        if value is None:
            raise ScoreParseError(f"'{key}' is not a number in reply {_quote(reply)}")
        num = re.compile(_NUM).search(m.group(0), m.group(0).lower().find(f'"{key}"') + len(key) + 2)
        found = [ParsedScore(value, *((m.start() + num.start(1), m.start() + num.end(1)) if num else m.span()))]
        break
    if not found and (bare := _BARE.fullmatch(reply)):
        found = [ParsedScore(float(bare.group(1)), bare.start(1), bare.end(1))]
    if not found:
        scale = re.compile(_NUM + rf"\s*(?:/|out of)\s*{int(max_score)}\b", re.I)
        at = {m.start(1): m for rx in (_KEYED, _RATE, scale) for m in rx.finditer(reply)}
        if not at:
            raise ScoreParseError(f"no score in reply {_quote(reply)}")
        if len(values := {float(m.group(1)) for m in at.values()}) > 1:
            raise ScoreParseError(f"{len(values)} different scores in reply {_quote(reply)}")
        found = [ParsedScore(float(at[min(at)].group(1)), *at[min(at)].span(1))]
    if not math.isfinite(found[0].value) or not 0 <= found[0].value <= max_score:
        raise ScoreParseError(f"score {found[0].value:g} is outside 0..{max_score:g} in reply {_quote(reply)}")
    return found[0]


def expected_score(tokens: Sequence[Any] | None, parsed: ParsedScore, max_score: float = 99) -> float | None:
    """Expected score over the score token's alternatives; None unless the score is one token and an
    alternative has 2+ digits (digit-split tokenizers: '1', '9' of a reply '0' begin 10-19, 90-99)."""
    pos = 0
    for tok in tokens or []:
        text = get(tok, "token") or ""
        start, pos = pos, pos + len(text)
        if pos <= parsed.start:
            continue
        if start > parsed.start or text.strip() != str(int(parsed.value)) or parsed.value != int(parsed.value):
            return None
        weights: dict[int, float] = {}
        for alt in get(tok, "top_logprobs") or []:
            alt_text = (get(alt, "token") or "").strip()
            if alt_text.isdigit() and int(alt_text) <= max_score:
                weights[int(alt_text)] = weights.get(int(alt_text), 0.0) + math.exp(float(get(alt, "logprob")))
        if not weights or (max_score >= 10 and max(weights) < 10):
            return None
        return float(sum(v * w for v, w in weights.items()) / sum(weights.values()))
    return None


@dataclass
class Reply:
    """One choice of a completion read as a score (or the reason it holds none)."""

    text: str
    score: float | None = None
    parsed: float | None = None
    expected: float | None = None
    error: str | None = None
    logprob_note: str | None = None  # why --logprobs fell back to the parsed score


def read_choice(choice: Any, max_score: float, logprobs: bool) -> Reply:
    """Works on the client's choice objects and on plain dicts (Batch API output lines)."""
    message = get(choice, "message")
    text, refusal = get(message, "content") or "", get(message, "refusal")
    try:
        parsed = parse_score(text, max_score)
    except ScoreParseError as err:
        return Reply(text, error=f"model refused: {refusal}" if refusal and not text else str(err))
    reply = Reply(text, score=parsed.value, parsed=parsed.value)
    if logprobs:
        content = get(get(choice, "logprobs"), "content")
        reply.expected = expected_score(content, parsed, max_score) if content else None
        reply.score = reply.expected if reply.expected is not None else reply.score
        if reply.expected is None:
            reply.logprob_note = DIGIT_SPLIT if content else "the server returned no logprobs"
    return reply
