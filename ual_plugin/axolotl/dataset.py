"""Carrying each row's uncertainty score through Axolotl's dataset pipeline (column mode).

No change to the user's ``datasets:`` section: the plugin wraps the prompt strategy Axolotl picks
for each dataset (``chat_template``, ``alpaca`` and the other instruction formats, ``completion``,
user-defined formats, ...) so that every tokenised row also gets the row's raw score in a scalar
column, ``_ual_uncertainty``; pre-tokenised datasets get the column copied from the field.

Why a per-row scalar (and not a per-token column) here: Axolotl keeps one dataset row per sample
all the way to the collator (truncation cuts only ``input_ids`` / ``attention_mask`` / ``labels`` /
``position_ids``, and sample packing concatenates rows inside the multipack collators), so a
scalar cannot fall out of alignment; ``UALCollator`` turns it into the per-token ``ual_smoothing``
tensor laid out exactly like ``input_ids``. And why the raw score (not the smoothing): the map
score -> smoothing is fitted on the whole merged training split, after Axolotl has merged the
datasets and made the ``val_set_size`` split, in the trainer. The prepared-dataset cache therefore
never holds smoothing values, so changing ``ual_alpha`` / ``ual_v_max`` can never reuse stale ones;
the cache key also folds in the field name and the local data files' size and mtime, so a
re-scored file or another ``ual_uncertainty_field`` is re-tokenised.

Validation happens before tokenisation, per dataset: a missing column, missing values, NaN,
negative or non-numeric scores stop the run with a message naming the dataset, the field and how
many rows are bad. Evaluation datasets (``test_datasets``) may lack the column: their rows get
smoothing 0 (plain cross-entropy), as in the TRL adapter.
"""

from __future__ import annotations

import contextvars
import hashlib
import os
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from ual_plugin.data import NO_SCORE, read_uncertainty

SCORE_COLUMN = "_ual_uncertainty"
"""Per-row raw uncertainty score carried through tokenisation, merging, splitting and caching."""

CACHE_KEY_VERSION = "ual-column-v1"

_SPLIT: contextvars.ContextVar[str] = contextvars.ContextVar("ual_split", default="train")
_UNSET = object()
_CARRY: contextvars.ContextVar[Any] = contextvars.ContextVar("ual_carry", default=_UNSET)


def column_mode(cfg: Mapping[str, Any] | Any) -> bool:
    """True when the (validated) config trains UAL from a per-row uncertainty column."""
    get = cfg.get if hasattr(cfg, "get") else lambda k, d=None: getattr(cfg, k, d)
    return bool(get("ual")) and (get("ual_mode") or "column") == "column"


def uncertainty_field(cfg: Any) -> str:
    get = cfg.get if hasattr(cfg, "get") else lambda k, d=None: getattr(cfg, k, d)
    return get("ual_uncertainty_field") or "uncertainty"


def describe_dataset(dataset_config: Any) -> str:
    """How error messages name a dataset: its path, plus name / split / data_files when set."""
    get = dataset_config.get if hasattr(dataset_config, "get") else lambda k, d=None: getattr(dataset_config, k, d)
    parts = [f"'{get('path')}'"]
    for key in ("name", "split", "data_files"):
        if get(key):
            parts.append(f"{key}={get(key)}")
    if get("shards"):
        parts.append(f"shard {get('shards_idx') or 0}/{get('shards')}")
    return parts[0] + (f" ({', '.join(parts[1:])})" if len(parts) > 1 else "")


