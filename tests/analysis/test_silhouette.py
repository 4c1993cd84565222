"""Pure pair-sampling / PCA / silhouette functions: synthetic features, no model."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from ual_plugin.analysis import (
    AnalysisError,
    pair_silhouette,
    pair_silhouettes,
    project_pair,
    sample_pairs,
    silhouette,
    summarize,
)


def _clusters(rng, n=200, dim=32, distance=40.0):
    direction = rng.normal(size=dim)
    direction /= np.linalg.norm(direction)
    a = rng.normal(size=(n, dim)) + distance / 2 * direction
    b = rng.normal(size=(n, dim)) - distance / 2 * direction
    return a.astype(np.float32), b.astype(np.float32)


def test_well_separated_clusters_score_near_one():
    rng = np.random.default_rng(0)
    a, b = _clusters(rng)
    assert pair_silhouette(a, b) > 0.9


def test_identical_distributions_score_near_zero():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(400, 32))
    b = rng.normal(size=(400, 32))
    assert abs(pair_silhouette(a, b)) < 0.1


def test_separation_is_monotone():
    rng = np.random.default_rng(2)
    scores = [pair_silhouette(*_clusters(rng, distance=d)) for d in (0.0, 2.0, 5.0, 40.0)]
    assert scores == sorted(scores)


def test_pair_silhouettes_over_tokens():
    rng = np.random.default_rng(3)
    far_a, far_b = _clusters(rng)
    feats = {10: far_a, 11: far_b, 12: rng.normal(size=(150, 32)), 13: rng.normal(size=(150, 32))}
    got = pair_silhouettes(feats, [(10, 11), (12, 13)])
    assert got[0] > 0.9 and abs(got[1]) < 0.1
    with pytest.raises(AnalysisError, match="no features"):
        pair_silhouettes(feats, [(10, 99)])


def test_project_pair_shapes_and_labels():
    rng = np.random.default_rng(4)
    points, labels = project_pair(rng.normal(size=(5, 8)), rng.normal(size=(7, 8)))
    assert points.shape == (12, 2)
    assert labels.tolist() == [0] * 5 + [1] * 7
    raw, _ = project_pair(rng.normal(size=(5, 8)), rng.normal(size=(7, 8)), n_components=None)
    assert raw.shape == (12, 8)
    with pytest.raises(AnalysisError, match="at least 2"):
        project_pair(rng.normal(size=(1, 8)), rng.normal(size=(7, 8)))
    with pytest.raises(AnalysisError, match="same width"):
        project_pair(rng.normal(size=(3, 8)), rng.normal(size=(3, 9)))


def test_pca_is_deterministic():
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(600, 700)), rng.normal(size=(600, 700)) + 0.3  # large enough for a randomised solver
    assert pair_silhouette(a, b) == pair_silhouette(a, b)


def test_coincident_points_score_zero():
    same = np.ones((4, 6))
    assert silhouette(np.zeros((8, 2)), np.array([0] * 4 + [1] * 4)) == 0.0
    assert pair_silhouette(same, same) == 0.0


def test_sample_pairs_distinct_and_reproducible():
    tokens = list(range(100, 142))
    pairs = sample_pairs(tokens, 100, seed=0)
    assert len(pairs) == 100
    assert len({frozenset(p) for p in pairs}) == 100
    assert all(a != b and a in tokens and b in tokens for a, b in pairs)
    assert all(tokens.index(a) < tokens.index(b) for a, b in pairs)
    assert sample_pairs(tokens, 100, seed=0) == pairs
    assert sample_pairs(tokens, 100, seed=1) != pairs


def test_sample_pairs_uses_all_when_too_few():
    tokens = [5, 6, 7, 8]
    with pytest.warns(UserWarning, match="only 6 distinct pairs"):
        pairs = sample_pairs(tokens, 100, seed=0)
    assert sorted(pairs) == sorted(itertools.combinations(tokens, 2))
    assert sorted(sample_pairs(tokens, 6, seed=3)) == sorted(pairs)  # exactly all: no warning needed


def test_sample_pairs_errors():
    with pytest.raises(AnalysisError, match="at least 2 tokens"):
        sample_pairs([1], 3)
    with pytest.raises(AnalysisError, match=">= 1"):
        sample_pairs([1, 2, 3], 0)
    with pytest.raises(AnalysisError, match="distinct"):
        sample_pairs([1, 1, 2], 1)


def test_summarize():
    s = summarize([0.2, 0.4, 0.6])
    assert s["n_pairs"] == 3
    assert s["mean"] == pytest.approx(0.4)
    assert s["std"] == pytest.approx(np.std([0.2, 0.4, 0.6]))
    assert summarize([])["n_pairs"] == 0
