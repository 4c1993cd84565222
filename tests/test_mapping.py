import numpy as np
import pytest
import torch

from ual_plugin import fit_smoothing_map, smoothing_from_uncertainty


@pytest.mark.parametrize("alpha", [0.01, 0.1, 0.3, 0.5, 0.9])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mean_is_alpha_exactly(alpha, seed):
    rng = np.random.default_rng(seed)
    u = rng.integers(0, 100, size=500).astype(float)
    u[:3] = 0.0
    v = smoothing_from_uncertainty(u, alpha=alpha, v_max=0.99)
    assert v.dtype == np.float64
    assert abs(v.mean() - alpha) < 1e-9
    assert v.max() <= 0.99 + 1e-12 and v.min() >= 0
    # the map is linear below the cap: order is kept and zero stays zero
    assert np.all(np.diff(v[np.argsort(u, kind="stable")]) >= -1e-15)
    assert np.all(v[u == 0] == 0)


def test_clipping_heavy_case_is_exact():
    # one huge score would swallow the mean without clipping; the exact solve must clip it
    u = np.array([1000.0] + [1.0] * 99)
    v = smoothing_from_uncertainty(u, alpha=0.5, v_max=0.99)
    assert v[0] == pytest.approx(0.99)
    assert abs(v.mean() - 0.5) < 1e-9
    np.testing.assert_allclose(v[1:], v[1])


def test_accepts_list_array_tensor_alike():
    u = [3, 10, 50, 99, 0, 42]
    a = smoothing_from_uncertainty(u, alpha=0.2)
    b = smoothing_from_uncertainty(np.array(u, dtype=np.float32), alpha=0.2)
    c = smoothing_from_uncertainty(torch.tensor(u, dtype=torch.float64), alpha=0.2)
    np.testing.assert_allclose(a, b)
    np.testing.assert_allclose(a, c)
    assert isinstance(c, np.ndarray)


def test_alpha_equal_to_the_reachable_maximum():
    u = [0.0, 5.0, 10.0]
    v = smoothing_from_uncertainty(u, alpha=0.99 * 2 / 3, v_max=0.99)
    np.testing.assert_allclose(v, [0.0, 0.99, 0.99])


def test_fit_then_apply_to_other_split():
    smap = fit_smoothing_map([10.0, 20.0, 30.0], alpha=0.2)
    np.testing.assert_allclose(smap([10.0, 20.0, 30.0]).mean(), 0.2)
    # a new sample gets the training beta, not a re-fit
    assert smap([20.0])[0] == pytest.approx(smap.beta * 20.0)
    assert smap([1e9])[0] == pytest.approx(0.99)


@pytest.mark.parametrize(
    ("u", "kwargs", "pattern"),
    [
        ([1.0, float("nan"), 2.0], {}, r"index 1 is NaN"),
        ([1.0, 2.0, float("inf")], {}, r"index 2 is infinite"),
        ([1.0, -3.0, 2.0], {}, r"index 1 is negative"),
        ([], {}, r"no uncertainty score"),
        ([1.0, 2.0], {"alpha": 0.0}, r"ual_alpha must be > 0"),
        ([1.0, 2.0], {"alpha": -0.1}, r"ual_alpha must be > 0"),
        ([1.0, 2.0], {"alpha": 0.995, "v_max": 0.99}, r"above ual_v_max"),
        ([0.0, 0.0, 0.0, 5.0], {"alpha": 0.5}, r"cannot be reached: 3 of 4 uncertainty scores are 0"),
        ([0.0, 0.0], {"alpha": 0.1}, r"cannot be reached"),
        (["a", 1.0], {}, r"must be numbers"),
        ([1.0], {"v_max": 1.5}, r"ual_v_max must lie in"),
    ],
)
def test_bad_inputs_raise_clear_errors(u, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        smoothing_from_uncertainty(u, **kwargs)
