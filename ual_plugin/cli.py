"""The `ual` command line: each subcommand lives in its own module and is imported only when used."""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module exposing `add_arguments(parser)` and `run(args) -> int`, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("ual_plugin.demo.cli", "train SFT, uniform label smoothing and UAL on the bundled demo (several seeds) and compare them"),
    "score": ("ual_plugin.scoring.cli", "add an `uncertainty` column to a dataset (OpenAI-compatible API or local PPL)"),
    "stats": ("ual_plugin.scoring.stats", "summarise the `uncertainty` column and the smoothing it maps to"),
    "analyze": ("ual_plugin.analysis.cli", "token-feature clustering (silhouette) of one or more models"),
    "check": ("ual_plugin.axolotl.check", "validate an Axolotl YAML and say whether UAL will be active"),
}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ual", description="Uncertainty-Aware Learning tools.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, help_text) in SUBCOMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:  # import only the module of the subcommand being run
            importlib.import_module(module).add_arguments(sp)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    module = importlib.import_module(SUBCOMMANDS[args.command][0])
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
