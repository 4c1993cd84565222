"""``ual score INPUT -o OUTPUT``: add an ``uncertainty`` column through an OpenAI-compatible API or locally.

Exit codes: 0 every row scored; 1 some rows have no score (null in OUTPUT; the summary says why);
2 bad input or configuration, or the run stopped on an error no retry fixes; 3 a ``--batch --no-wait``
batch is still pending; 130 interrupted (Ctrl-C), 143 terminated (SIGTERM).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

from ual_plugin.scoring.layouts import LAYOUTS
from ual_plugin.scoring.options import RESPONSE_FORMATS

EPILOG = """\
The API key is read from OPENAI_API_KEY (Azure: AZURE_OPENAI_API_KEY, AZURE_OPENAI_ENDPOINT and
OPENAI_API_VERSION, used when no --base-url is given) and is never written to any file or log.
Every reply is appended to OUTPUT.ual-cache.jsonl as it arrives: re-running the same command sends
no request for a row already scored and retries the rows that failed.

examples:
  ual score train.jsonl -o train.scored.jsonl --dry-run
  ual score train.jsonl -o train.scored.jsonl --model gpt-4o-mini --concurrency 32
  ual score data/ -o scored/ --base-url http://localhost:8000/v1      # vLLM, llama.cpp, Ollama (.../v1)
  ual score train.jsonl -o train.scored.jsonl --batch            # OpenAI Batch API, half price
  ual score train.jsonl -o train.ppl.jsonl --scorer ppl --model ./my-local-model
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = EPILOG
    p.add_argument("input", metavar="INPUT", help="a .jsonl/.json/.csv/.parquet file or a datasets save_to_disk folder")
    p.add_argument("-o", "--output", metavar="OUTPUT",
                   help="where to write the rows plus the score column; the format follows the extension "
                        "(.jsonl/.json/.csv/.parquet, none = a save_to_disk folder). Required unless --dry-run")
    g = p.add_argument_group("scorer")
    g.add_argument("--scorer", choices=("openai", "ppl"), default="openai", help="openai: an LLM judge on the "
                   "prompt's 0-99 scale (default). ppl: the response's perplexity under the local LM --model PATH")
    g.add_argument("--model", default=None,
                   help="model at the endpoint (default: gpt-4o on OpenAI / Azure, where it is the deployment; "
                        "the model a custom --base-url serves when it serves one), or the folder for --scorer ppl")
    g.add_argument("--base-url", default=None, help="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1 "
                   "(llama.cpp server, vLLM), http://localhost:11434/v1 (Ollama). Default: OpenAI (or Azure)")
    g.add_argument("--concurrency", type=int, default=16,
                   help="most requests in flight (default 16); lowered during the run after timeouts or replies "
                        "slower than half --timeout (a server that answers one request at a time)")
    g.add_argument("--prompt", default="paper", help="'paper' (the paper's 0-99 rubric) or a file holding {sample}")
    g.add_argument("--samples", type=int, default=1, metavar="K",
                   help="K replies per row (one request with n=K where the server honours n), averaged; "
                        "temperature defaults to 1 when K > 1")
    g.add_argument("--min-samples", type=int, default=1, metavar="M", help="usable replies a row needs of its K "
                   "(default 1); the row's score is their mean")
    g.add_argument("--logprobs", action="store_true",
                   help="expected score over the score token's alternatives where that is sound (one "
                        "whole-number token); else the parsed score, and the summary says so")
    g.add_argument("--temperature", type=float, default=None, help="default 0 (1 with --samples > 1)")
    g.add_argument("--response-format", choices=RESPONSE_FORMATS, default="auto",
                   help="structured output: auto (default) tries json_schema, then json_object, then plain text, "
                        "switching once for the whole run at the first refusal")
    g.add_argument("--no-structured", dest="response_format", action="store_const", const="none",
                   help="same as --response-format none")
    g.add_argument("--max-score", type=int, default=99, help="top of the prompt's scale (default 99)")
    g.add_argument("--max-sample-chars", type=int, default=24_000,
                   help="cut longer samples in the middle before sending (default 24000; 0 = never)")
    g.add_argument("--max-tokens", type=int, default=None,
                   help="reply-token limit of every request (default 16 with the paper prompt, 256 with a prompt "
                        "file; raise it for reasoning models)")
    d = p.add_argument_group("data")
    d.add_argument("--format", default="auto", choices=("auto", *LAYOUTS), help="row layout (default: detected)")
    d.add_argument("--split", default=None, help="split to score when INPUT is a DatasetDict folder")
    d.add_argument("--field", default="uncertainty", help="name of the score column (default uncertainty)")
    d.add_argument("--cache", dest="cache_path", metavar="PATH", help="resume cache (default OUTPUT.ual-cache.jsonl)")
    r = p.add_argument_group("scale, retries and cost")
    r.add_argument("--dry-run", action="store_true", help="estimate tokens, cost and time; send and write nothing")
    r.add_argument("--max-retries", type=int, default=6, help="the openai client's retries (default 6)")
    r.add_argument("--timeout", type=float, default=60.0, help="per-request timeout in seconds (default 60)")
    r.add_argument("--price-in", type=float, default=None,
                   help="USD per 1M input tokens (overrides the table; a custom endpoint has no price otherwise)")
    r.add_argument("--price-out", type=float, default=None, help="USD per 1M output tokens")
    r.add_argument("--progress", action=argparse.BooleanOptionalAction, help="progress bar (default: on a terminal)")
    b = p.add_argument_group("Batch API")
    b.add_argument("--batch", action="store_true", help="OpenAI Batch API (50%% cheaper, within 24 h)")
    b.add_argument("--batch-id", dest="batch_ids", action="append", default=[], metavar="ID",
                   help="collect an already submitted batch (repeatable); implies --batch")
    b.add_argument("--no-wait", dest="wait", action="store_false", help="submit and exit (code 3); re-run to collect")
    b.add_argument("--poll-interval", type=float, default=30.0, help="seconds between status checks (default 30)")
    q = p.add_argument_group("--scorer ppl")
    q.add_argument("--batch-size", dest="ppl_batch_size", type=int, default=8, help="samples per forward (default 8)")
    q.add_argument("--max-length", type=int, default=2048, help="tokens per sample (default 2048)")
    q.add_argument("--device", default=None, help="cpu / cuda / cuda:1 (default: cuda when available)")


