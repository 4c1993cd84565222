"""``linear_smoothed_cross_entropy`` without host synchronisation (``skip_ignored=False``, the default on
accelerators): no op that reads a device value on the host is dispatched in the forward or backward
pass, and the results equal those of the gathering path."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from tests.conftest import TRITON_INTERPRETED
from tests.test_loss import make_case
from ual_plugin import linear_smoothed_cross_entropy

# Ops whose result (or output shape) depends on tensor values, so that a GPU must finish first.
_SYNCING = {"_local_scalar_dense", "item", "is_nonzero", "nonzero", "masked_select", "unique", "_unique2",
            "repeat_interleave"}


class SyncingOps(TorchDispatchMode):
    """Records every dispatched op that needs tensor values on the host."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        bool_index = name == "index" and any(
            t is not None and t.dtype == torch.bool for t in (args[1] if len(args) > 1 else ())
        )
        if name in _SYNCING or bool_index:
            self.seen.append(name)
        return func(*args, **(kwargs or {}))


KERNELS = ["torch"] + (["triton"] if TRITON_INTERPRETED or torch.cuda.is_available() else [])


@pytest.fixture(params=KERNELS)
def kernel(request, monkeypatch):
    if request.param == "triton" and not torch.cuda.is_available():
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    return request.param


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_no_host_sync_in_forward_or_backward(kernel, reduction):
    hidden, weight, bias, targets, eps = make_case(n=40, h=16, v=37, seed=2, with_bias=True)
    stats = {}
    with SyncingOps() as ops:
        out = linear_smoothed_cross_entropy(hidden, weight, targets, eps, bias=bias, reduction=reduction,
                                            chunk_size=16, kernel=kernel, stats=stats, skip_ignored=False)
        upstream = torch.ones_like(out) / 7
        torch.autograd.grad(out, [hidden, weight, bias], upstream)
    assert ops.seen == [], ops.seen
    assert isinstance(stats["n_tokens"], torch.Tensor) and isinstance(stats["n_correct"], torch.Tensor)


def test_the_gathering_path_does_sync():
    """The detector works: the gathering path (CPU's default) reads the label count on the host."""
    hidden, weight, _, targets, eps = make_case(seed=3)
    with SyncingOps() as ops:
        linear_smoothed_cross_entropy(hidden, weight, targets, eps, skip_ignored=True)
    assert "nonzero" in ops.seen


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_sync_free_path_equals_gathering_path(kernel, reduction):
    hidden, weight, bias, targets, eps = make_case(n=40, h=16, v=37, seed=4, with_bias=True)
    results = {}
    for skip in (True, False):
        stats = {}
        out = linear_smoothed_cross_entropy(hidden, weight, targets, eps, bias=bias, reduction=reduction,
                                            chunk_size=16, kernel=kernel, stats=stats, skip_ignored=skip)
        upstream = torch.linspace(0.5, 1.5, out.numel()).reshape(out.shape)
        results[skip] = (out, *torch.autograd.grad(out, [hidden, weight, bias], upstream),
                         stats["n_tokens"], stats["n_correct"])
    for a, b in zip(results[True], results[False], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert int(results[False][-2]) == int((targets != -100).sum())


def test_sync_free_path_rejects_bad_targets_on_the_device():
    hidden, weight, _, targets, eps = make_case(seed=5)
    targets[1] = 37
    with pytest.raises(RuntimeError, match="target ids must lie"):
        linear_smoothed_cross_entropy(hidden, weight, targets, eps, skip_ignored=False)
