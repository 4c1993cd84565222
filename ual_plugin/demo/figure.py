"""The demo's figure: every metric per arm (mean and spread over seeds, the base model as a line),
and the primary questions as paired differences with their 95 % confidence intervals."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ual_plugin.demo.evaluate import METRICS

_COLORS = {"sft": "#7f7f7f", "uniform_token": "#1f77b4", "ual": "#d62728", "shuffled": "#ff7f0e"}


def plot_results(stats: Mapping[str, Mapping[str, Mapping[str, float]]], endpoints: Sequence[Mapping[str, Any]],
                 labels: Mapping[str, str], path: Path, title: str) -> Path:
    """Write the figure to ``path`` (PNG) and return it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = [a for a in stats if a != "base"]
    fig, axes = plt.subplots(3, 5, figsize=(22, 12.5))
    for ax in list(axes.flat)[len(METRICS):-1]:
        ax.axis("off")
    for ax, (key, meaning, higher) in zip(axes.flat, METRICS, strict=False):
        means = [stats[a][key]["mean"] for a in arms]
        stds = [stats[a][key]["std"] for a in arms]
        ax.bar(range(len(arms)), means, yerr=stds, capsize=3, color=[_COLORS.get(a, "#999") for a in arms])
        if "base" in stats:
            ax.axhline(stats["base"][key]["mean"], color="black", linestyle="--", linewidth=1, label="pre-trained")
        ax.set_xticks(range(len(arms)), [labels[a] for a in arms], rotation=35, ha="right", fontsize=8)
        ax.set_title(f"{textwrap.fill(meaning, 46)}\n({'higher' if higher else 'lower'} is better)", fontsize=8.5)
        lo = min(m - s for m, s in zip(means, stds, strict=True))
        hi = max(m + s for m, s in zip(means, stds, strict=True))
        pad = (hi - lo) * 0.3 + 1e-6
        base = stats["base"][key]["mean"] if "base" in stats else lo
        ax.set_ylim(min(lo, base) - pad, max(hi, base) + pad)
    ax = axes.flat[-1]
    names = [f"Q{i}: {e['metric']}\n{labels[e['arm']]} - {labels[e['control']]}" for i, e in enumerate(endpoints, 1)]
    for i, e in enumerate(endpoints):
        scale = max(abs(e["ci95"][0]), abs(e["ci95"][1]), 1e-12)  # each endpoint on its own scale
        color = {"supports": "#2ca02c", "refutes": "#d62728"}.get(e["verdict"], "#7f7f7f")
        ax.errorbar(e["mean_difference"] / scale, i, xerr=[[(e["mean_difference"] - e["ci95"][0]) / scale],
                    [(e["ci95"][1] - e["mean_difference"]) / scale]], fmt="o", color=color, capsize=3)
        ax.text(1.05, i, e["verdict"], va="center", fontsize=7, color=color)
    ax.axvline(0, color="black", linewidth=1)
    ax.set_yticks(range(len(endpoints)), names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(-1.15, 1.45)
    ax.set_title("primary questions in their fixed order: paired difference, 95% CI\n(each scaled by its largest "
                 "|CI end|)", fontsize=8.5)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