class _Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: the cache is closed and the user told how to resume."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise _Terminated


def run(args: argparse.Namespace) -> int:
    from ual_plugin.scoring.client import Redactor
    from ual_plugin.scoring.core import score
    from ual_plugin.scoring.formats import sidecar_path
    from ual_plugin.scoring.options import ScoreOptions

    redactor = Redactor()

    def err(msg: str, code: int = 2) -> int:
        print(f"ual score: error: {redactor.redact(msg)}", file=sys.stderr, flush=True)
        return code

    if not args.output and not args.dry_run:
        return err("-o/--output is required (or use --dry-run)")
    args.batch = bool(args.batch or args.batch_ids)
    args.max_sample_chars = args.max_sample_chars or None
    main_thread = threading.current_thread() is threading.main_thread()  # signals reach only the main thread
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if main_thread else None
    try:
        opts = ScoreOptions.from_namespace(args)
        result = score(args.input, args.output, opts)
    except ValueError as e:  # bad input or configuration (InputError, RowFormatError, ConfigError)
        return err(str(e))
    except KeyboardInterrupt as stop:
        where = f" in {args.cache_path or sidecar_path(args.output)}" if args.output else ""
        what = "terminated" if isinstance(stop, _Terminated) else "interrupted"
        print(f"\n{what}: every reply received so far is saved{where}; re-run the same command to resume.",
              file=sys.stderr, flush=True)
        return 143 if isinstance(stop, _Terminated) else 130
    except Exception as e:  # unexpected: still never print the key
        return err(f"{type(e).__name__}: {e}")
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    if os.environ.get("RANK", "0") == "0":  # under torchrun / accelerate launch the first process reports
        for line in result.summary_lines():
            print(redactor.redact(line), flush=True)
    return result.exit_code
