"""``ual stats FILE``: the ``uncertainty`` column and the smoothing it maps to, as a table and a PNG.

Exit codes: 0 every row has a score and the map fits; 1 some rows have no score, or no map reaches
``--alpha`` (too many zeros, or no scores at all); 2 the file cannot be read or lacks the column.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
GROUP_COLUMNS = ("source", "dataset", "origin", "task", "category")
MAX_GROUPS = 12
COLUMNS = ["mean", "std", "min", "p5", "p25", "p50", "p75", "p95", "max"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="FILE", help="scored .jsonl/.json/.csv/.parquet file or save_to_disk folder")
    p.add_argument("--alpha", type=float, default=0.1, help="mean smoothing to map to (default 0.1)")
    p.add_argument("--v-max", type=float, default=0.99, help="largest smoothing value (default 0.99)")
    p.add_argument("--field", default="uncertainty", help="score column (default uncertainty)")
    p.add_argument("--by", default=None, metavar="COLUMN",
                   help=f"group by this column (default: the first of {', '.join(GROUP_COLUMNS)} present)")
    p.add_argument("--split", default=None, help="split of a DatasetDict folder")
    p.add_argument("--plot", default=None, metavar="PATH", help="PNG path (default FILE.stats.png)")
    p.add_argument("--no-plot", action="store_true", help="print the table only")
    p.add_argument("--json", action="store_true", help="print the summary as JSON instead of a table")


def _describe(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {}
    quantiles = {f"p{int(q * 100)}": float(np.quantile(values, q)) for q in QUANTILES}
    return {"mean": float(values.mean()), "std": float(values.std()), "min": float(values.min()), **quantiles,
            "max": float(values.max())}


def _as_float(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def summarize(values: Sequence[Any], groups: Sequence[Any] | None = None, alpha: float = 0.1,
              v_max: float = 0.99) -> dict[str, Any]:
    """Summary of the scores (None / '' / non-numbers count as missing) and of the mapped smoothing."""
    from ual_plugin.mapping import fit_smoothing_map

    raw = np.array([_as_float(v) for v in values], dtype=np.float64)  # missing -> nan
    ok = ~np.isnan(raw)
    present, missing = raw[ok], int((~ok).sum())
    out: dict[str, Any] = {"count": len(raw), "missing": missing, "missing_share": missing / len(raw) if len(raw)
                           else 0.0, "scores": _describe(present)}
    smooth = None
    try:
        smap = fit_smoothing_map(present, alpha=alpha, v_max=v_max)
        smooth = smap(present)
        out["smoothing"] = {"alpha": alpha, "v_max": v_max, "beta": smap.beta, **_describe(smooth),
                            "clipped_at_v_max": float(np.mean(smooth >= v_max * (1 - 1e-12)))}
    except ValueError as err:
        out["smoothing_error"] = str(err)
    keys = np.array([str(g) for g in groups]) if groups is not None else None
    if keys is not None:
        order = list(dict.fromkeys(keys.tolist()))
        out["groups"] = {}
        for name in order[:MAX_GROUPS]:
            sel = keys == name
            entry: dict[str, Any] = {"count": int(sel.sum()), "missing": int((sel & ~ok).sum()),
                                     "scores": _describe(raw[sel & ok])}
            if smooth is not None:
                entry["smoothing_mean"] = float(smooth[sel[ok]].mean()) if (sel & ok).any() else None
            out["groups"][name] = entry
        if len(order) > MAX_GROUPS:
            out["groups_omitted"] = len(order) - MAX_GROUPS
    out["_present"], out["_smooth"], out["_keys"] = present, smooth, keys[ok] if keys is not None else None
    return out


def _fmt(x: Any) -> str:
    return "-" if x is None else f"{x:.4g}" if isinstance(x, float) else str(x)


def format_table(summary: dict[str, Any], field: str, group_col: str | None) -> str:
    rows = [[f"{field} (all)", summary["count"], summary["missing"], *map(summary["scores"].get, COLUMNS)]]
    groups = summary.get("groups") or {}
    rows += [[f"  {group_col}={name}", g["count"], g["missing"], *map(g["scores"].get, COLUMNS)]
             for name, g in groups.items()]
    if sm := summary.get("smoothing"):
        rows.append([f"smoothing (alpha={sm['alpha']:g})", summary["count"] - summary["missing"], "-",
                     *map(sm.get, COLUMNS)])
    cells = [["", "count", "missing", *COLUMNS]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
             for r in cells]
    if sm:
        lines.append(f"smoothing = min(beta * {field}, v_max) with beta = {sm['beta']:.6g}, v_max = {sm['v_max']:g}; "
                     f"{100 * sm['clipped_at_v_max']:.1f}% of samples clipped at v_max")
        lines += [f"  mean smoothing for {group_col}={name}: {g['smoothing_mean']:.4g}"
                  for name, g in groups.items() if g.get("smoothing_mean") is not None]
    elif summary.get("smoothing_error"):
        lines.append(f"smoothing: cannot map at this alpha: {summary['smoothing_error']}")
    if summary.get("groups_omitted"):
        lines.append(f"({summary['groups_omitted']} more {group_col} values not shown)")
    if summary["missing"]:
        lines.append(f"WARNING: {summary['missing']} of {summary['count']} rows "
                     f"({100 * summary['missing'] / max(summary['count'], 1):.1f}%) have no {field} (null or not a "
                     "number): UAL's column mode refuses them; re-run `ual score` to retry them, or drop them")
    return "\n".join(lines)


def plot(summary: dict[str, Any], path: Path, field: str) -> None:
    """Histograms of the scores and of the smoothing, one colour per group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    present, smooth, keys = summary["_present"], summary["_smooth"], summary["_keys"]
    names = list(summary.get("groups") or {})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))

    def hist(ax: Any, values: np.ndarray, color: str) -> None:
        bins = np.histogram_bin_edges(values, bins=30)
        for name in names:
            ax.hist(values[keys == name], bins=bins, alpha=0.5, label=f"{name} (n={int((keys == name).sum())})")
        if not names:
            ax.hist(values, bins=bins, color=color)

    hist(axes[0], present, "tab:blue")
    axes[0].set(title=f"{field} (n={present.size}, missing {summary['missing']})", xlabel=field, ylabel="samples")
    if names:
        axes[0].legend(fontsize=8)
    if smooth is not None:
        sm = summary["smoothing"]
        hist(axes[1], smooth, "tab:orange")
        axes[1].axvline(sm["alpha"], color="k", linestyle="--", linewidth=1, label=f"mean = alpha = {sm['alpha']:g}")
        axes[1].legend(fontsize=8)
        axes[1].set_title(f"label smoothing (alpha={sm['alpha']:g}, beta={sm['beta']:.3g})")
    else:
        axes[1].text(0.5, 0.5, "no smoothing at this alpha\n(see the table)", ha="center", va="center")
        axes[1].set_title("label smoothing")
    axes[1].set_xlabel("smoothing value")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    from ual_plugin.scoring.formats import InputError, load_data

    def error(msg: str) -> int:
        print(f"ual stats: error: {msg}", file=sys.stderr)
        return 2

    try:
        data = load_data(args.file, split=args.split)
    except InputError as err:
        return error(str(err))
    if data.rows and args.field not in data.columns:
        return error(f"{args.file} has no {args.field!r} column (columns: {data.columns}); run `ual score` first "
                     "or pass --field")
    group_col = args.by or next((c for c in GROUP_COLUMNS if c in data.columns), None)
    if group_col is not None and group_col not in data.columns:
        return error(f"no column {group_col!r} to group by")
    groups = [r.get(group_col) for r in data.rows] if group_col else None
    summary = summarize([r.get(args.field) for r in data.rows], groups, alpha=args.alpha, v_max=args.v_max)
    if args.json:
        print(json.dumps({k: v for k, v in summary.items() if not k.startswith("_")}, indent=2))
    else:
        print(format_table(summary, args.field, group_col))
    if not args.no_plot and summary["_present"].size:
        path = Path(args.plot) if args.plot else Path(str(args.file).rstrip("/") + ".stats.png")
        plot(summary, path, args.field)
        print(f"plot: {path}", file=sys.stderr if args.json else sys.stdout)
    return 1 if "smoothing_error" in summary or summary["missing"] else 0
