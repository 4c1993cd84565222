"""Row layouts of instruction data, read one way for `ual score` and `ual analyze`.

``messages`` (``role``/``content`` lists), ``sharegpt`` (``conversations`` of ``from``/``value``),
``alpaca`` (``instruction``, ``input``, ``output``/``response``, ``system``), ``prompt-completion``
(strings or message lists) and ``text``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

LAYOUTS = ("messages", "sharegpt", "alpaca", "prompt-completion", "text")
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant",
         "bard": "assistant", "bing": "assistant", "model": "assistant", "bot": "assistant", "system": "system"}
_ALIASES = {"promptcompletion": "prompt-completion", "share-gpt": "sharegpt", "conversations": "sharegpt",
            "chat": "messages", "plain": "text"}
LABELS = {"system": "System", "user": "User", "assistant": "Assistant"}


def normalise_layout(name: str | None) -> str | None:
    """A ``--format`` value as a layout name; None for auto."""
    if name in (None, "", "auto"):
        return None
    key = name.lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key not in LAYOUTS:
        raise ValueError(f"unknown --format {name!r}; choose one of {', '.join(LAYOUTS)}")
    return key


def detect_layout(columns: Iterable[str]) -> str | None:
    """The layout the columns hold, or None."""
    cols = set(columns)
    if "messages" in cols:
        return "messages"
    if "conversations" in cols:
        return "sharegpt"
    if "instruction" in cols and cols & {"output", "response"}:
        return "alpaca"
    if "prompt" in cols and cols & {"completion", "response"}:
        return "prompt-completion"
    return "text" if "text" in cols else None


def content_text(content: Any) -> str:
    """A message's content as text (multimodal part lists keep their text parts)."""
    if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
        parts = [str(p.get("text") or p.get("content") or "") if isinstance(p, dict) else str(p) for p in content]
        return "\n".join(p for p in parts if p)
    return "" if content is None else content if isinstance(content, str) else str(content)


def _maybe_list(value: Any) -> Any:
    """A JSON list of objects held as text (conversations in CSV cells) parsed; anything else as is."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            return value
        return parsed if isinstance(parsed, list) and all(isinstance(m, dict) for m in parsed) else value
    return value


def read_messages(value: Any, what: str = "messages") -> list[dict[str, str]]:
    """``[{"role", "content"}]`` from an OpenAI or ShareGPT message list (or its JSON text)."""
    value = _maybe_list(value)
    if not isinstance(value, list) or not value:
        raise ValueError(f"'{what}' must be a non-empty list of {{'role', 'content'}} objects, "
                         f"got {type(value).__name__}")
    out = []
    for j, m in enumerate(value):
        if not isinstance(m, dict):
            raise ValueError(f"{what}[{j}] is a {type(m).__name__}, not an object")
        if "role" in m:
            role, content = str(m["role"]), m.get("content")
        elif "from" in m:
            role, content = ROLES.get(str(m["from"]).strip().lower(), str(m["from"])), m.get("value")
        else:
            raise ValueError(f"{what}[{j}] has neither 'role' nor 'from' (keys: {sorted(m)})")
        out.append({"role": role.strip().lower(), "content": content_text(content)})
    return out


def field_text(row: dict, *keys: str, required: bool = True) -> str | None:
    """The first of ``keys`` present in ``row``, as text; None (or an error if required) when absent."""
    for key in keys:
        value = row.get(key)
        if value is None:
            continue
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ValueError(f"`{key}` must be text, got {type(value).__name__}")
        return str(value)
    if required:
        raise ValueError(f"missing `{keys[0]}`")
    return None


def row_to_conversation(row: dict, layout: str) -> list[dict[str, str]]:
    """A row as ``[{"role", "content"}]`` with at least one assistant turn (``text``: one ``text`` turn)."""
    if layout == "text":
        return [{"role": "text", "content": field_text(row, "text")}]
    if layout in ("messages", "sharegpt"):
        key = "messages" if layout == "messages" else "conversations"
        conv = read_messages(row.get(key), key)
    elif layout == "alpaca":
        instruction, extra = field_text(row, "instruction"), field_text(row, "input", required=False) or ""
        conv = [{"role": "system", "content": field_text(row, "system")}] if row.get("system") else []
        conv.append({"role": "user", "content": instruction + (f"\n\n{extra}" if extra.strip() else "")})
        conv.append({"role": "assistant", "content": field_text(row, "output", "response")})
    elif layout == "prompt-completion":
        conv = []
        for keys, role in ((("prompt",), "user"), (("completion", "response"), "assistant")):
            value = _maybe_list(next((row[k] for k in keys if row.get(k) is not None), None))
            if isinstance(value, list):
                conv += read_messages(value, keys[0])
            else:
                conv.append({"role": role, "content": field_text(row, *keys)})
    else:
        raise ValueError(f"unknown layout {layout}")
    if not any(m["role"] == "assistant" for m in conv):
        raise ValueError("no assistant/response turn")
    return conv


def render_sample(conv: list[dict[str, str]], max_chars: int | None = None) -> str:
    """The text a judge model sees: labelled turns, long samples cut in the middle."""
    if len(conv) == 1 and conv[0]["role"] == "text":
        text = conv[0]["content"]
    else:
        text = "\n\n".join(f"[{LABELS.get(m['role'], m['role'].title())}]\n{m['content']}" for m in conv)
    if not max_chars or len(text) <= max_chars:
        return text
    head, tail = max_chars * 2 // 3, max_chars - max_chars * 2 // 3
    return f"{text[:head]}\n[... {len(text) - head - tail} characters omitted ...]\n{text[-tail:]}"
