"""Reading datasets in, recognising their row layout, rendering samples, writing results out.

Inputs: ``.jsonl`` / ``.json`` / ``.csv`` / ``.parquet`` files and folders written by
``datasets.Dataset.save_to_disk``. Layouts (detected from the columns, overridable):

- ``messages``: ``messages`` = list of ``{"role", "content"}`` (OpenAI / TRL conversational)
- ``sharegpt``: ``conversations`` = list of ``{"from", "value"}``
- ``alpaca``: ``instruction``, optional ``input``, ``output`` (optional ``system``)
- ``prompt-completion``: ``prompt`` + ``completion`` (strings or message lists, as in TRL)
- ``text``: a single ``text`` field (no prompt/response split)
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LAYOUTS = ("messages", "sharegpt", "alpaca", "prompt-completion", "text")
FILE_KINDS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet",
              ".pq": "parquet"}

_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "chatgpt": "assistant", "bard": "assistant", "bing": "assistant", "model": "assistant",
                   "system": "system"}


class RowFormatError(ValueError):
    """A row that does not fit the layout; the message names the row and the layout."""


class InputError(ValueError):
    """The input cannot be read at all (missing file, unknown extension, malformed file)."""


@dataclass
class LoadedData:
    """Rows as dicts (in order) plus what is needed to write them back faithfully."""

    rows: list[dict[str, Any]]
    source: str  # "jsonl" | "json" | "csv" | "parquet" | "folder" | "dataset" | "list"
    name: str = "<data>"
    line_numbers: list[int] | None = None  # 1-based file lines for jsonl (row -> line)
    table: Any = None  # pyarrow.Table for parquet / datasets inputs (keeps the exact schema)
    columns: list[str] = field(default_factory=list)

    def where(self, index: int) -> str:
        if self.line_numbers is not None:
            return f"row {index} (line {self.line_numbers[index]} of {self.name})"
        return f"row {index} of {self.name}"


# ----------------------------------------------------------------------------------------------
# loading
# ----------------------------------------------------------------------------------------------
def output_kind(path: str | os.PathLike) -> str:
    """File kind from the extension; a path with no known extension is a ``save_to_disk`` folder."""
    suffix = Path(path).suffix.lower()
    return FILE_KINDS.get(suffix, "folder")


def load_data(data: Any, split: str | None = None) -> LoadedData:
    """Load a path, a ``datasets.Dataset``/``DatasetDict`` or a list of dicts."""
    if isinstance(data, (str, os.PathLike)):
        return load_path(Path(data), split=split)
    if isinstance(data, list):
        bad = next((i for i, r in enumerate(data) if not isinstance(r, dict)), None)
        if bad is not None:
            raise InputError(f"row {bad} is a {type(data[bad]).__name__}, not a dict")
        return LoadedData(rows=data, source="list", name="<list>", columns=_columns(data))
    if hasattr(data, "keys") and hasattr(data, "column_names") and isinstance(data.column_names, dict):
        data = _pick_split(data, split, "<DatasetDict>")
    if hasattr(data, "to_list") and hasattr(data, "column_names"):
        if getattr(data, "_indices", None) is not None:  # an indices mapping (after select/shuffle/filter)
            data = data.flatten_indices()
        table = data.with_format(None).data.table if hasattr(data, "data") else None
        rows = data.with_format(None).to_list()
        return LoadedData(rows=rows, source="dataset", name="<Dataset>", table=table, columns=list(data.column_names))
    raise InputError(f"cannot score a {type(data).__name__}: pass a path, a datasets.Dataset or a list of dicts")


def _columns(rows: Sequence[dict]) -> list[str]:
    seen: dict[str, None] = {}
    for r in rows:
        for k in r:
            seen.setdefault(k, None)
    return list(seen)


def _pick_split(dsd: Any, split: str | None, name: str) -> Any:
    splits = list(dsd.keys())
    if split is not None:
        if split not in dsd:
            raise InputError(f"{name} has no split {split!r}; it has {splits}")
        return dsd[split]
    if len(splits) == 1:
        return dsd[splits[0]]
    raise InputError(f"{name} holds several splits {splits}: choose one with --split")


def load_path(path: Path, split: str | None = None) -> LoadedData:
    if not path.exists():
        raise InputError(f"input {path} does not exist")
    if path.is_dir():
        try:
            import datasets
        except ImportError as err:  # pragma: no cover - datasets is a scoring dependency
            raise InputError("reading a dataset folder needs `datasets` (pip install 'ual-plugin[scoring]')") from err
        try:
            ds = datasets.load_from_disk(str(path))
        except Exception as err:
            raise InputError(f"{path} is a folder but not one written by datasets' save_to_disk ({err})") from None
        if isinstance(ds, datasets.DatasetDict):
            ds = _pick_split(ds, split, str(path))
        loaded = load_data(ds)
        loaded.source, loaded.name = "folder", str(path)
        return loaded
    kind = FILE_KINDS.get(path.suffix.lower())
    if kind is None:
        raise InputError(f"unknown input type {path.suffix!r} for {path}: use .jsonl, .json, .csv, .parquet "
                         "or a save_to_disk folder")
    name = path.name
    if kind == "jsonl":
        rows, lines = [], []
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as err:
                    raise InputError(f"line {lineno} of {name} is not valid JSON ({err.msg})") from None
                if not isinstance(obj, dict):
                    raise InputError(f"line {lineno} of {name} is a JSON {type(obj).__name__}, not an object")
                rows.append(obj)
                lines.append(lineno)
        return LoadedData(rows, "jsonl", name, line_numbers=lines, columns=_columns(rows))
    if kind == "json":
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise InputError(f"{name} is not valid JSON ({err.msg} at line {err.lineno})") from None
        if isinstance(obj, dict) and len(obj) == 1 and isinstance(next(iter(obj.values())), list):
            obj = next(iter(obj.values()))  # {"data": [...]} / {"train": [...]}
        if not isinstance(obj, list) or not all(isinstance(r, dict) for r in obj):
            raise InputError(f"{name} must hold a JSON array of objects (one per row)")
        return LoadedData(obj, "json", name, columns=_columns(obj))
    if kind == "csv":
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            rows = [dict(r) for r in reader]
            cols = list(reader.fieldnames or [])
        return LoadedData(rows, "csv", name, columns=cols)
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    return LoadedData(table.to_pylist(), "parquet", name, table=table, columns=list(table.column_names))


# ----------------------------------------------------------------------------------------------
# layouts
# ----------------------------------------------------------------------------------------------
def normalise_layout(name: str | None) -> str | None:
    if name in (None, "", "auto"):
        return None
    key = name.lower().replace("_", "-")
    aliases = {"prompt-completion": "prompt-completion", "promptcompletion": "prompt-completion",
               "share-gpt": "sharegpt", "conversations": "sharegpt", "chat": "messages", "plain": "text"}
    key = aliases.get(key, key)
    if key not in LAYOUTS:
        raise InputError(f"unknown --format {name!r}; choose one of {', '.join(LAYOUTS)}")
    return key


def detect_layout(columns: Iterable[str]) -> str | None:
    cols = set(columns)
    if "messages" in cols:
        return "messages"
    if "conversations" in cols:
        return "sharegpt"
    if {"instruction", "output"} <= cols:
        return "alpaca"
    if {"prompt", "completion"} <= cols:
        return "prompt-completion"
    if "text" in cols:
        return "text"
    return None


def resolve_layout(data: LoadedData, override: str | None) -> str:
    layout = normalise_layout(override)
    if layout:
        return layout
    cols = data.columns or (list(data.rows[0]) if data.rows else [])
    layout = detect_layout(cols)
    if layout is None:
        raise InputError(
            f"cannot tell the row layout of {data.name} from its columns {cols}: expected `messages`, "
            "`conversations`, `instruction`+`output`, `prompt`+`completion` or `text`. Pass --format."
        )
    return layout


def _maybe_json(value: Any) -> Any:
    # CSV cells hold conversations as JSON strings
    if isinstance(value, str) and value.lstrip().startswith(("[", "{")):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
        parts = []
        for part in content:
            if isinstance(part, dict):
                parts.append(str(part.get("text") or part.get("content") or ""))
            else:
                parts.append(str(part))
        return "\n".join(p for p in parts if p)
    return str(content)


def _message_list(value: Any, role_key: str, content_key: str, roles: dict[str, str] | None,
                  what: str) -> list[dict[str, str]]:
    value = _maybe_json(value)
    if not isinstance(value, list) or not value:
        raise ValueError(f"`{what}` must be a non-empty list of messages, got {type(value).__name__}")
    out = []
    for j, msg in enumerate(value):
        if not isinstance(msg, dict) or role_key not in msg or content_key not in msg:
            raise ValueError(f"{what}[{j}] must be an object with `{role_key}` and `{content_key}`")
        role = str(msg[role_key]).strip().lower()
        out.append({"role": roles.get(role, role) if roles else role, "content": _content_text(msg[content_key])})
    return out


def _text(row: dict, key: str, required: bool = True) -> str:
    value = row.get(key)
    if value is None:
        if required:
            raise ValueError(f"missing `{key}`")
        return ""
    if not isinstance(value, (str, int, float)):
        raise ValueError(f"`{key}` must be text, got {type(value).__name__}")
    return str(value)


def row_to_conversation(row: dict, layout: str) -> list[dict[str, str]]:
    """A row as a list of ``{"role", "content"}`` (roles: system/user/assistant/other; ``text``)."""
    if layout == "messages":
        conv = _message_list(row.get("messages"), "role", "content", None, "messages")
    elif layout == "sharegpt":
        conv = _message_list(row.get("conversations"), "from", "value", _SHAREGPT_ROLES, "conversations")
    elif layout == "alpaca":
        instruction, extra = _text(row, "instruction"), _text(row, "input", required=False)
        conv = []
        if row.get("system"):
            conv.append({"role": "system", "content": _text(row, "system")})
        conv.append({"role": "user", "content": instruction + (f"\n\n{extra}" if extra.strip() else "")})
        conv.append({"role": "assistant", "content": _text(row, "output")})
    elif layout == "prompt-completion":
        conv = []
        for key, role in (("prompt", "user"), ("completion", "assistant")):
            value = _maybe_json(row.get(key))
            if isinstance(value, list):
                conv += _message_list(value, "role", "content", None, key)
            else:
                conv.append({"role": role, "content": _text(row, key)})
    elif layout == "text":
        return [{"role": "text", "content": _text(row, "text")}]
    else:  # pragma: no cover - normalise_layout guards this
        raise ValueError(f"unknown layout {layout}")
    if not any(m["role"] == "assistant" for m in conv):
        raise ValueError("no assistant/response turn")
    return conv


def conversations(data: LoadedData, layout: str, max_errors: int = 5) -> list[list[dict[str, str]]]:
    """Every row as a conversation, or RowFormatError naming the first bad rows and the layout."""
    out, errors = [], []
    for i, row in enumerate(data.rows):
        try:
            out.append(row_to_conversation(row, layout))
        except ValueError as err:
            errors.append(f"{data.where(i)} does not fit the {layout} layout: {err}")
            out.append([])
    if errors:
        more = f" (and {len(errors) - max_errors} more)" if len(errors) > max_errors else ""
        hint = "" if len(errors) < len(data.rows) else " Is --format right?"
        raise RowFormatError(f"{len(errors)} row(s) cannot be read{more}.{hint}\n  " + "\n  ".join(errors[:max_errors]))
    return out


_LABELS = {"system": "System", "user": "User", "assistant": "Assistant"}


def render_sample(conv: list[dict[str, str]], max_chars: int | None = None) -> str:
    """The text the judge model sees: labelled turns, long samples cut in the middle."""
    if len(conv) == 1 and conv[0]["role"] == "text":
        text = conv[0]["content"]
    else:
        text = "\n\n".join(f"[{_LABELS.get(m['role'], m['role'].title())}]\n{m['content']}" for m in conv)
    return truncate_middle(text, max_chars)


def truncate_middle(text: str, max_chars: int | None) -> str:
    if not max_chars or len(text) <= max_chars:
        return text
    head = max_chars * 2 // 3
    tail = max_chars - head
    cut = len(text) - head - tail
    return f"{text[:head]}\n[... {cut} characters omitted ...]\n{text[-tail:]}"


# ----------------------------------------------------------------------------------------------
# writing (atomically: a temp file / folder next to the target, then a rename)
# ----------------------------------------------------------------------------------------------
def with_scores(data: LoadedData, values: Sequence[float | None], field_name: str) -> list[dict[str, Any]]:
    rows = []
    for row, value in zip(data.rows, values, strict=True):
        new = dict(row)  # an existing column keeps its position, a new one goes last
        new[field_name] = value
        rows.append(new)
    return rows


def scored_table(data: LoadedData, values: Sequence[float | None], field_name: str) -> Any:
    """The input's Arrow table with the score column set (schema of the other columns untouched)."""
    import pyarrow as pa

    col = pa.array(list(values), type=pa.float64())
    table = data.table
    if table is None:
        rows = with_scores(data, values, field_name)
        return pa.Table.from_pylist(rows)
    if field_name in table.column_names:
        idx = table.column_names.index(field_name)
        return table.set_column(idx, field_name, col)
    return table.append_column(field_name, col)


