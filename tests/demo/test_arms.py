"""The smoothed arms share one budget on the demo data (the unit of the comparison: per label token)."""

import numpy as np
import pytest

pytest.importorskip("trl")

from ual_plugin.data import SAMPLE_COLUMN, label_token_counts  # noqa: E402
from ual_plugin.demo.arms import ARMS, trainer_options, training_rows  # noqa: E402
from ual_plugin.demo.tiny import build_tiny_llama, build_word_tokenizer  # noqa: E402
from ual_plugin.demo.world import World, finetuning_rows, vocabulary  # noqa: E402

pytestmark = pytest.mark.slow


def _trained_smoothing(model_dir, rows, options, tmp_path):
    """Per-sample smoothing and label-token counts exactly as UALSFTTrainer prepared the training set."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ual_plugin.trl import UALSFTConfig, UALSFTTrainer

    args = UALSFTConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[], assistant_only_loss=True,
                        max_length=32, dataset_num_proc=None, disable_tqdm=True, **options)
    tr = UALSFTTrainer(model=AutoModelForCausalLM.from_pretrained(model_dir), args=args,
                       train_dataset=Dataset.from_list(rows), processing_class=AutoTokenizer.from_pretrained(model_dir))
    ds = tr.train_dataset
    return np.array(ds[SAMPLE_COLUMN], dtype=np.float64), label_token_counts(ds["labels"])


def test_smoothed_arms_have_the_same_budget_per_label_token(tmp_path):
    model_dir = build_tiny_llama(tmp_path / "m", tokenizer=build_word_tokenizer(vocabulary()), hidden_size=32)
    rows = finetuning_rows(World.draw(1))
    arms = {a.key: a for a in ARMS}
    ual_v, tokens = _trained_smoothing(model_dir, training_rows(arms["ual"], rows, 1),
                                       trainer_options(arms["ual"], 0.1), tmp_path / "u")
    assert set(tokens) == {2.0, 3.0}  # open-ended rows are longer: the two units differ
    ual_per_sample = float(ual_v.mean())
    assert abs(ual_per_sample - 0.1) > 0.005
    means = {"ual": (ual_v * tokens).sum() / tokens.sum()}
    for key in ("shuffled", "uniform_token"):
        v, t = _trained_smoothing(model_dir, training_rows(arms[key], rows, 1),
                                  trainer_options(arms[key], 0.1), tmp_path / key)
        means[key] = (v * t).sum() / t.sum()
    for key in ("ual", "shuffled", "uniform_token"):
        assert means[key] == pytest.approx(0.1, abs=1e-6), key


def test_shuffled_scores_are_a_permutation_of_uals():
    rows = finetuning_rows(World.draw(0))
    arms = {a.key: a for a in ARMS}
    ual = [r["uncertainty"] for r in training_rows(arms["ual"], rows, 0)]
    shuffled = [r["uncertainty"] for r in training_rows(arms["shuffled"], rows, 0)]
    assert sorted(ual) == sorted(shuffled) and ual != shuffled
    assert all("uncertainty" not in r for r in training_rows(arms["uniform_token"], rows, 0))
