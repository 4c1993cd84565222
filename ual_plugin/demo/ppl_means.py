"""The demo's look at PPL mode's two running means: the default window against the paper's all-history mean.

PPL mode sets each sample's smoothing to ``alpha * ppl_i / running_mean_ppl``. This trains PPL mode
twice on the same rows and seed, with ``ual_ppl_window`` at its default and at 0, and reports the
mean smoothing each run logged: the all-history mean keeps the early, high perplexities, so its
smoothing fades below ``alpha`` as training lowers them.
"""

from __future__ import annotations

from pathlib import Path

from ual_plugin.options import DEFAULT_PPL_WINDOW

WINDOWS = (DEFAULT_PPL_WINDOW, 0)


def ppl_mean_smoothing(model_dir: Path, rows: list[dict], alpha: float, seed: int, cfg) -> dict[int, list]:
    """Per ``ual_ppl_window`` in ``WINDOWS``: the (step, logged ual_smoothing) pairs of a PPL-mode run."""
    from dataclasses import replace

    from ual_plugin.demo.train import train_arm

    cfg = replace(cfg, logging_steps=max(1, min(cfg.logging_steps, cfg.steps)))  # at least one log in a short run
    plain = [{"messages": r["messages"]} for r in rows]  # PPL mode needs no score
    out = {}
    for window in WINDOWS:
        options = {"ual": True, "ual_mode": "ppl", "ual_alpha": alpha, "ual_ppl_window": window}
        history = train_arm(model_dir, plain, options, seed, cfg).history
        out[window] = [(int(h["step"]), float(h["ual_smoothing"])) for h in history if "ual_smoothing" in h]
    return out


def format_ppl_means(curves: dict[int, list], alpha: float) -> list[str]:
    """One line per window: the logged mean smoothing at each logging step."""
    lines = []
    for window, points in curves.items():
        name = f"ual_ppl_window={window}" + (" (default)" if window == DEFAULT_PPL_WINDOW else
                                              " (the paper's mean over all history)")
        values = ", ".join(f"{v:.3f}" for _, v in points)
        lines.append(f"{name:<53} steps {points[0][0]}..{points[-1][0]}: {values}" if points else f"{name}: no logs")
    lines.append(f"(alpha = {alpha}: the smoothing the mean sample is meant to get)")
    return lines
