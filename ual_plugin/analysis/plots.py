"""Plots of `ual analyze`: mean ± std silhouette per model, and per-pair PCA scatter panels (paper Fig. 5).

Uses matplotlib's object API with the Agg canvas: no pyplot state, no display, and the user's
backend choice is left alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

_COLORS = ("#1f77b4", "#d62728")


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def plot_silhouette_summary(
    names: Sequence[str],
    means: Sequence[float],
    stds: Sequence[float],
    path: str | Path,
    title: str | None = None,
) -> Path:
    """Bar chart of the mean silhouette per model with ± std error bars; written as PNG to ``path``."""
    path = Path(path)
    n = len(names)
    fig = _new_figure(max(4.0, 1.3 * n + 2.0), 4.0)
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(n)
    means_arr = np.asarray(means, dtype=float)
    stds_arr = np.asarray(stds, dtype=float)
    ax.bar(x, means_arr, yerr=stds_arr, capsize=6, color="#4c72b0", alpha=0.85, edgecolor="black", linewidth=0.6)
    for xi, m, s in zip(x, means_arr, stds_arr, strict=True):
        ax.annotate(f"{m:.3f}", (xi, m + (s if m >= 0 else -s)), textcoords="offset points",
                    xytext=(0, 4 if m >= 0 else -12), ha="center", fontsize=9)
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xticks(x)
    ax.set_xticklabels(list(names), rotation=20 if n > 3 else 0, ha="right" if n > 3 else "center")
    ax.set_ylabel("silhouette coefficient (mean ± std over pairs)")
    ax.set_title(title or "Token-feature clustering (higher = tighter)")
    lo = min(0.0, float(np.nanmin(means_arr - stds_arr)) if n else 0.0)
    hi = max(0.1, float(np.nanmax(means_arr + stds_arr)) if n else 1.0)
    pad = 0.12 * (hi - lo)
    ax.set_ylim(max(-1.05, lo - pad), min(1.05, hi + pad))
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def plot_pair_pca(
    panels: Sequence[tuple[str, np.ndarray, np.ndarray, float]],
    pair: tuple[int, int],
    token_labels: Mapping[int, str],
    path: str | Path,
) -> Path:
    """One scatter panel per model, side by side, for one token pair (like the paper's Fig. 5).

    ``panels``: ``(model name, points [n, 2], labels [n] (0 = pair[0], 1 = pair[1]), silhouette)``.
    ``token_labels[t]``: the decoded token, shown in the legend.
    """
    path = Path(path)
    n = len(panels)
    fig = _new_figure(3.8 * n + 0.4, 4.1)
    axes = fig.subplots(1, n, squeeze=False)[0]
    for ax, (name, points, labels, sil) in zip(axes, panels, strict=True):
        points = np.asarray(points)
        labels = np.asarray(labels)
        for k, tok in enumerate(pair):
            sel = labels == k
            ax.scatter(points[sel, 0], points[sel, 1], s=9, alpha=0.6, color=_COLORS[k],
                       label=f"{token_labels.get(tok, str(tok))!r} (#{tok}, n={int(sel.sum())})")
        ax.set_title(f"{name}\nsilhouette = {sil:.3f}", fontsize=10)
        ax.set_xlabel("PC 1")
        ax.set_ylabel("PC 2")
        ax.tick_params(labelsize=8)
        ax.legend(fontsize=8, loc="best", markerscale=1.5)
    fig.suptitle(f"PCA of LM-head input features, tokens #{pair[0]} vs #{pair[1]}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path