class CarryScore:
    """Wraps an Axolotl prompt-tokenising strategy: same rows out, plus ``_ual_uncertainty``.

    Non-batched strategies get one row in, one row out. Batched strategies may turn one row into
    several (``completion`` splits long texts) or none, so each row is tokenised on its own (as a
    batch of one) and its score repeated over the rows it produced.
    """

    def __init__(self, inner: Any, field: str | None):
        self.inner = inner
        self.field = field  # None: the dataset has no score column (evaluation sets only)

    @property
    def supports_batched(self) -> bool:
        return bool(self.inner.supports_batched)

    @property
    def filter_rows(self) -> Any:
        return getattr(self.inner, "filter_rows", None)

    def _score(self, value: Any) -> float:
        return NO_SCORE if self.field is None else float(value)

    def tokenize_prompt(self, prompt: dict[str, Any]) -> dict[str, Any]:
        if not self.supports_batched:
            out = dict(self.inner.tokenize_prompt(prompt))
            out[SCORE_COLUMN] = self._score(prompt.get(self.field) if self.field else None)
            return out
        keys = list(prompt.keys())
        n_rows = len(prompt[keys[0]]) if keys else 0
        res: dict[str, list[Any]] = defaultdict(list)
        for i in range(n_rows):
            out = self.inner.tokenize_prompt({k: [prompt[k][i]] for k in keys}) or {}
            produced = len(out["input_ids"]) if "input_ids" in out else 0
            for key, values in out.items():
                res[key].extend(values)
            res[SCORE_COLUMN].extend([self._score(prompt[self.field][i] if self.field else None)] * produced)
        return dict(res)

    def __getattr__(self, name: str) -> Any:
        if name == "inner" or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.inner, name)


def _column_names(dataset: Any) -> list[str]:
    names = getattr(dataset, "column_names", None)
    if names is None:
        features = getattr(dataset, "features", None)
        names = list(features.keys()) if features else []
    return list(names)


def _attach_to_pretokenized(dataset: Any, field: str | None) -> Any:
    """A pre-tokenised dataset: copy the field into ``_ual_uncertainty`` and drop the raw field."""
    if field is None:
        return dataset.add_column(SCORE_COLUMN, [NO_SCORE] * len(dataset))
    values = [float(v) for v in dataset[field]]
    return dataset.remove_columns(field).add_column(SCORE_COLUMN, values)


def _unsupported(dataset_config: Any, cfg: Any) -> ValueError:
    get = dataset_config.get if hasattr(dataset_config, "get") else lambda k, d=None: getattr(dataset_config, k, d)
    return ValueError(
        f"ual_mode: column cannot carry the uncertainty score through dataset {describe_dataset(dataset_config)} of "
        f"type {get('type')!r}: its strategy does not tokenise rows one by one. Use a `type:` like chat_template, "
        f"alpaca, completion or a user-defined format, pre-tokenise the data (input_ids, attention_mask, labels and "
        f"the '{uncertainty_field(cfg)}' column), or use `ual_mode: ppl`, which needs no score."
    )


def _patched_get_dataset_wrapper(original):
    def get_dataset_wrapper(dataset_config, tokenizer, cfg, dataset_base_type, dataset, *args, **kwargs):
        if not column_mode(cfg):
            return original(dataset_config, tokenizer, cfg, dataset_base_type, dataset, *args, **kwargs)
        field = uncertainty_field(cfg)
        split = _SPLIT.get()
        columns = _column_names(dataset)
        has_field = field in columns
        name = f"{'train' if split == 'train' else 'evaluation'} {describe_dataset(dataset_config)}"
        if split == "train" or has_field:
            values = list(dataset[field]) if has_field and hasattr(dataset, "__len__") else None
            if has_field and values is None:
                raise _unsupported(dataset_config, cfg)  # streaming: rows cannot be checked up front
            read_uncertainty(values, field, name, columns)
        token = _CARRY.set(field if has_field else None)
        try:
            wrapped, prompter = original(dataset_config, tokenizer, cfg, dataset_base_type, dataset, *args, **kwargs)
        finally:
            _CARRY.reset(token)
        out_columns = _column_names(wrapped)
        if SCORE_COLUMN not in out_columns:
            if wrapped is dataset and "input_ids" in out_columns:
                wrapped = _attach_to_pretokenized(dataset, field if has_field else None)
            else:
                raise _unsupported(dataset_config, cfg)
        return wrapped, prompter

    get_dataset_wrapper.__ual_original__ = original
    return get_dataset_wrapper


def _patched_wrap_for_tokenized_prompt(original):
    def wrap_dataset_for_tokenized_prompt(prompt_tokenizer, dataset, **kwargs):
        carry = _CARRY.get()
        if carry is _UNSET or isinstance(prompt_tokenizer, CarryScore):
            return original(prompt_tokenizer, dataset, **kwargs)
        return original(CarryScore(prompt_tokenizer, carry), dataset, **kwargs)

    wrap_dataset_for_tokenized_prompt.__ual_original__ = original
    return wrap_dataset_for_tokenized_prompt


