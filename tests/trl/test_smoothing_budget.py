"""``ual_alpha_per`` (the unit of the mean smoothing) and ``ual_mode='uniform'`` in ``UALSFTTrainer``."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("datasets")
pytest.importorskip("trl")

from datasets import Dataset  # noqa: E402

from tests.trl.test_trainer import all_batches, trainer  # noqa: E402
from ual_plugin.data import SAMPLE_COLUMN, TOKEN_COLUMN, label_token_counts  # noqa: E402

pytestmark = pytest.mark.slow


def lengths_vary_10x(n: int = 16) -> Dataset:
    """Prompt-completion rows whose completions run from 2 to 40 words; longer rows get higher scores."""
    rows = []
    for i in range(n):
        words = 2 + (38 * i) // (n - 1)
        rows.append({"prompt": f"Sample {i}: say it", "completion": " " + " ".join(["more"] * words),
                     "uncertainty": float(5 + 6 * i)})
    return Dataset.from_list(rows)


@pytest.mark.parametrize("per", ["sample", "token"])
def test_fitted_mean_holds_in_the_chosen_unit(tiny_model_dir, tmp_path, per, caplog):
    with caplog.at_level(logging.WARNING, logger="ual_plugin"):
        tr = trainer(tiny_model_dir, lengths_vary_10x(), tmp_path, ual_alpha=0.1, ual_alpha_per=per,
                     completion_only_loss=True, max_length=128)
    train = tr.train_dataset
    tokens = label_token_counts(train["labels"])
    assert tokens.max() >= 10 * tokens.min()
    values = np.array(train[SAMPLE_COLUMN], dtype=np.float64)  # one value per sample
    per_sample, per_token = values.mean(), (values * tokens).sum() / tokens.sum()
    assert abs((per_sample if per == "sample" else per_token) - 0.1) < 1e-6
    assert abs((per_token if per == "sample" else per_sample) - 0.1) > 0.01  # the other unit differs here
    smap = tr.ual_map
    assert smap.per == per
    assert smap.mean_per_sample == pytest.approx(per_sample, abs=1e-9)
    assert smap.mean_per_token == pytest.approx(per_token, abs=1e-9)
    banner = [r.getMessage() for r in caplog.records if "UAL active" in r.getMessage()]
    assert len(banner) == 1
    assert f"{per_sample:.4g} per sample" in banner[0] and f"{per_token:.4g} per label token" in banner[0]
    assert f"ual_alpha_per={per}" in banner[0]


@pytest.mark.parametrize("per", ["token", "sample"])
def test_logged_smoothing_in_the_chosen_unit_is_alpha(tiny_model_dir, tmp_path, per):
    """Over one epoch the log's mean per label token (ual_smoothing) and per sample (ual_smoothing_per_sample)
    are both shown; the one in the chosen unit equals alpha."""
    ds = lengths_vary_10x()
    tr = trainer(tiny_model_dir, ds, tmp_path, ual_alpha=0.1, ual_alpha_per=per, completion_only_loss=True,
                 max_length=128, per_device_train_batch_size=16, max_steps=1, logging_steps=1)
    tr.train()
    log = next(h for h in tr.state.log_history if "ual_smoothing" in h)
    chosen, other = ("ual_smoothing", "ual_smoothing_per_sample")[:: 1 if per == "token" else -1]
    assert log[chosen] == pytest.approx(0.1, abs=1e-6)
    assert abs(log[other] - 0.1) > 0.01  # the two units differ on these rows


def test_uniform_mode_needs_no_column_and_matches_torch_label_smoothing(tiny_model_dir, tmp_path, caplog):
    ds = lengths_vary_10x(8).remove_columns("uncertainty")
    with caplog.at_level(logging.WARNING, logger="ual_plugin"):
        tr = trainer(tiny_model_dir, ds, tmp_path, ual_mode="uniform", ual_alpha=0.2, completion_only_loss=True,
                     max_length=128, per_device_train_batch_size=8)
    assert tr.ual_map is None
    assert any("mode=uniform" in r.getMessage() for r in caplog.records)
    batch = all_batches(tr)[0]
    labels = batch["labels"]
    torch.testing.assert_close(batch[TOKEN_COLUMN][labels != -100], torch.full((int((labels != -100).sum()),), 0.2))
    n = int((labels[:, 1:] != -100).sum())
    model = tr.model
    ours = tr.compute_loss(model, dict(batch), num_items_in_batch=torch.tensor(n))
    kwargs = {k: v for k, v in batch.items() if k not in ("labels", TOKEN_COLUMN)}
    logits = model(**kwargs).logits[:, :-1]
    ref = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100,
                          label_smoothing=0.2, reduction="sum") / n
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)


def test_uniform_mode_trains_and_logs_alpha(tiny_model_dir, tmp_path):
    ds = lengths_vary_10x(8).remove_columns("uncertainty")
    tr = trainer(tiny_model_dir, ds, tmp_path, ual_mode="uniform", ual_alpha=0.15, max_steps=2, packing=True,
                 max_length=64)
    tr.train()
    logged = [h["ual_smoothing"] for h in tr.state.log_history if "ual_smoothing" in h]
    assert len(logged) == 2 and all(v == pytest.approx(0.15, abs=1e-6) for v in logged)


def test_bad_alpha_per_is_refused(tmp_path):
    from tests.trl.test_trainer import config

    with pytest.raises(ValueError, match="ual_alpha_per must be one of sample, token"):
        config(tmp_path, ual_alpha_per="row")
