"""Reading the texts that `ual analyze` runs through the models.

Accepted layouts (chosen by file name, then by content):

* ``*.jsonl`` / ``*.ndjson``: one JSON object per non-empty line;
* ``*.json``: a JSON array of objects (a file holding JSON lines is read as such);
* ``*.txt`` / ``*.text`` / ``*.md``: plain text, **one text per non-empty line** (write a JSONL
  file with a ``text`` field for multi-line texts);
* any other name: JSON lines when the first non-empty line is a JSON object, else plain text.

Each JSON object becomes one text, from the first of these that it has:

* ``text``: a string, used as is;
* ``messages`` (or ShareGPT ``conversations`` with ``from`` / ``value``): a list of chat turns,
  rendered with the tokenizer's chat template when it has one, else as ``role: content`` lines;
* alpaca fields ``instruction`` (+ optional ``input``, ``output`` / ``response``), joined by newlines;
* ``prompt`` + ``completion`` (or ``response``) strings, concatenated.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any


class AnalysisError(ValueError):
    """A user-facing error of `ual analyze` (bad input, incompatible models, ...)."""


class TextsError(AnalysisError):
    """The texts file cannot be read or holds no usable text."""


JSONL_SUFFIXES = {".jsonl", ".ndjson"}
JSON_SUFFIXES = {".json"}
PLAIN_SUFFIXES = {".txt", ".text", ".md"}

_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "system": "system", "bot": "assistant", "model": "assistant"}


def _content_to_str(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # multimodal style: [{"type": "text", "text": ...}, ...]
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
        return "".join(parts)
    raise ValueError(f"message content must be a string, got {type(content).__name__}")


def _normalise_messages(messages: Any) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise ValueError("'messages' must be a non-empty list of {'role', 'content'} objects")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ValueError(f"message {i} is a {type(m).__name__}, not an object")
        if "role" in m:
            role, content = m["role"], m.get("content")
        elif "from" in m:  # ShareGPT
            role, content = _SHAREGPT_ROLES.get(str(m["from"]).lower(), str(m["from"])), m.get("value")
        else:
            raise ValueError(f"message {i} has neither 'role' nor 'from' (keys: {sorted(m)})")
        out.append({"role": str(role), "content": _content_to_str(content)})
    return out


def render_messages(messages: Any, tokenizer: Any = None) -> str:
    """Render chat turns with ``tokenizer``'s chat template if it has one, else as ``role: content`` lines."""
    msgs = _normalise_messages(messages)
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(msgs, tokenize=False)
        if not isinstance(text, str):  # some versions return a list for batched input
            text = "".join(text)
        return text
    return "\n".join(f"{m['role']}: {m['content']}" for m in msgs)


def record_to_text(record: Any, tokenizer: Any = None) -> str:
    """Turn one JSON record (``text`` / ``messages`` / alpaca / prompt-completion) into a text."""
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    if "text" in record:
        if not isinstance(record["text"], str):
            raise ValueError(f"'text' must be a string, got {type(record['text']).__name__}")
        return record["text"]
    for key in ("messages", "conversations"):
        if key in record:
            return render_messages(record[key], tokenizer)
    if "instruction" in record:
        fields = [record.get("instruction"), record.get("input"),
                  record.get("output", record.get("response"))]
        parts = []
        for f in fields:
            if f is None:
                continue
            if not isinstance(f, str):
                raise ValueError(f"alpaca fields must be strings, got {type(f).__name__}")
            if f.strip():
                parts.append(f)
        return "\n".join(parts)
    if "prompt" in record and isinstance(record["prompt"], str):
        completion = record.get("completion", record.get("response", ""))
        if not isinstance(completion, str):
            raise ValueError("'completion' must be a string next to a string 'prompt'")
        return record["prompt"] + completion
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