def to_dataset(data: LoadedData, values: Sequence[float | None], field_name: str) -> Any:
    import datasets

    if data.table is not None:
        return datasets.Dataset(scored_table(data, values, field_name))
    try:
        return datasets.Dataset.from_list(with_scores(data, values, field_name))
    except Exception as err:  # heterogeneous JSON rows that Arrow cannot type
        raise InputError(f"the scored rows cannot be turned into a datasets.Dataset ({err}); "
                         "write them to a .jsonl output instead") from err


def _atomic_file(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_output(path: str | os.PathLike, data: LoadedData, values: Sequence[float | None], field_name: str) -> None:
    path = Path(path)
    kind = output_kind(path)
    if kind in ("jsonl", "json", "csv"):
        rows = with_scores(data, values, field_name)
        if kind == "jsonl":
            def write(f):
                for r in rows:
                    f.write(json.dumps(r, ensure_ascii=False, default=str) + "\n")
        elif kind == "json":
            def write(f):
                json.dump(rows, f, ensure_ascii=False, indent=1, default=str)
                f.write("\n")
        else:
            cols = _columns(rows) if rows else [*data.columns, field_name]

            def write(f):
                w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
                w.writeheader()
                for r in rows:
                    w.writerow({k: _csv_cell(r.get(k)) for k in cols})
        _atomic_file(path, write)
        return
    table = scored_table(data, values, field_name)
    if kind == "parquet":
        import pyarrow.parquet as pq

        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            pq.write_table(table, tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return
    import datasets

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        datasets.Dataset(table).save_to_disk(str(tmp))
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    return value


def sidecar_path(output: str | os.PathLike) -> Path:
    """The resume cache that lives next to OUTPUT (``OUTPUT.ual-cache.jsonl``)."""
    p = Path(output)
    return p.with_name(p.name.rstrip("/") + ".ual-cache.jsonl")
