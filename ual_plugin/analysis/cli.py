"""`ual analyze MODEL [MODEL ...] --texts FILE --out DIR`: token-feature clustering of models."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Measure how tightly a model's LM-head input features cluster by next token (the paper's "
        "silhouette analysis, §4 / Table 5 / Fig. 5): for random pairs of frequent tokens, fit a 2-D "
        "PCA on the pair's features and compute the silhouette coefficient. Higher = tighter."
    )
    parser.add_argument("models", nargs="+", metavar="MODEL",
                        help="local Hugging Face causal-LM folder or PEFT adapter folder (one or more; "
                             "all must share the tokenizer vocabulary)")
    parser.add_argument("--texts", required=True, metavar="FILE",
                        help="jsonl with `text`, `messages` or alpaca fields; a .json array; or a plain "
                             "text file (one text per non-empty line)")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="output folder: silhouette.json, settings.json, silhouette.png, pca_<i>.png")
    parser.add_argument("--pairs", type=int, metavar="N", default=100, help="number of random token pairs (default 100)")
    parser.add_argument("--top-tokens", type=int, metavar="N", default=42,
                        help="draw pairs among the N most frequent next tokens (default 42)")
    parser.add_argument("--max-texts", type=int, default=None, metavar="N", help="use only the first N texts")
    parser.add_argument("--seed", type=int, metavar="N", default=0,
                        help="seed of the pair draw and of the per-token position sampling (default 0)")
    parser.add_argument("--names", nargs="+", default=None, metavar="NAME",
                        help="display names of the models, in order (default: the paths as given)")
    parser.add_argument("--base", default=None, metavar="PATH",
                        help="base model folder for PEFT adapters (default: their base_model_name_or_path)")
    parser.add_argument("--max-per-token", type=int, metavar="N", default=500,
                        help="keep at most this many features per token, a seeded random subset (default 500; "
                             "0 = all)")
    parser.add_argument("--max-length", type=int, metavar="N", default=512, help="truncate texts to this many tokens (default 512)")
    parser.add_argument("--batch-size", type=int, metavar="N", default=8, help="texts per forward pass (default 8)")
    parser.add_argument("--plots", type=int, metavar="N", default=3, help="number of pairs to draw as PCA scatter plots (default 3)")
    parser.add_argument("--include-special", action="store_true",
                        help="let special tokens (bos/eos/pad/chat markers) be chosen as top tokens")
    parser.add_argument("--keep-duplicates", action="store_true",
                        help="keep every occurrence of a (context, next token) repeated across texts, e.g. "
                             "a shared chat-template header (default: once; repeats are identical features)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                        help="model dtype (default auto: bfloat16 on CUDA, float32 on CPU)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from ual_plugin.analysis.pipeline import analyze
    from ual_plugin.analysis.texts import AnalysisError

    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            result = analyze(
                args.models,
                args.texts,
                args.out,
                names=args.names,
                base=args.base,
                pairs=args.pairs,
                top_tokens=args.top_tokens,
                max_texts=args.max_texts,
                max_per_token=args.max_per_token or None,
                max_length=args.max_length,
                batch_size=args.batch_size,
                seed=args.seed,
                device=args.device,
                dtype=args.dtype,
                include_special=args.include_special,
                dedupe=not args.keep_duplicates,
                plots=args.plots,
                progress=not args.no_progress,
            )
    except AnalysisError as e:
        print(f"ual analyze: error: {e}", file=sys.stderr)
        return 2
    finally:
        for message in dict.fromkeys(str(w.message) for w in caught or []):
            print(f"ual analyze: warning: {message}", file=sys.stderr)
    cfg = result.config
    print(f"{cfg['n_pairs']} pairs of {len(cfg['tokens'])} tokens, {cfg['n_texts']} texts, seed {cfg['seed']}")
    print(result.table())
    n_plots = min(args.plots, len(result.pairs))
    print(f"wrote {Path(args.out) / 'silhouette.json'}, settings.json, silhouette.png and {n_plots} pca_<i>.png")
    return 0
