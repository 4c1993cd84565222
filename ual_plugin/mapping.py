"""Uncertainty scores -> per-sample label-smoothing values (the paper's truncated linear map).

v_i = min(beta * u_i, v_max), with beta solved exactly so that mean(v) == alpha. The solve is a
closed form over the sorted scores (no iterate-and-clip loop that can fail to terminate).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

DEFAULT_ALPHA = 0.1
DEFAULT_V_MAX = 0.99


def _to_numpy(values: Any) -> np.ndarray:
    if hasattr(values, "detach"):  # torch tensor, without importing torch here
        values = values.detach().cpu().numpy()
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"uncertainty scores must be numbers; could not read them as floats ({err})") from None
    return arr.reshape(-1)


def validate_scores(values: Any, what: str = "uncertainty score") -> np.ndarray:
    """Return the scores as a float64 vector, or raise ValueError naming the first bad entry."""
    arr = _to_numpy(values)
    if arr.size == 0:
        raise ValueError(f"no {what}s given: the mapping needs at least one sample")
    bad_checks = (
        (np.isnan(arr), "is NaN"),
        (np.isinf(arr), "is infinite"),
        (arr < 0, "is negative"),
    )
    for mask, problem in bad_checks:
        if mask.any():
            first = int(np.flatnonzero(mask)[0])
            raise ValueError(
                f"{what} at index {first} {problem} ({arr[first]!r}); {int(mask.sum())} such value(s) in "
                f"{arr.size}. Scores must be finite and >= 0."
            )
    return arr


def _check_alpha(alpha: float, v_max: float) -> None:
    if not (isinstance(v_max, (int, float)) and 0.0 < float(v_max) <= 1.0):
        raise ValueError(f"ual_v_max must lie in (0, 1]; got {v_max!r}")
    if not (isinstance(alpha, (int, float)) and np.isfinite(alpha)):
        raise ValueError(f"ual_alpha must be a finite number; got {alpha!r}")
    if alpha <= 0:
        raise ValueError(f"ual_alpha must be > 0 (the mean smoothing value); got {alpha!r}")
    if alpha > v_max:
        raise ValueError(f"ual_alpha={alpha!r} is above ual_v_max={v_max!r}: no sample may be smoothed above v_max")


@dataclass(frozen=True)
class SmoothingMap:
    """A fitted map u -> min(beta * u, v_max). Fit once on the training set, apply to any split."""

    beta: float
    alpha: float
    v_max: float
    n_fit: int

    def __call__(self, values: Any) -> np.ndarray:
        arr = validate_scores(values)
        return np.minimum(self.beta * arr, self.v_max)

    def apply_one(self, value: float) -> float:
        """Smoothing for a single score (already validated by the caller)."""
        return float(min(self.beta * float(value), self.v_max))


def solve_beta(scores: np.ndarray, alpha: float, v_max: float) -> float:
    """Exact beta with mean(min(beta * scores, v_max)) == alpha, scores validated and non-empty.

    mean(min(beta*u, v_max)) is continuous and non-decreasing in beta; with the k largest scores
    clipped it equals (k * v_max + beta * rest_k) / n, so beta is closed-form once k is known.
    """
    n = scores.size
    u = np.sort(scores)[::-1]  # descending
    n_pos = int(np.count_nonzero(u > 0))
    reachable = v_max * n_pos / n
    if alpha > reachable * (1 + 1e-12):
        n_zero = n - n_pos
        raise ValueError(
            f"ual_alpha={alpha!r} cannot be reached: {n_zero} of {n} uncertainty scores are 0 and get no "
            f"smoothing, so the highest reachable mean is v_max * {n_pos}/{n} = {reachable:.6g}. Lower "
            f"ual_alpha, raise ual_v_max, or re-score the zero-score samples."
        )
    pos = u[:n_pos]
    suffix = np.concatenate([np.cumsum(pos[::-1])[::-1], [0.0]])  # suffix[k] = sum(pos[k:])
    target = alpha * n
    for k in range(n_pos):  # k = number of clipped samples (the k largest)
        rest = suffix[k]
        beta = (target - k * v_max) / rest
        if beta * pos[k] <= v_max * (1 + 1e-12) and (k == 0 or beta * pos[k - 1] >= v_max * (1 - 1e-12)):
            return float(beta)
    # alpha == reachable: every positive score is clipped; the smallest beta doing so.
    return float(v_max / pos[-1])


def fit_smoothing_map(
    uncertainty: Iterable[float] | Sequence[float] | Any,
    alpha: float = DEFAULT_ALPHA,
    v_max: float = DEFAULT_V_MAX,
) -> SmoothingMap:
    """Validate the scores and solve beta for them; the returned map applies the same beta anywhere."""
    _check_alpha(alpha, v_max)
    scores = validate_scores(uncertainty)
    beta = solve_beta(scores, float(alpha), float(v_max))
    return SmoothingMap(beta=beta, alpha=float(alpha), v_max=float(v_max), n_fit=int(scores.size))


def smoothing_from_uncertainty(
    u: Iterable[float] | Sequence[float] | Any,
    alpha: float = DEFAULT_ALPHA,
    v_max: float = DEFAULT_V_MAX,
) -> np.ndarray:
    """Per-sample smoothing values min(beta * u, v_max) whose mean is exactly ``alpha``.

    Accepts a list, numpy array or torch tensor of non-negative finite scores; returns float64.
    """
    smap = fit_smoothing_map(u, alpha=alpha, v_max=v_max)
    return smap(u)
