"""Reading the texts that `ual analyze` runs through the models.

Accepted layouts (chosen by file name, then by content):

* ``*.jsonl`` / ``*.ndjson``: one JSON object per non-empty line;
* ``*.json``: a JSON array of objects (a file holding JSON lines is read as such);
* ``*.txt`` / ``*.text`` / ``*.md``: plain text, **one text per non-empty line** (write a JSONL
  file with a ``text`` field for multi-line texts);
* any other name: JSON lines when the first non-empty line is a JSON object, else plain text.

Each JSON object becomes one text, from the first of these that it has:

* ``text``: a string, used as is;
* ``messages`` (or ShareGPT ``conversations`` with ``from`` / ``value``): a list of chat turns, read
  by the same layout reader as ``ual score`` (:mod:`ual_plugin.scoring.layouts`),
  rendered with the tokenizer's chat template when it has one, else as ``role: content`` lines;
* alpaca fields ``instruction`` (+ optional ``input``, ``output`` / ``response``), joined by newlines;
* ``prompt`` + ``completion`` (or ``response``): strings concatenated, message lists rendered as turns.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ual_plugin.scoring.layouts import detect_layout, field_text, read_messages, row_to_conversation


class AnalysisError(ValueError):
    """A user-facing error of `ual analyze` (bad input, incompatible models, ...)."""


class TextsError(AnalysisError):
    """The texts file cannot be read or holds no usable text."""


JSONL_SUFFIXES = {".jsonl", ".ndjson"}
JSON_SUFFIXES = {".json"}
PLAIN_SUFFIXES = {".txt", ".text", ".md"}


def render_messages(messages: Any, tokenizer: Any = None) -> str:
    """Render chat turns with ``tokenizer``'s chat template if it has one, else as ``role: content`` lines."""
    msgs = read_messages(messages)
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(msgs, tokenize=False)
        return text if isinstance(text, str) else "".join(text)  # some versions return a list
    return "\n".join(f"{m['role']}: {m['content']}" for m in msgs)


def record_to_text(record: Any, tokenizer: Any = None) -> str:
    """One JSON record (``text`` / ``messages`` / alpaca / prompt-completion) as a text.

    The fields are read by :mod:`ual_plugin.scoring.layouts`, as ``ual score`` reads them; a
    ``text`` field wins, alpaca fields are joined by newlines, string prompt and completion are
    concatenated, and conversations are rendered as :func:`render_messages` does.
    """
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    if "text" in record:
        if not isinstance(record["text"], str):
            raise ValueError(f"'text' must be a string, got {type(record['text']).__name__}")
        return record["text"]
    layout = detect_layout(record) or ("alpaca" if "instruction" in record else None)
    if layout in ("messages", "sharegpt"):
        return render_messages(record["messages" if layout == "messages" else "conversations"], tokenizer)
    if layout == "alpaca":  # output optional here: an instruction alone is a text too
        parts = [field_text(record, "instruction"), field_text(record, "input", required=False),
                 field_text(record, "output", "response", required=False)]
        return "\n".join(p for p in parts if p and p.strip())
    if layout == "prompt-completion":
        if isinstance(record["prompt"], str) and isinstance(record.get("completion", record.get("response")), str):
            return record["prompt"] + field_text(record, "completion", "response")
        return render_messages(row_to_conversation(record, layout), tokenizer)
    raise ValueError(
        "no text found: expected a 'text' string, a 'messages' list, alpaca fields "
        f"('instruction', 'input', 'output') or 'prompt' + 'completion'; got keys {sorted(record)}"
    )


def _looks_like_jsonl(path: Path) -> bool:
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            if not line.startswith("{"):
                return False
            try:
                return isinstance(json.loads(line), dict)
            except json.JSONDecodeError:
                return False
    return False


def _iter_jsonl(path: Path) -> Iterator[tuple[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield f"line {lineno}", json.loads(line)
            except json.JSONDecodeError as e:
                raise TextsError(f"{path}: line {lineno}: invalid JSON ({e.msg})") from None


def _iter_json(path: Path) -> Iterator[tuple[str, Any]]:
    raw = path.read_text(encoding="utf-8")
    try:
        data = json.loads(raw)
    except json.JSONDecodeError:
        if _looks_like_jsonl(path):
            yield from _iter_jsonl(path)
            return
        raise TextsError(f"{path}: not valid JSON (expected an array of objects, or JSON lines)") from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise TextsError(f"{path}: expected a JSON array of objects, got {type(data).__name__}")
    for i, rec in enumerate(data):
        yield f"item {i}", rec


def iter_texts(path: str | Path, tokenizer: Any = None) -> Iterator[str]:
    """Yield the texts of ``path`` one by one (empty texts skipped); see the module docstring."""
    path = Path(path)
    if not path.exists():
        raise TextsError(f"texts file not found: {path}")
    if not path.is_file():
        raise TextsError(f"texts path is not a file: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix in PLAIN_SUFFIXES:
            fmt = "plain"
        elif suffix in JSONL_SUFFIXES:
            fmt = "jsonl"
        elif suffix in JSON_SUFFIXES:
            fmt = "json"
        else:
            fmt = "jsonl" if _looks_like_jsonl(path) else "plain"
        if fmt == "plain":
            with path.open(encoding="utf-8") as fh:
                for line in fh:
                    line = line.rstrip("\r\n")
                    if line.strip():
                        yield line
            return
        records = _iter_jsonl(path) if fmt == "jsonl" else _iter_json(path)
        for where, rec in records:
            try:
                text = record_to_text(rec, tokenizer)
            except (ValueError, TypeError) as e:
                raise TextsError(f"{path}: {where}: {e}") from None
            except Exception as e:  # e.g. a chat template that rejects the turns
                raise TextsError(f"{path}: {where}: could not render the messages: {e}") from e
            if text.strip():
                yield text
    except UnicodeDecodeError as e:
        raise TextsError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def read_texts(path: str | Path, tokenizer: Any = None, max_texts: int | None = None) -> list[str]:
    """Read the texts of ``path`` (jsonl ``text`` / ``messages`` / alpaca, json array, or plain text).

    ``tokenizer`` renders ``messages`` with its chat template (if it has one); ``max_texts`` keeps
    the first N texts. Raises :class:`TextsError` with the file and line on bad input, or when the
    file holds no text at all.
    """
    if max_texts is not None and max_texts < 1:
        raise TextsError(f"max_texts must be >= 1, got {max_texts}")
    texts: list[str] = []
    for text in iter_texts(path, tokenizer):
        texts.append(text)
        if max_texts is not None and len(texts) >= max_texts:
            break
    if not texts:
        raise TextsError(f"{path}: no texts found (the file is empty or every text is blank)")
    return texts


def as_texts(texts: str | Path | Sequence[str], tokenizer: Any = None, max_texts: int | None = None) -> list[str]:
    """A path is read with :func:`read_texts`; a sequence of strings is used as is (first ``max_texts``)."""
    if isinstance(texts, (str, Path)):
        return read_texts(texts, tokenizer, max_texts)
    given = list(texts)
    bad = [t for t in given if not (isinstance(t, str) and t.strip())]
    if bad:
        raise TextsError(f"texts must be non-empty strings, got {bad[0]!r}")
    out = given
    if max_texts is not None:
        if max_texts < 1:
            raise TextsError(f"max_texts must be >= 1, got {max_texts}")
        out = out[:max_texts]
    if not out:
        raise TextsError("no texts given")
    return out
