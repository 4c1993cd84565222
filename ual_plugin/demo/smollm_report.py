"""The real-model experiment's statistics, from one or more ``per_seed.jsonl`` streams.

Arms are compared seed by seed (paired 95 % CIs); the primary questions run as a fixed sequence
and the harms as non-inferiority tests (``design``). Seeds with some arms missing (a run cut
short) are left out of every comparison and counted in the output.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from statistics import stdev
from typing import Any

from ual_plugin.demo.design import (
    detectable_difference,
    fixed_sequence,
    format_verdicts,
    non_inferiority,
    verdict_line,
)
from ual_plugin.demo.report import format_table, paired, summarise
from ual_plugin.demo.smollm_eval import METRICS
from ual_plugin.demo.smollm_run import ARM_ORDER, HARMS, SEQUENCE, SmolSettings, settings_record
from ual_plugin.demo.versions import library_versions

HIGHER = {key: higher for key, _, higher in METRICS}


def load(paths: Sequence[Path]) -> tuple[dict[str, dict[int, dict]], list[int]]:
    """``({arm: {seed: record}}, seeds with every arm)`` from the streams."""
    records: dict[str, dict[int, dict]] = {}
    for path in paths:
        for line in Path(path).read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                records.setdefault(r["arm"], {})[int(r["seed"])] = r
    arms = ("base", *ARM_ORDER)
    complete = sorted(set.intersection(*(set(records.get(a, {})) for a in arms)))
    return records, complete


def report(paths: Sequence[Path], out_dir: Path, s: SmolSettings) -> dict[str, Any]:
    """Print the tables, the fixed-sequence verdicts and the harm tests; write ``summary.json``."""
    from ual_plugin.demo.arms import ARMS

    records, complete = load(paths)
    seeds = [x for x in complete if x in s.seeds]
    labels = {"base": "base model", **{a.key: a.label for a in ARMS}}
    found = sorted({seed for by_seed in records.values() for seed in by_seed})
    print(f"seeds with every arm, of the size's {list(s.seeds)}: {seeds} (seeds in the streams: {found})")
    if len(seeds) < 2:
        raise ValueError(f"the statistics need at least 2 seeds with every arm, got {seeds}")
    results = {a: {seed: records[a][seed]["metrics"] for seed in seeds} for a in ("base", *ARM_ORDER)}
    arms_only = {a: v for a, v in results.items() if a != "base"}
    stats = summarise(results, METRICS)
    sequence = fixed_sequence(arms_only, SEQUENCE, HIGHER)
    harms = non_inferiority(arms_only, HARMS, HIGHER)
    verdict = ("smoke size: the statistics were computed to check the pipeline; no verdict is claimed"
               if s.smoke else verdict_line(sequence, harms))
    steps = sorted({int(k) for r in records["ual"].values() for k in r.get("checkpoints", {})})
    by_step = {step: {key: [paired({x: records["ual"][x]["checkpoints"][str(step)] for x in seeds},
                                   {x: records[c][x]["checkpoints"][str(step)] for x in seeds}, key)
                            for c in ("sft", "uniform_token", "shuffled")]
                      for key in ("open_heldout_share", "wp_heldout_pnorm", "open_invalid_mass", "retention_kl")}
               for step in steps}
    power = {f"{q.metric}: {q.arm} - {q.control}": detectable_difference(stdev(row["differences"]), len(seeds))
             for q, row in zip(SEQUENCE, sequence, strict=True)}
    print("mean ± std over seeds (each seed: the mean over checkpoints); the base model is the zero point")
    print(format_table(stats, labels, METRICS))
    print("\n".join(format_verdicts(sequence, harms, labels)))
    print(f"per checkpoint, UAL - SFT / uniform / shuffled (mean paired difference) at steps {steps}:")
    for step in steps:
        cells = "; ".join(f"{k} " + " / ".join(f"{c['mean_difference']:+.4f}" for c in v)
                          for k, v in by_step[step].items())
        print(f"  step {step}: {cells}")
    print(f"smallest difference {len(seeds)} seeds detect (80% power, measured spread): "
          + "; ".join(f"{k} {v:.4f}" for k, v in power.items()))
    print(verdict)
    budgets = {a: {str(x): records[a][x].get("smoothing_budget") for x in seeds} for a in ARM_ORDER}
    summary = {
        "settings": settings_record(s),
        "versions": library_versions(),
        "seeds": seeds,
        "metrics": {key: {"meaning": meaning, "higher_is_better": higher} for key, meaning, higher in METRICS},
        "arms": {a: {"label": labels[a], "per_seed": {str(x): results[a][x] for x in seeds}, "summary": stats[a]}
                 for a in results},
        "smoothing_budget": budgets,
        "primary_sequence": sequence,
        "harms": harms,
        "per_checkpoint": {str(k): v for k, v in by_step.items()},
        "detectable_difference_80pct_power": power,
        "verdict": verdict,
        "smoke": s.smoke,
    }
    from ual_plugin.demo.run import _json_safe

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(_json_safe(summary), indent=2, allow_nan=False) + "\n")
    print(f"summary: {out / 'summary.json'}")
    return summary

