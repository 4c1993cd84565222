import pytest
import torch

from ual_plugin.trainer_core import SmoothingWindow


def stats(smoothing_sum, n_tokens, n_correct):
    return {"smoothing_sum": torch.tensor(smoothing_sum), "n_tokens": torch.tensor(n_tokens),
            "n_correct": torch.tensor(n_correct)}


def test_smoothing_window_is_token_weighted_and_resets():
    w = SmoothingWindow()
    w.add("train", stats(1.0, 10, 4))
    w.add("train", stats(3.0, 10, 6))
    assert w.pop("train") == pytest.approx({"ual_smoothing": 0.2, "mean_token_accuracy": 0.5})
    assert w.pop("train") == {}
    assert w.pop("eval") == {}
