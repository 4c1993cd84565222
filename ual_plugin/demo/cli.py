"""`ual demo`: a two-stage, five-arm test of UAL's claim on a tiny local model (no API key, no hub)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ual_plugin.demo.run import DemoSettings

_D = DemoSettings()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=_D.out_dir, help="output folder")
    parser.add_argument("--seeds", type=int, default=len(_D.seeds),
                        help="number of seeds (0, 1, ...); each redraws the fine-tuning data")
    parser.add_argument("--alpha", type=float, default=_D.alpha, help="the smoothing budget per label token")
    parser.add_argument("--steps", type=int, default=_D.steps, help="fine-tuning steps per arm")
    parser.add_argument("--pretrain-steps", type=int, default=_D.pretrain_steps)
    parser.add_argument("--no-axolotl", action="store_true",
                        help="skip the `axolotl train` step (it is skipped anyway when axolotl is not installed)")


def run(args: argparse.Namespace) -> int:
    from ual_plugin.demo.run import run_demo

    if args.seeds < 2:
        raise SystemExit(f"ual demo: --seeds must be >= 2 (paired confidence intervals), got {args.seeds}")
    run_demo(DemoSettings(out_dir=args.out, seeds=tuple(range(args.seeds)), alpha=args.alpha, steps=args.steps,
                          pretrain_steps=args.pretrain_steps, axolotl=not args.no_axolotl))
    return 0