def _patched_load_single(original):
    def _load_and_process_single_dataset(*args, **kwargs):
        split = kwargs.get("split", args[3] if len(args) > 3 else "train")
        token = _SPLIT.set(str(split))
        try:
            return original(*args, **kwargs)
        finally:
            _SPLIT.reset(token)

    _load_and_process_single_dataset.__ual_original__ = original
    return _load_and_process_single_dataset


def _file_fingerprints(path: str, limit: int = 10_000) -> list[str]:
    """Size and mtime of a local file, or of the files under a local directory (capped)."""
    out: list[str] = []
    try:
        if os.path.isfile(path):
            st = os.stat(path)
            return [f"{path}:{st.st_size}:{st.st_mtime_ns}"]
        if os.path.isdir(path):
            for root, dirs, files in os.walk(path):
                dirs.sort()
                for name in sorted(files):
                    full = os.path.join(root, name)
                    st = os.stat(full)
                    out.append(f"{full}:{st.st_size}:{st.st_mtime_ns}")
                    if len(out) >= limit:
                        return out
    except OSError:
        pass
    return out


def cache_key_extra(cfg: Any, cfg_datasets: Any) -> str:
    """What column mode adds to Axolotl's prepared-dataset hash: the field and the local data files' state."""
    parts = [CACHE_KEY_VERSION, f"field={uncertainty_field(cfg)}"]
    for ds in cfg_datasets or []:
        get = ds.get if hasattr(ds, "get") else lambda k, d=None, _ds=ds: getattr(_ds, k, d)
        paths = [get("path")]
        data_files = get("data_files")
        if isinstance(data_files, str):
            paths.append(data_files)
        elif isinstance(data_files, (list, tuple)):
            paths.extend(str(p) for p in data_files)
        for p in paths:
            if p:
                parts.extend(_file_fingerprints(str(p)))
    return "|".join(parts)


def _patched_hash(original):
    def generate_dataset_hash_from_config(cfg, cfg_datasets, tokenizer_name):
        base = original(cfg, cfg_datasets, tokenizer_name)
        if not column_mode(cfg):
            return base
        extra = cache_key_extra(cfg, cfg_datasets)
        return hashlib.md5(f"{base}|{extra}".encode(), usedforsecurity=False).hexdigest()

    generate_dataset_hash_from_config.__ual_original__ = original
    return generate_dataset_hash_from_config


def install_dataset_patches() -> None:
    """Patch Axolotl's SFT dataset loading (idempotent). Every patch is a no-op unless the config
    it is called with has ``ual: true`` and ``ual_mode: column``."""
    import axolotl.utils.data.sft as sft
    import axolotl.utils.data.wrappers as wrappers

    patches = (
        (sft, "get_dataset_wrapper", _patched_get_dataset_wrapper),
        (sft, "_load_and_process_single_dataset", _patched_load_single),
        (sft, "generate_dataset_hash_from_config", _patched_hash),
        (wrappers, "wrap_dataset_for_tokenized_prompt", _patched_wrap_for_tokenized_prompt),
    )
    for module, name, make in patches:
        current = getattr(module, name)
        if getattr(current, "__ual_original__", None) is None:
            setattr(module, name, make(current))


def uninstall_dataset_patches() -> None:
    """Undo ``install_dataset_patches`` (used by tests)."""
    import axolotl.utils.data.sft as sft
    import axolotl.utils.data.wrappers as wrappers

    for module, name in (
        (sft, "get_dataset_wrapper"),
        (sft, "_load_and_process_single_dataset"),
        (sft, "generate_dataset_hash_from_config"),
        (wrappers, "wrap_dataset_for_tokenized_prompt"),
    ):
        current = getattr(module, name)
        original = getattr(current, "__ual_original__", None)
        if original is not None:
            setattr(module, name, original)


__all__ = [
    "CarryScore",
    "NO_SCORE",
    "SCORE_COLUMN",
    "cache_key_extra",
    "column_mode",
    "describe_dataset",
    "install_dataset_patches",
    "uninstall_dataset_patches",
]
