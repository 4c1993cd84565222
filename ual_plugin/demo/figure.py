"""The demo's one figure: held-out metrics per arm and category (bars: mean ± std over seeds, dots:
single seeds), next to the training-loss curves, with a one-line headline computed from the numbers."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

from ual_plugin.demo.evaluate import METRICS

CURVE_NOTE = ("Smoothed losses sit higher by design: they include the smoothing term on top of the\n"
              "cross-entropy, so these curves do not rank the arms; the held-out metrics do.")


def plot_results(results: Mapping[str, Mapping[int, Mapping[str, float]]],
                 curves: Mapping[str, Mapping[int, Sequence[tuple[int, float]]]],
                 labels: Mapping[str, str], path: Path, headline: str = "") -> Path:
    """``results[arm][seed][metric]``, ``curves[arm][seed] = [(step, loss), ...]``; writes a PNG to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    arms = list(results)
    n_seeds = len(next(iter(results.values())))
    colors = {arm: plt.get_cmap("tab10")(i) for i, arm in enumerate(arms)}
    groups = list(dict.fromkeys(category for _, category, _, _ in METRICS))
    # one column per group of held-out rows (NLL on top, exact match below), the training curves on the right
    fig = plt.figure(figsize=(3.4 * len(groups) + 6.0, 7.0))
    grid = fig.add_gridspec(2, len(groups) + 1, width_ratios=[1] * len(groups) + [1.7])
    used = set()
    for key, category, meaning, _ in METRICS:
        row, col = (0 if key.startswith("nll") else 1), groups.index(category)
        used.add((row, col))
        ax = fig.add_subplot(grid[row, col])
        for x, arm in enumerate(arms):
            values = np.array([m[key] for m in results[arm].values()], dtype=float)
            std = values.std(ddof=1) if len(values) > 1 else 0.0
            ax.bar(x, values.mean(), yerr=std, capsize=6, color=colors[arm], alpha=0.75)
            jitter = np.linspace(-0.2, 0.2, len(values)) if len(values) > 1 else np.zeros(1)
            ax.scatter(x + jitter, values, s=12, color="black", zorder=3)
        ax.set_xticks(range(len(arms)), [labels[a] for a in arms])
        ax.set_title(f"{category}\n{meaning}", fontsize=8.5)
        ax.grid(axis="y", alpha=0.3)
        if key.startswith("nll"):  # NLLs differ by a few percent: start the axis near the data, not at 0
            lo = min(min(m[key] for m in results[a].values()) for a in arms)
            ax.set_ylim(bottom=max(0.0, lo * 0.85))
        else:
            ax.set_ylim(0, 1)
    for row in range(2):
        for col in range(len(groups)):
            if (row, col) not in used:  # a free cell explains how to read the bars
                ax = fig.add_subplot(grid[row, col])
                ax.axis("off")
                ax.text(0.0, 0.9, f"bars: mean over {n_seeds} seeds\nerror bars: ± std\ndots: single seeds\n\n"
                        "every arm: same data,\nsame steps, same seeds", va="top", fontsize=9, color="dimgray")
    ax = fig.add_subplot(grid[:, -1])
    plotted = False
    for arm in arms:
        runs = [dict(c) for c in curves[arm].values() if c]
        steps = sorted(set.intersection(*(set(r) for r in runs))) if runs else []
        if not steps:
            continue
        losses = np.array([[r[s] for s in steps] for r in runs])
        ax.plot(steps, losses.mean(0), color=colors[arm], label=labels[arm])
        ax.fill_between(steps, losses.min(0), losses.max(0), color=colors[arm], alpha=0.2, linewidth=0)
        plotted = True
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.set_title("training loss (mean over seeds; band: min-max)", fontsize=9)
    if plotted:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no training loss logged", transform=ax.transAxes, ha="center", color="gray")
    ax.grid(alpha=0.3)
    ax.text(0.0, -0.1, CURVE_NOTE, transform=ax.transAxes, fontsize=8, color="dimgray", va="top")
    title = (f"{' vs '.join(labels[a] for a in arms)}: same data, steps and {n_seeds} seeds "
             "(bars: mean ± std; dots: single seeds)")
    fig.suptitle(title + (f"\n{textwrap.fill(headline, 160)}" if headline else ""), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return Path(path)
