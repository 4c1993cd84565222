"""In-process: the score column through Axolotl's own dataset code (strategies, merge, truncation,
split, cache key) and the UAL collator around each of Axolotl's collators."""

from __future__ import annotations

import re
import time

import pytest

pytest.importorskip("axolotl")

import torch  # noqa: E402

from tests.axolotl.helpers import score_of  # noqa: E402
from ual_plugin.axolotl.collator import UALCollator  # noqa: E402
from ual_plugin.axolotl.dataset import NO_SCORE, SCORE_COLUMN  # noqa: E402
from ual_plugin.data import TOKEN_COLUMN  # noqa: E402

pytestmark = pytest.mark.axolotl

_ID = re.compile(r"id (\d+)")


def prepare_cfg(raw: dict):
    """Axolotl's config path without the CLI's logging / telemetry side effects."""
    from axolotl.cli.config import gpu_capabilities, prepare_plugins
    from axolotl.utils.config import normalize_cfg_datasets, normalize_config, validate_config
    from axolotl.utils.dict import DictDefault

    cfg = DictDefault(raw)
    prepare_plugins(cfg)
    caps, env_caps = gpu_capabilities()
    cfg = validate_config(cfg, capabilities=caps, env_capabilities=env_caps)
    normalize_config(cfg)
    normalize_cfg_datasets(cfg)
    return cfg


def load(raw: dict):
    from axolotl.loaders import load_tokenizer
    from axolotl.utils.data import prepare_datasets

    cfg = prepare_cfg(raw)
    tokenizer = load_tokenizer(cfg)
    train, evaluation, _, _ = prepare_datasets(cfg, tokenizer)
    return cfg, tokenizer, train, evaluation


def row_id(tokenizer, input_ids) -> int | None:
    ids = {int(m) for m in _ID.findall(tokenizer.decode(input_ids))}
    assert len(ids) <= 1, ids
    return ids.pop() if ids else None


@pytest.fixture(scope="module")
def merged(workspace):
    """chat_template + alpaca + completion, merged, shuffled, split 80/20."""
    ws = workspace
    raw = ws.base_config(
        "pipeline-merged",
        datasets=[
            {"path": str(ws.data / "chat.jsonl"), "type": "chat_template", "ds_type": "json"},
            {"path": str(ws.data / "alpaca.jsonl"), "type": "alpaca", "ds_type": "json"},
            {"path": str(ws.data / "completion.jsonl"), "type": "completion", "ds_type": "json"},
        ],
        sequence_len=160,  # completion splits its long texts at this length
        val_set_size=0.2,
    )
    return load(raw)


def test_every_row_keeps_its_own_score(merged):
    cfg, tokenizer, train, evaluation = merged
    assert SCORE_COLUMN in train.column_names and SCORE_COLUMN in evaluation.column_names
    seen: list[int] = []
    for ds in (train, evaluation):
        for row in ds:
            rid = row_id(tokenizer, row["input_ids"])  # rows cut before their "id N" text are skipped
            if rid is not None:
                assert row[SCORE_COLUMN] == score_of(rid), (rid, row[SCORE_COLUMN])
                seen.append(rid)
    assert len(seen) >= 0.6 * (len(train) + len(evaluation))
    assert any(i < 48 for i in seen) and any(300 <= i < 332 for i in seen)  # chat_template and alpaca rows
    # completion splits each long text into several rows, each carrying that text's score
    assert sum(1 for i in seen if 400 <= i < 416) > 16


def test_truncation_keeps_rows_and_scores(workspace):
    ws = workspace
    raw = ws.base_config("pipeline-truncate", sequence_len=24, excess_length_strategy="truncate")
    _, _, train, _ = load(raw)
    assert len(train) == 48 and max(len(r["input_ids"]) for r in train) == 24
    assert sorted(train[SCORE_COLUMN]) == sorted(score_of(i) for i in range(48))


