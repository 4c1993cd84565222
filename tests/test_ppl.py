import math

import pytest
import torch

from ual_plugin.ppl import PPLSmoother, UALLoss, per_sample_ppl, ppl_token_smoothing


def test_per_sample_ppl_is_exp_mean_nll_over_label_tokens():
    nll = torch.tensor([[1.0, 2.0, 3.0], [0.5, 0.5, 9.0]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    seg = torch.tensor([[0, 0, 0], [1, 1, 1]])
    ppl, idx = per_sample_ppl(nll, seg, mask)
    torch.testing.assert_close(ppl, torch.tensor([math.exp(1.5), math.exp(10 / 3)]))
    assert idx.tolist() == [[0, 0, 0], [1, 1, 1]]


def test_smoother_uses_running_average_and_caps():
    s = PPLSmoother(alpha=0.2, v_max=0.4, window=0)
    v1 = s(torch.tensor([1.0, 3.0]))  # mean 2
    torch.testing.assert_close(v1, torch.tensor([0.1, 0.3]))
    v2 = s(torch.tensor([14.0]))  # running mean (1+3+14)/3 = 6 -> 0.2*14/6 capped at 0.4
    torch.testing.assert_close(v2, torch.tensor([0.4]))
    assert s.running_mean == pytest.approx(6.0)
    with pytest.raises(ValueError, match="ual_alpha"):
        PPLSmoother(alpha=0.0)


def test_token_smoothing_zero_off_mask():
    s = PPLSmoother(alpha=0.1)
    nll = torch.tensor([[1.0, 1.0, 1.0]])
    mask = torch.tensor([[False, True, True]])
    eps = ppl_token_smoothing(s, nll, torch.zeros(1, 3, dtype=torch.long), mask)
    torch.testing.assert_close(eps, torch.tensor([[0.0, 0.1, 0.1]]))


def test_ual_loss_matches_explicit_formula():
    torch.manual_seed(0)
    logits = torch.randn(3, 6, 17, requires_grad=True)
    labels = torch.randint(0, 17, (3, 6))
    labels[:, :2] = -100
    loss_fn = UALLoss(alpha=0.3)
    out = loss_fn({"logits": logits}, labels, num_items_in_batch=torch.tensor(20))
    # explicit: per-row ppl -> smoothing alpha*ppl/mean(ppl) -> torch label-smoothed CE per token / 20
    z, t = logits[:, :-1].detach(), labels[:, 1:]
    mask = t != -100
    nll = torch.nn.functional.cross_entropy(z.reshape(-1, 17), t.reshape(-1), reduction="none").reshape(t.shape)
    ppl = torch.exp((nll * mask).sum(1) / mask.sum(1))
    eps = (0.3 * ppl / ppl.mean()).clamp(max=0.99)
    total = 0.0
    for r in range(3):
        for c in range(t.shape[1]):
            if mask[r, c]:
                total = total + torch.nn.functional.cross_entropy(
                    logits[r, c : c + 1], t[r, c : c + 1], label_smoothing=float(eps[r])
                )
    torch.testing.assert_close(out, total / 20, rtol=1e-5, atol=1e-6)
    assert loss_fn.last_mean_smoothing == pytest.approx(float((eps[:, None] * mask).sum() / mask.sum()), rel=1e-5)


def test_window_follows_falling_perplexities_where_history_decays():
    """Perplexities fall fast, then level off (as in fine-tuning): the all-history mean stays dominated by
    the early ones and the mean smoothing collapses; the windowed mean follows and it returns to alpha."""
    history, recent = PPLSmoother(alpha=0.1, window=0), PPLSmoother(alpha=0.1, window=16)
    g = torch.Generator().manual_seed(0)
    for step in range(40):
        ppl = (5 + 1000.0 * 0.7**step) * (0.5 + torch.rand(8, generator=g))
        mean_history, mean_recent = float(history(ppl).mean()), float(recent(ppl).mean())
    assert mean_history < 0.01  # the collapse the paper's plain average gives
    assert 0.09 < mean_recent < 0.12
    assert recent.count == history.count == 320


def test_window_weights_fall_by_e_every_window_samples():
    s = PPLSmoother(alpha=0.1, window=4)
    s(torch.tensor([10.0, 10.0, 10.0, 10.0]))
    s(torch.tensor([1.0, 1.0, 1.0, 1.0]))  # the first four now weigh 1/e each
    w = math.exp(-1)
    assert s.running_mean == pytest.approx((40 * w + 4) / (4 * w + 4))
    restored = PPLSmoother(alpha=0.1, window=4)
    restored.load_state_dict(s.state_dict())
    assert restored.running_mean == pytest.approx(s.running_mean) and restored.count == 8


@pytest.mark.parametrize("window", [-1, 2.5, True])
def test_window_must_be_a_whole_number_of_samples(window):
    with pytest.raises(ValueError, match="ual_ppl_window"):
        PPLSmoother(alpha=0.1, window=window)
