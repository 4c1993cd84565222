"""`ual demo`: the bundled end-to-end demo (no API key, no hub)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("ual_demo_output"), help="output folder")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--alpha", type=float, default=0.1, help="mean smoothing value (ual_alpha)")
    parser.add_argument("--n-train", type=int, default=480)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-axolotl", action="store_true",
                        help="skip the `axolotl train` step (it is skipped anyway when axolotl is not installed)")
    parser.add_argument("--uncertainty", choices=["category", "ppl"], default="category",
                        help="scores UAL trains on: the generator's known category (default; a stand-in for an "
                        "LLM judge) or `ual score --scorer ppl` with the SFT model")


def run(args: argparse.Namespace) -> int:
    from ual_plugin.demo.run import DemoSettings, run_demo

    run_demo(DemoSettings(out_dir=args.out, epochs=args.epochs, alpha=args.alpha, n_train=args.n_train,
                          seed=args.seed, scorer=args.uncertainty,
                          axolotl=not args.no_axolotl))
    return 0
