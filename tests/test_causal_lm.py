import pytest
import torch

from ual_plugin.causal_lm import SmoothingWindow, UALLossOutput, refuse_sharded_head


def test_refuses_fsdp_with_a_clear_message():
    with pytest.raises(ValueError, match="ual does not support FSDP"):
        refuse_sharded_head(True)
    refuse_sharded_head(False)  # plain DDP / single process: fine


def test_smoothing_window_is_token_weighted_and_resets():
    w = SmoothingWindow()
    w.add("train", UALLossOutput(torch.tensor(0.0), torch.tensor(1.0), torch.tensor(10), torch.tensor(4)))
    w.add("train", UALLossOutput(torch.tensor(0.0), torch.tensor(3.0), torch.tensor(10), torch.tensor(6)))
    assert w.pop("train") == pytest.approx({"ual_smoothing": 0.2, "mean_token_accuracy": 0.5})
    assert w.pop("train") == {}
    assert w.pop("eval") == {}
