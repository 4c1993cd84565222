"""Reading the input and writing the output with ``datasets``; naming the rows that do not fit a layout.

Files: ``.jsonl`` / ``.json`` / ``.csv`` / ``.parquet`` and ``save_to_disk`` folders. Outputs go to a
temporary name next to the target and are renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from ual_plugin.scoring.layouts import detect_layout, normalise_layout, row_to_conversation

BUILDERS = {".jsonl": "json", ".ndjson": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet",
            ".pq": "parquet"}


class InputError(ValueError):
    """The input cannot be read at all (missing file, unknown extension, malformed file)."""


class RowFormatError(ValueError):
    """A row that does not fit the layout; the message names the row and the layout."""


@dataclass
class LoadedData:
    """The input as a ``datasets.Dataset`` plus where it came from (for messages naming rows)."""

    dataset: Any
    name: str = "<data>"
    path: Path | None = None

    @cached_property
    def rows(self) -> list[dict[str, Any]]:
        return self.dataset.with_format(None).to_list()

    @property
    def columns(self) -> list[str]:
        return list(self.dataset.column_names)

    def where(self, index: int) -> str:
        if self.path is not None and self.path.suffix.lower() in (".jsonl", ".ndjson"):
            with open(self.path, encoding="utf-8") as f:
                lines = [n for n, line in enumerate(f, 1) if line.strip()]
            return f"row {index} (line {lines[index]} of {self.name})"
        return f"row {index} of {self.name}"


def _datasets() -> Any:
    try:
        import datasets
    except ImportError as err:  # pragma: no cover - a scoring dependency
        raise InputError("reading and writing data needs `datasets` (pip install 'ual-plugin[scoring]')") from err
    return datasets


def load_data(data: Any, split: str | None = None) -> LoadedData:
    """A path, a ``datasets.Dataset`` / ``DatasetDict`` (pick ``split``) or a list of dicts."""
    datasets = _datasets()
    if isinstance(data, (str, os.PathLike)):
        return _load_path(Path(data), split)
    if isinstance(data, list):
        bad = next((i for i, r in enumerate(data) if not isinstance(r, dict)), None)
        if bad is not None:
            raise InputError(f"row {bad} is a {type(data[bad]).__name__}, not a dict")
        try:
            return LoadedData(datasets.Dataset.from_list(data), "<list>")
        except Exception as err:
            raise InputError(f"the rows cannot be made into one table ({type(err).__name__}: {err})") from None
    if isinstance(data, datasets.DatasetDict):
        data = _pick_split(data, split, "<DatasetDict>")
    if isinstance(data, datasets.Dataset):
        return LoadedData(data, "<Dataset>")
    raise InputError(f"cannot score a {type(data).__name__}: pass a path, a datasets.Dataset or a list of dicts")


def _pick_split(dsd: Any, split: str | None, name: str) -> Any:
    if split is None and len(dsd) == 1:
        return next(iter(dsd.values()))
    if split is None:
        raise InputError(f"{name} holds several splits {list(dsd)}: choose one with --split")
    if split not in dsd:
        raise InputError(f"{name} has no split {split!r}; it has {list(dsd)}")
    return dsd[split]


def _load_path(path: Path, split: str | None) -> LoadedData:
    datasets = _datasets()
    if not path.exists():
        raise InputError(f"input {path} does not exist")
    if path.is_dir():
        try:
            ds = datasets.load_from_disk(str(path))
        except Exception as err:
            raise InputError(f"{path} is a folder but not one written by datasets' save_to_disk ({err})") from None
        return LoadedData(_pick_split(ds, split, str(path)) if isinstance(ds, datasets.DatasetDict) else ds,
                          str(path), path)
    builder = BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise InputError(f"unknown input type {path.suffix!r} for {path}: use .jsonl, .json, .csv, .parquet "
                         "or a save_to_disk folder")
    try:
        ds = datasets.load_dataset(builder, data_files=str(path), split="train")
        col = ds.column_names[0] if builder == "json" and len(ds.column_names) == 1 and ds.num_rows == 1 else None
        if col and isinstance(ds[0][col], list) and all(isinstance(r, dict) for r in ds[0][col]):  # {"data": [..]}
            ds = datasets.load_dataset(builder, data_files=str(path), split="train", field=col)
    except Exception as err:
        raise InputError(_why_unreadable(path, err)) from None
    return LoadedData(ds, path.name, path)


def _why_unreadable(path: Path, err: Exception) -> str:
    """The first malformed line of a JSON file, else the loader's own message."""
    if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        text = path.read_text(encoding="utf-8", errors="replace")
        try:
            json.loads(text)
            return f"{path.name} must hold JSON objects, one per row ({type(err).__name__}: {err})"
        except json.JSONDecodeError:
            pass
        for n, line in enumerate(text.splitlines(), 1):
            try:
                if line.strip() and not isinstance(json.loads(line), dict):
                    return f"line {n} of {path.name} is not a JSON object"
            except json.JSONDecodeError as e:
                return f"line {n} of {path.name} is not valid JSON ({e.msg})"
    cause = err.__cause__ or err
    return f"cannot read {path.name} ({type(cause).__name__}: {cause})"


