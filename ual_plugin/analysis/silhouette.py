"""Pair sampling, per-pair PCA and silhouette coefficient: pure numpy / scikit-learn, no model needed."""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Mapping, Sequence

import numpy as np

from ual_plugin.analysis.texts import AnalysisError


def sample_pairs(tokens: Sequence[int], n_pairs: int = 100, seed: int = 0) -> list[tuple[int, int]]:
    """Draw ``n_pairs`` distinct unordered pairs from ``tokens`` with ``numpy.random.default_rng(seed)``.

    Each pair is ``(a, b)`` in the order the two tokens have in ``tokens``; the pairs come in the
    order drawn. When fewer than ``n_pairs`` pairs exist, all of them are returned (shuffled by the
    same generator) with a warning. The result depends only on ``tokens`` (its order included),
    ``n_pairs`` and ``seed``.
    """
    tokens = [int(t) for t in tokens]
    if len(set(tokens)) != len(tokens):
        raise AnalysisError("sample_pairs: tokens must be distinct")
    if len(tokens) < 2:
        raise AnalysisError(f"need at least 2 tokens to form a pair, got {len(tokens)}")
    if n_pairs < 1:
        raise AnalysisError(f"the number of pairs must be >= 1, got {n_pairs}")
    all_pairs = list(itertools.combinations(tokens, 2))
    rng = np.random.default_rng(seed)
    if n_pairs >= len(all_pairs):
        if n_pairs > len(all_pairs):
            warnings.warn(
                f"only {len(all_pairs)} distinct pairs exist among {len(tokens)} tokens "
                f"({n_pairs} requested): using all of them",
                stacklevel=2,
            )
        order = rng.permutation(len(all_pairs))
    else:
        order = rng.choice(len(all_pairs), size=n_pairs, replace=False)
    return [all_pairs[int(i)] for i in order]


def project_pair(
    feats_a: np.ndarray, feats_b: np.ndarray, n_components: int | None = 2
) -> tuple[np.ndarray, np.ndarray]:
    """Stack two tokens' features and project them with a PCA fitted on that pair alone.

    Returns ``(points [n_a + n_b, n_components], labels [n_a + n_b])`` with labels 0 for ``feats_a``
    and 1 for ``feats_b``. ``n_components=None`` skips the PCA (raw features, as float64).
    """
    a = np.asarray(feats_a, dtype=np.float64)
    b = np.asarray(feats_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise AnalysisError(f"features must be 2-D with the same width, got {a.shape} and {b.shape}")
    if len(a) < 2 or len(b) < 2:
        raise AnalysisError(f"each token needs at least 2 features, got {len(a)} and {len(b)}")
    x = np.concatenate([a, b])
    labels = np.concatenate([np.zeros(len(a), dtype=np.int64), np.ones(len(b), dtype=np.int64)])
    if n_components is not None and not np.any(np.ptp(x, axis=0) > 0):
        x = np.zeros((len(x), n_components))  # all points coincide: nothing to project
    elif n_components is not None:
        from sklearn.decomposition import PCA

        k = min(n_components, x.shape[1], x.shape[0])
        # A fixed random_state keeps the (possibly randomised) solver deterministic.
        x = PCA(n_components=k, random_state=0).fit_transform(x)
        if k < n_components:  # fewer dims than asked (tiny inputs): pad so callers can rely on the width
            x = np.pad(x, ((0, 0), (0, n_components - k)))
    return x, labels


def silhouette(points: np.ndarray, labels: np.ndarray) -> float:
    """Mean silhouette coefficient (euclidean) of ``points`` clustered by ``labels``; 0 if all points coincide."""
    from sklearn.metrics import silhouette_score

    points = np.asarray(points, dtype=np.float64)
    if not np.any(np.ptp(points, axis=0) > 0):
        return 0.0
    return float(silhouette_score(points, labels, metric="euclidean"))


def pair_silhouette(feats_a: np.ndarray, feats_b: np.ndarray, n_components: int | None = 2) -> float:
    """Silhouette coefficient of two tokens' features after a 2-D PCA fitted on the pair (paper §4)."""
    points, labels = project_pair(feats_a, feats_b, n_components)
    return silhouette(points, labels)


def pair_silhouettes(
    features_by_token: Mapping[int, np.ndarray],
    pairs: Sequence[tuple[int, int]],
    n_components: int | None = 2,
) -> list[float]:
    """Silhouette of every pair in ``pairs``; ``features_by_token[t]`` is an ``[n_t, hidden]`` array."""
    out = []
    for a, b in pairs:
        missing = [t for t in (a, b) if t not in features_by_token]
        if missing:
            raise AnalysisError(f"no features for token(s) {missing} of pair {(a, b)}")
        out.append(pair_silhouette(features_by_token[a], features_by_token[b], n_components))
    return out


def summarize(values: Sequence[float]) -> dict[str, float | int]:
    """``{"mean", "std", "n_pairs"}`` of per-pair silhouettes (population std, ddof=0)."""
    arr = np.asarray(list(values), dtype=np.float64)
    if arr.size == 0:
        return {"mean": float("nan"), "std": float("nan"), "n_pairs": 0}
    return {"mean": float(arr.mean()), "std": float(arr.std()), "n_pairs": int(arr.size)}
