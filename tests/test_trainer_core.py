import pytest
import torch

from ual_plugin.trainer_core import SmoothingWindow


def stats(smoothing_sum, n_tokens, n_correct, **more):
    return {"smoothing_sum": torch.tensor(smoothing_sum), "n_tokens": torch.tensor(n_tokens),
            "n_correct": torch.tensor(n_correct), **{k: torch.tensor(v) for k, v in more.items()}}


def test_smoothing_window_is_token_weighted_and_resets():
    w = SmoothingWindow()
    w.add("train", stats(1.0, 10, 4, entropy_sum=20.0, entropy_tokens=10))
    w.add("train", stats(3.0, 10, 6))  # a step that did not measure the entropy
    assert w.pop("train") == pytest.approx({"ual_smoothing": 0.2, "mean_token_accuracy": 0.5, "entropy": 2.0})
    assert w.pop("train") == {}
    assert w.pop("eval") == {}
    # evaluation also reports the unsmoothed NLL per label token
    w.add("eval", stats(2.0, 8, 4, entropy_sum=8.0, entropy_tokens=8, nll_sum=12.0))
    assert w.pop("eval") == pytest.approx({"ual_smoothing": 0.25, "mean_token_accuracy": 0.5, "entropy": 1.0,
                                           "nll": 1.5})
