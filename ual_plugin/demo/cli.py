"""`ual demo`: a two-stage, four-arm test of UAL's claim on a tiny local model (no API key, no hub)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ual_plugin.demo.run import DemoSettings

_D = DemoSettings()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=_D.out_dir, help="output folder")
    parser.add_argument("--seeds", type=int, default=len(_D.seeds),
                        help="number of seeds (default: the power calculation's 5); each pre-trains its own model and "
                             "redraws the fine-tuning data")
    parser.add_argument("--first-seed", type=int, default=_D.seeds[0],
                        help="the seeds are first-seed, first-seed + 1, ...")
    parser.add_argument("--no-robustness", action="store_true", help="skip the max_grad_norm=0 rerun")
    parser.add_argument("--alpha", type=float, default=_D.alpha, help="the smoothing budget per label token")
    parser.add_argument("--steps", type=int, default=_D.steps, help="fine-tuning steps per arm")
    parser.add_argument("--pretrain-steps", type=int, default=_D.pretrain_steps)
    parser.add_argument("--no-axolotl", action="store_true",
                        help="skip the `axolotl train` step (it is skipped anyway when axolotl is not installed)")


def run(args: argparse.Namespace) -> int:
    from ual_plugin.demo.run import run_demo

    if args.seeds < 2:
        raise SystemExit(f"ual demo: --seeds must be >= 2 (paired confidence intervals), got {args.seeds}")
    seeds = tuple(range(args.first_seed, args.first_seed + args.seeds))
    run_demo(DemoSettings(out_dir=args.out, seeds=seeds, alpha=args.alpha, steps=args.steps,
                          pretrain_steps=args.pretrain_steps, axolotl=not args.no_axolotl,
                          robustness=not args.no_robustness))
    return 0