def test_collator_lays_smoothing_out_like_input_ids(merged):
    from axolotl.utils.collators import (
        BatchSamplerDataCollatorForSeq2Seq,
        DataCollatorForSeq2Seq,
        V2BatchSamplerDataCollatorForSeq2Seq,
    )
    from transformers import DataCollatorWithFlattening

    cfg, tokenizer, train, _ = merged
    rows = [dict(train[i]) for i in range(6)]
    for r in rows:
        r.pop("position_ids", None), r.pop("length", None)

    def to_smoothing(u):
        return u / 1000.0

    def expected(rs):
        return [[r[SCORE_COLUMN] / 1000.0] * len(r["input_ids"]) for r in rs]

    def check_row(batch, b, values):
        got = batch[TOKEN_COLUMN][b]
        n = len(values)
        ids = batch["input_ids"][b]
        if tokenizer.padding_side == "left":
            got, ids = got.flip(0), ids.flip(0)
            values = values[::-1]
        assert torch.allclose(got[:n], torch.tensor(values, dtype=torch.float32))
        assert torch.all(got[n:] == 0)
        assert got.shape == ids.shape

    # padded, both padding sides
    for side in ("right", "left"):
        tokenizer.padding_side = side
        inner = DataCollatorForSeq2Seq(tokenizer, padding=True, pad_to_multiple_of=64, return_tensors="pt")
        batch = UALCollator(inner, to_smoothing)([dict(r) for r in rows[:3]])
        for b, values in enumerate(expected(rows[:3])):
            check_row(batch, b, values)
        assert SCORE_COLUMN not in batch
    tokenizer.padding_side = "right"

    # multipack V1 and V2: a list of bins; each bin's samples concatenated into one row
    bins = [[dict(r) for r in rows[:2]], [dict(r) for r in rows[2:5]]]
    for cls in (BatchSamplerDataCollatorForSeq2Seq, V2BatchSamplerDataCollatorForSeq2Seq):
        inner = cls(tokenizer, padding=True, pad_to_multiple_of=64, return_tensors="pt")
        batch = UALCollator(inner, to_smoothing)([[dict(f) for f in b] for b in bins])
        assert batch["input_ids"].shape[0] == 2
        for b, group in enumerate((rows[:2], rows[2:5])):
            check_row(batch, b, [v for vals in expected(group) for v in vals])
        # a flat list is one bin for these collators
        flat = UALCollator(inner, to_smoothing)([dict(r) for r in rows[:3]])
        check_row(flat, 0, [v for vals in expected(rows[:3]) for v in vals])

    # padding-free flattening: every example in one row
    inner = DataCollatorWithFlattening()
    batch = UALCollator(inner, to_smoothing)([{k: r[k] for k in ("input_ids", "labels", SCORE_COLUMN)} for r in rows])
    check_row(batch, 0, [v for vals in expected(rows) for v in vals])

    # evaluation rows without a score get smoothing 0
    inner = DataCollatorForSeq2Seq(tokenizer, padding=True, return_tensors="pt")
    unscored = [dict(rows[0], **{SCORE_COLUMN: NO_SCORE})]
    assert torch.all(UALCollator(inner, to_smoothing)(unscored)[TOKEN_COLUMN] == 0)


@pytest.mark.parametrize(
    "ds_type",
    [
        "alpaca_chat",
        "alpaca:phi",
        {"field_instruction": "instruction", "field_output": "output", "format": "Q: {instruction}\nA: ",
         "no_input_format": "Q: {instruction}\nA: "},
    ],
    ids=["alpaca_chat", "alpaca:phi", "user-defined"],
)
def test_other_instruction_formats(workspace, ds_type):
    ws = workspace
    raw = ws.base_config(
        f"pipeline-{ds_type if isinstance(ds_type, str) else 'user'}",
        datasets=[{"path": str(ws.data / "alpaca.jsonl"), "type": ds_type, "ds_type": "json"}],
        sequence_len=256,
    )
    _, tokenizer, train, _ = load(raw)
    assert len(train) == 32
    for row in train:
        assert row[SCORE_COLUMN] == score_of(row_id(tokenizer, row["input_ids"]))


