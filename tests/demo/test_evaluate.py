import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from ual_plugin.demo.evaluate import METRIC_KEYS, distinct_in_samples, evaluate, expected_calibration_error  # noqa: E402
from ual_plugin.demo.tiny import build_tiny_llama, build_word_tokenizer  # noqa: E402
from ual_plugin.demo.world import World, vocabulary  # noqa: E402


def test_ece_by_hand():
    # two answers at 0.9 (one right), two at 0.3 (both wrong)
    assert expected_calibration_error([0.9, 0.9, 0.3, 0.3], [1, 0, 0, 0]) == pytest.approx(0.5 * 0.4 + 0.5 * 0.3)
    assert expected_calibration_error([1.0, 1.0], [1, 1]) == pytest.approx(0.0)


def test_top_p_keeps_only_the_head():
    probs = torch.tensor([0.6, 0.35, 0.05])
    gen = torch.Generator().manual_seed(0)
    assert distinct_in_samples(probs, [0, 1, 2], 200, 0.9, gen) == 2.0  # 0.05 lies beyond top-p 0.9
    assert distinct_in_samples(probs, [2], 200, 0.9, gen) == 0.0


def test_evaluate_a_model_against_itself(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = build_tiny_llama(tmp_path / "m", tokenizer=build_word_tokenizer(vocabulary()), hidden_size=32)
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    m = evaluate(model, model, tok, World.draw(0), seed=0)
    assert set(m) == set(METRIC_KEYS)
    assert m["retention_kl"] == pytest.approx(0.0, abs=1e-6)
    assert m["open_train_mass"] + m["open_heldout_mass"] + m["open_invalid_mass"] == pytest.approx(1.0)
    assert 0.0 <= m["fact_unseen_p"] <= 1.0 and 0.0 <= m["fact_ece"] <= 1.0
