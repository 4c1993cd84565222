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


def _lengths_10x(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    u = rng.integers(0, 100, size=n).astype(float)
    tokens = rng.integers(10, 101, size=n).astype(float)  # rows 10 to 100 label tokens long
    tokens[0], tokens[1] = 10.0, 100.0
    return u, tokens


@pytest.mark.parametrize("per", ["sample", "token"])
@pytest.mark.parametrize("alpha", [0.05, 0.1, 0.3, 0.9])
def test_chosen_unit_mean_is_alpha(per, alpha):
    u, tokens = _lengths_10x(400, seed=3)
    smap = fit_smoothing_map(u, alpha=alpha, per=per, tokens=tokens)
    v = smap(u)
    per_sample, per_token = v.mean(), (v * tokens).sum() / tokens.sum()
    assert abs((per_sample if per == "sample" else per_token) - alpha) < 1e-6
    assert smap.mean_per_sample == pytest.approx(per_sample, abs=1e-12)
    assert smap.mean_per_token == pytest.approx(per_token, abs=1e-12)
    assert smap.per == per


def test_units_differ_when_long_rows_are_uncertain():
    # long rows with high scores: per token the same beta gives a larger mean, so the token fit needs a smaller beta
    u = np.array([90.0] * 10 + [5.0] * 10)
    tokens = np.array([100.0] * 10 + [10.0] * 10)
    by_sample = fit_smoothing_map(u, alpha=0.1, per="sample", tokens=tokens)
    by_token = fit_smoothing_map(u, alpha=0.1, per="token", tokens=tokens)
    assert by_sample.mean_per_token > 0.15 and by_token.mean_per_sample < 0.06
    assert by_token.beta < by_sample.beta
    assert "per label token" in by_sample.describe_means() and "ual_alpha_per=sample" in by_sample.describe_means()


def test_token_unit_with_clipping_is_exact():
    u = np.array([1000.0, 1.0, 1.0, 1.0])
    tokens = np.array([50.0, 5.0, 5.0, 40.0])
    v = fit_smoothing_map(u, alpha=0.6, per="token", tokens=tokens)(u)
    assert v[0] == pytest.approx(0.99)
    assert abs((v * tokens).sum() / tokens.sum() - 0.6) < 1e-9


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"per": "row"}, r"ual_alpha_per must be one of sample, token"),
        ({"per": "token"}, r"needs each sample's label-token count"),
        ({"per": "token", "tokens": [1.0, 2.0]}, r"2 label-token counts for 3"),
        ({"per": "token", "tokens": [1.0, -2.0, 3.0]}, r"index 1 is -2.0"),
        ({"per": "token", "tokens": [0.0, 0.0, 0.0]}, r"no sample has a label token"),
        ({"per": "token", "tokens": [9.0, 0.5, 0.5], "alpha": 0.5}, r"cannot be reached.*label tokens"),
    ],
)
def test_bad_token_fits_raise(kwargs, pattern):
    u = [0.0, 10.0, 20.0]
    alpha = kwargs.pop("alpha", 0.1)
    with pytest.raises(ValueError, match=pattern):
        fit_smoothing_map(u, alpha=alpha, **kwargs)