def resolve_layout(data: LoadedData, override: str | None) -> str:
    """The ``--format`` given, else the layout detected from the columns."""
    try:
        layout = normalise_layout(override) or detect_layout(data.columns)
    except ValueError as err:
        raise InputError(str(err)) from None
    if layout is None:
        raise InputError(
            f"cannot tell the row layout of {data.name} from its columns {data.columns}: expected `messages`, "
            "`conversations`, `instruction`+`output`, `prompt`+`completion` or `text`. Pass --format.")
    return layout


def conversations(data: LoadedData, layout: str, max_errors: int = 5) -> list[list[dict[str, str]]]:
    """Every row as a conversation, or RowFormatError naming the first bad rows and the layout."""
    out, errors = [], []
    for i, row in enumerate(data.rows):
        try:
            out.append(row_to_conversation(row, layout))
        except ValueError as err:
            errors.append(f"{data.where(i)} does not fit the {layout} layout: {err}")
            if len(errors) > max_errors:
                break
    if errors:
        hint = " Is --format right?" if len(errors) == len(data.rows) or not out else ""
        raise RowFormatError(f"{len(errors)} row(s) cannot be read.{hint}\n  " + "\n  ".join(errors[:max_errors]))
    return out


def with_scores(data: LoadedData, values: list[float | None], field: str) -> Any:
    """The input dataset plus the float score column (an existing column of that name keeps its place)."""
    value = _datasets().Value("float64")
    ds = data.dataset.remove_columns(field) if field in data.columns else data.dataset
    ds = ds.add_column(field, list(values))
    ds = ds.cast_column(field, value) if ds.features[field] != value else ds
    return ds.select_columns(data.columns) if field in data.columns else ds


def write_output(path: str | os.PathLike, ds: Any) -> None:
    """Write ``ds`` in the format the extension names (none: a ``save_to_disk`` folder), atomically."""
    path = Path(path)
    kind = BUILDERS.get(path.suffix.lower(), "folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent)
    target = Path(tmp, "out" if kind == "folder" else path.name)
    try:
        if kind == "folder":
            ds.save_to_disk(str(target))
        elif kind == "parquet":
            ds.to_parquet(target)
        elif kind == "csv":  # nested values as JSON text, so the file reads back
            nested = [c for c, f in ds.features.items() if not isinstance(f, _datasets().Value)]
            if nested:
                ds = ds.map(lambda b: {c: [None if v is None else json.dumps(v, ensure_ascii=False)
                                           for v in b[c]] for c in nested}, batched=True)
            ds.to_csv(target, index=False)
        else:
            ds.to_json(target, lines=path.suffix.lower() != ".json", orient="records", force_ascii=False,
                       double_precision=15)
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        if kind == "folder" and path.exists():
            os.replace(path, old)
        os.replace(target, path)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def sidecar_path(output: str | os.PathLike) -> Path:
    """The resume cache that lives next to OUTPUT (``OUTPUT.ual-cache.jsonl``)."""
    p = Path(output)
    return p.with_name(p.name.rstrip("/") + ".ual-cache.jsonl")
