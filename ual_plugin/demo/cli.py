"""`ual demo`: SFT vs uniform label smoothing vs UAL on a tiny local model, several seeds (no API key, no hub)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ual_plugin.demo.run import DemoSettings

_D = DemoSettings()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=_D.out_dir, help="output folder")
    parser.add_argument("--seeds", type=int, default=len(_D.seeds), help="number of seeds per arm (0, 1, ...)")
    parser.add_argument("--epochs", type=int, default=_D.epochs)
    parser.add_argument("--alpha", type=float, default=_D.alpha,
                        help="uniform arm: the smoothing of every sample; UAL: the mean smoothing (ual_alpha)")
    parser.add_argument("--n-train", type=int, default=_D.n_train)
    parser.add_argument("--n-eval", type=int, default=_D.n_eval)
    parser.add_argument("--no-axolotl", action="store_true",
                        help="skip the `axolotl train` step (it is skipped anyway when axolotl is not installed)")
    parser.add_argument("--uncertainty", choices=["category", "ppl"], default=_D.scorer,
                        help="scores UAL trains on: the generator's known category (default; a stand-in for an "
                        "LLM judge) or `ual score --scorer ppl` with the seed-0 SFT model")


def run(args: argparse.Namespace) -> int:
    from ual_plugin.demo.run import run_demo

    if args.seeds < 1:
        raise SystemExit(f"ual demo: --seeds must be >= 1, got {args.seeds}")
    run_demo(DemoSettings(out_dir=args.out, seeds=tuple(range(args.seeds)), epochs=args.epochs, alpha=args.alpha,
                          n_train=args.n_train, n_eval=args.n_eval, scorer=args.uncertainty,
                          axolotl=not args.no_axolotl))
    return 0