def test_pretokenized_dataset_gets_its_field(workspace):
    ws = workspace
    raw = ws.base_config("pipeline-pretok", datasets=[{"path": str(ws.data / "pretok.jsonl"), "ds_type": "json"}])
    _, tokenizer, train, _ = load(raw)
    assert "uncertainty" not in train.column_names  # the raw field is moved into the score column
    for row in train:
        assert row[SCORE_COLUMN] == score_of(row_id(tokenizer, row["input_ids"]))


def test_training_dataset_without_the_field_stops_with_its_name(workspace):
    ws = workspace
    raw = ws.base_config(
        "pipeline-noscore",
        datasets=[{"path": str(ws.data / "chat_noscore.jsonl"), "type": "chat_template", "ds_type": "json"}],
    )
    with pytest.raises(ValueError) as info:
        load(raw)
    msg = str(info.value)
    assert "chat_noscore.jsonl" in msg and "no column 'uncertainty'" in msg and "ual_mode: ppl" in msg


def test_custom_field_name(workspace, tmp_path):
    import json

    ws = workspace
    src = ws.data / "chat.jsonl"
    dst = tmp_path / "chat_score.jsonl"
    with open(src) as f, open(dst, "w") as g:
        for line in f:
            r = json.loads(line)
            r["difficulty"] = r.pop("uncertainty")
            g.write(json.dumps(r) + "\n")
    raw = ws.base_config(
        "pipeline-field",
        datasets=[{"path": str(dst), "type": "chat_template", "ds_type": "json"}],
        ual_uncertainty_field="difficulty",
        dataset_prepared_path=str(tmp_path / "prepared"),
    )
    _, tokenizer, train, _ = load(raw)
    for row in train:
        assert row[SCORE_COLUMN] == score_of(row_id(tokenizer, row["input_ids"]))


def test_evaluation_dataset_without_scores_gets_zero_smoothing(workspace):
    ws = workspace
    raw = ws.base_config(
        "pipeline-testsets",
        test_datasets=[
            {"path": str(ws.data / "chat_noscore.jsonl"), "type": "chat_template", "ds_type": "json", "split": "train"}
        ],
    )
    _, _, train, evaluation = load(raw)
    assert set(evaluation[SCORE_COLUMN]) == {NO_SCORE}
    assert min(train[SCORE_COLUMN]) >= 45


def test_ppl_mode_adds_no_column_and_needs_no_field(workspace):
    ws = workspace
    raw = ws.base_config(
        "pipeline-ppl",
        datasets=[{"path": str(ws.data / "chat_noscore.jsonl"), "type": "chat_template", "ds_type": "json"}],
        ual_mode="ppl",
    )
    _, _, train, _ = load(raw)
    assert SCORE_COLUMN not in train.column_names


def test_prepared_dataset_cache_key(workspace, tmp_path):
    """The cache holds raw scores only (smoothing is fitted per run), and its key follows the field,
    the mode and the data files; ual_alpha / ual_v_max do not need to (and do not) change it."""
    import shutil

    import axolotl.utils.data.sft as sft

    ws = workspace
    data = tmp_path / "chat.jsonl"
    shutil.copy(ws.data / "chat.jsonl", data)
    base = ws.base_config("cache", datasets=[{"path": str(data), "type": "chat_template", "ds_type": "json"}])
    cfg = prepare_cfg(base)

    def key(**changes):
        c = prepare_cfg({**base, **changes})
        return sft.generate_dataset_hash_from_config(c, c.datasets, "tok")

    k0 = key()
    assert key(ual_alpha=0.3, ual_v_max=0.5) == k0
    assert key(ual_uncertainty_field="score") != k0
    assert key(ual_mode="ppl") != k0
    assert key(ual=False) == key(ual_mode="ppl") == sft.generate_dataset_hash_from_config.__ual_original__(
        cfg, cfg.datasets, "tok"
    )
    time.sleep(0.01)
    data.write_text(data.read_text().replace('"uncertainty": 45.0', '"uncertainty": 46.0'))
    assert key() != k0  # a re-scored file is tokenised again
