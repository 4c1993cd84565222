"""Uncertainty scores -> per-sample label-smoothing values (the paper's truncated linear map).

v_i = min(beta * u_i, v_max), with beta solved exactly so that the mean of v equals alpha: per
sample (the paper's definition), or per label token (each sample weighted by its label tokens,
the unit of the loss and of ``label_smoothing_factor``). The solve is a closed form over the
sorted scores (no iterate-and-clip loop that can fail to terminate).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

DEFAULT_ALPHA = 0.1
DEFAULT_V_MAX = 0.99
ALPHA_UNITS = ("sample", "token")
DEFAULT_ALPHA_PER = "sample"


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
    per: str = DEFAULT_ALPHA_PER  # the unit in which the fitted mean equals alpha
    mean_per_sample: float | None = None  # on the training set
    mean_per_token: float | None = None  # on the training set (None when token counts were not given)

    def __call__(self, values: Any) -> np.ndarray:
        arr = validate_scores(values)
        return np.minimum(self.beta * arr, self.v_max)

    def apply_one(self, value: float) -> float:
        """Smoothing for a single score (already validated by the caller)."""
        return float(min(self.beta * float(value), self.v_max))

    def describe_means(self) -> str:
        """Both training-set means and which one is pinned to alpha, for banners and logs."""
        return describe_means(self.mean_per_sample, self.mean_per_token, self.per)


def describe_means(per_sample: float | None, per_token: float | None, per: str) -> str:
    """e.g. 'mean smoothing 0.1 per sample, 0.151 per label token (ual_alpha_per=sample)'."""
    token = "unknown" if per_token is None else f"{per_token:.4g}"
    sample = "unknown" if per_sample is None else f"{per_sample:.4g}"
    return f"mean smoothing {sample} per sample, {token} per label token (ual_alpha_per={per})"


def validate_weights(weights: Any, n: int) -> np.ndarray:
    """Label-token counts per sample as float64, or ValueError naming the first bad one."""
    w = _to_numpy(weights)
    if w.size != n:
        raise ValueError(f"got {w.size} label-token counts for {n} uncertainty scores; give one per sample")
    bad = ~np.isfinite(w) | (w < 0)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ValueError(f"label-token count at index {first} is {float(w[first])!r}; counts must be finite and >= 0")
    if w.sum() <= 0:
        raise ValueError("no sample has a label token: a per-token mean smoothing is undefined")
    return w


def solve_beta(scores: np.ndarray, alpha: float, v_max: float, weights: np.ndarray | None = None) -> float:
    """Exact beta with the (``weights``-weighted) mean of min(beta * scores, v_max) equal to alpha.

    The mean is continuous and non-decreasing in beta; with the k largest scores clipped it equals
    (v_max * W_k + beta * S_k) / W (W_k: weight of the clipped, S_k: weighted sum of the rest), so
    beta is closed-form once k is known. ``weights=None`` weighs every sample 1.
    """
    w_all = np.ones_like(scores) if weights is None else weights
    order = np.argsort(-scores, kind="stable")  # descending scores
    u, w = scores[order], w_all[order]
    keep = (u > 0) & (w > 0)  # zero scores stay 0; zero-weight samples do not enter the mean
    total = float(w.sum())
    pos, wpos = u[keep], w[keep]
    reachable = v_max * float(wpos.sum()) / total
    unit = "label tokens" if weights is not None else "samples"
    if alpha > reachable * (1 + 1e-12):
        n_zero = int(np.count_nonzero(scores == 0))
        raise ValueError(
            f"ual_alpha={alpha!r} cannot be reached: {n_zero} of {scores.size} uncertainty scores are 0 and get no "
            f"smoothing, so the highest reachable mean over {unit} is {reachable:.6g}. Lower ual_alpha, raise "
            f"ual_v_max, or re-score the zero-score samples."
        )
    clipped_w = np.concatenate([[0.0], np.cumsum(wpos)])  # clipped_w[k] = weight of the k largest
    rest = np.concatenate([np.cumsum((wpos * pos)[::-1])[::-1], [0.0]])  # rest[k] = sum over the others
    target = alpha * total
    for k in range(pos.size):  # k = number of clipped samples (the k largest)
        beta = (target - v_max * clipped_w[k]) / rest[k]
        if beta * pos[k] <= v_max * (1 + 1e-12) and (k == 0 or beta * pos[k - 1] >= v_max * (1 - 1e-12)):
            return float(beta)
    # alpha == reachable: every positive score is clipped; the smallest beta doing so.
    return float(v_max / pos[-1])


def smoothing_means(values: np.ndarray, tokens: np.ndarray | None) -> tuple[float, float | None]:
    """(mean per sample, mean per label token) of per-sample smoothing ``values``."""
    per_token = None if tokens is None else float((values * tokens).sum() / tokens.sum())
    return float(values.mean()), per_token


def check_alpha_per(per: Any) -> str:
    """``per`` if it names a unit of ``ALPHA_UNITS``, else ValueError."""
    if per not in ALPHA_UNITS:
        raise ValueError(f"ual_alpha_per must be one of {', '.join(ALPHA_UNITS)}; got {per!r}")
    return per


def fit_smoothing_map(
    uncertainty: Iterable[float] | Sequence[float] | Any,
    alpha: float = DEFAULT_ALPHA,
    v_max: float = DEFAULT_V_MAX,
    per: str = DEFAULT_ALPHA_PER,
    tokens: Iterable[float] | Sequence[float] | Any | None = None,
) -> SmoothingMap:
    """Validate the scores and solve beta so the mean smoothing ``per`` sample or label token is ``alpha``.

    ``tokens``: each sample's label-token count (needed for ``per="token"``; with ``per="sample"`` it
    only adds the per-token mean to the map). The returned map applies the same beta anywhere.
    """
    _check_alpha(alpha, v_max)
    check_alpha_per(per)
    scores = validate_scores(uncertainty)
    if per == "token" and tokens is None:
        raise ValueError("ual_alpha_per='token' needs each sample's label-token count to fit the map")
    w = None if tokens is None else validate_weights(tokens, scores.size)
    beta = solve_beta(scores, float(alpha), float(v_max), w if per == "token" else None)
    per_sample, per_token = smoothing_means(np.minimum(beta * scores, v_max), w)
    return SmoothingMap(beta=beta, alpha=float(alpha), v_max=float(v_max), n_fit=int(scores.size), per=per,
                        mean_per_sample=per_sample, mean_per_token=per_token)


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
