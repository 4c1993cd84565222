"""``ual score INPUT -o OUTPUT``: add an ``uncertainty`` column through an OpenAI-compatible API or locally.

Exit codes: 0 every row scored; 1 some rows have no score (null in OUTPUT; the summary says why);
2 bad input or configuration, or the run stopped on an error no retry fixes; 3 a ``--batch --no-wait``
batch is still pending; 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys

from ual_plugin.scoring.formats import LAYOUTS

EPILOG = """\
The API key is read from OPENAI_API_KEY (Azure: AZURE_OPENAI_API_KEY, AZURE_OPENAI_ENDPOINT and
OPENAI_API_VERSION, used when no --base-url is given) and is never written to any file or log.
Every reply is appended to OUTPUT.ual-cache.jsonl as it arrives: re-running the same command sends
no request for a row already scored and retries the rows that failed.

examples:
  ual score train.jsonl -o train.scored.jsonl --dry-run
  ual score train.jsonl -o train.scored.jsonl --model gpt-4o-mini --concurrency 32
  ual score data/ -o scored/ --base-url http://localhost:8000/v1 --model Qwen/Qwen2.5-7B-Instruct
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
    g.add_argument("--scorer", choices=("openai", "ppl"), default="openai",
                   help="openai: an LLM judge on the prompt's 0-99 scale (default). ppl: the response's "
                        "perplexity under the local causal LM given by --model PATH; the stored value is the raw "
                        "perplexity (>= 1, another scale; the smoothing map only needs non-negative values)")
    g.add_argument("--model", default=None,
                   help="model name at the endpoint (default gpt-4o; an Azure deployment name with Azure), or the "
                        "local model folder with --scorer ppl")
    g.add_argument("--base-url", default=None,
                   help="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1 (vLLM), "
                        "http://localhost:11434/v1 (Ollama). Default: OpenAI (or Azure, see below)")
    g.add_argument("--concurrency", type=int, default=16, help="requests in flight at once (default 16)")
    g.add_argument("--prompt", default="paper",
                   help="'paper' (the paper's 0-99 uncertainty rubric, default) or a text file holding {sample}")
    g.add_argument("--samples", type=int, default=1, metavar="K",
                   help="ask K times and average (temperature defaults to 1 when K > 1)")
    g.add_argument("--logprobs", action="store_true",
                   help="use the expected score over the score token's top alternatives where the server "
                        "returns logprobs (else the sampled score)")
    g.add_argument("--temperature", type=float, default=None, help="default 0 (1 with --samples > 1)")
    g.add_argument("--no-structured", dest="structured", action="store_false",
                   help="do not send response_format (structured output); it is dropped automatically when the "
                        "server rejects it")
    g.add_argument("--max-score", type=int, default=99, help="top of the prompt's scale (default 99)")
    g.add_argument("--max-sample-chars", type=int, default=24_000,
                   help="cut longer samples in the middle before sending (default 24000; 0 = never)")
    g.add_argument("--max-tokens", type=int, default=None, help="max_tokens for each reply (default: not sent)")
    d = p.add_argument_group("data")
    d.add_argument("--format", default="auto", choices=("auto", *LAYOUTS),
                   help="row layout (default: detected from the columns)")
    d.add_argument("--split", default=None, help="split to score when INPUT is a DatasetDict folder")
    d.add_argument("--field", default="uncertainty", help="name of the score column (default uncertainty)")
    d.add_argument("--cache", default=None, metavar="PATH",
                   help="resume cache (default OUTPUT.ual-cache.jsonl)")
    r = p.add_argument_group("scale, retries and cost")
    r.add_argument("--dry-run", action="store_true",
                   help="count tokens and estimate cost and time; send nothing, write nothing")
    r.add_argument("--max-retries", type=int, default=6, help="retries on 429 / 5xx / timeouts (default 6)")
    r.add_argument("--retry-base-delay", type=float, default=1.0,
                   help="first backoff in seconds, doubled per retry, when the server gives no retry-after")
    r.add_argument("--max-retry-wait", type=float, default=120.0, help="longest single wait in seconds")
    r.add_argument("--timeout", type=float, default=60.0, help="per-request timeout in seconds")
    r.add_argument("--price-in", type=float, default=None, help="USD per 1M input tokens (overrides the table)")
    r.add_argument("--price-out", type=float, default=None, help="USD per 1M output tokens")
    r.add_argument("--progress", dest="progress", action="store_true", default=None,
                   help="force the progress bar (default: only on a terminal)")
    r.add_argument("--no-progress", dest="progress", action="store_false")
    b = p.add_argument_group("Batch API")
    b.add_argument("--batch", action="store_true",
                   help="use the OpenAI Batch API (50%% cheaper, results within 24 h): submit, poll, collect")
    b.add_argument("--batch-id", action="append", default=[], metavar="ID",
                   help="collect an already submitted batch (repeatable); implies --batch")
    b.add_argument("--no-wait", dest="wait", action="store_false",
                   help="submit and exit (code 3); re-run the same command later to collect")
    b.add_argument("--poll-interval", type=float, default=30.0, help="seconds between status checks (default 30)")
    q = p.add_argument_group("--scorer ppl")
    q.add_argument("--batch-size", type=int, default=8, help="samples per forward pass (default 8)")
    q.add_argument("--max-length", type=int, default=2048, help="tokens per sample (default 2048)")
    q.add_argument("--device", default=None, help="cpu / cuda / cuda:1 (default: cuda when available)")


def run(args: argparse.Namespace) -> int:
    from ual_plugin.scoring.client import ConfigError, Redactor
    from ual_plugin.scoring.core import score
    from ual_plugin.scoring.formats import InputError, RowFormatError

    redactor = Redactor()

    def err(msg: str, code: int = 2) -> int:
        print(f"ual score: error: {redactor.redact(msg)}", file=sys.stderr, flush=True)
        return code

    if not args.output and not args.dry_run:
        return err("-o/--output is required (or use --dry-run)")
    model = args.model
    if args.scorer == "ppl" and not model:
        return err("--scorer ppl needs --model PATH (a local causal LM folder)")
    model = model or "gpt-4o"
    try:
        result = score(
            args.input, args.output, scorer=args.scorer, model=model, base_url=args.base_url,
            concurrency=args.concurrency, prompt=args.prompt, samples=args.samples, logprobs=args.logprobs,
            temperature=args.temperature, structured=args.structured, format=args.format, split=args.split,
            field=args.field, batch=bool(args.batch or args.batch_id), batch_ids=args.batch_id, wait=args.wait,
            poll_interval=args.poll_interval, dry_run=args.dry_run, cache_path=args.cache,
            max_retries=args.max_retries, retry_base_delay=args.retry_base_delay,
            max_retry_wait=args.max_retry_wait, timeout=args.timeout, max_tokens=args.max_tokens,
            max_sample_chars=args.max_sample_chars or None, max_score=args.max_score,
            price_in=args.price_in, price_out=args.price_out, ppl_batch_size=args.batch_size,
            max_length=args.max_length, device=args.device, progress=args.progress,
        )
    except (InputError, RowFormatError, ConfigError, ValueError) as e:
        return err(str(e))
    except KeyboardInterrupt:
        where = f" in {args.cache or (args.output + '.ual-cache.jsonl')}" if args.output else ""
        print(f"\ninterrupted: every reply received so far is saved{where}; re-run the same command to resume.",
              file=sys.stderr, flush=True)
        return 130
    except Exception as e:  # unexpected: still never print the key
        return err(f"{type(e).__name__}: {e}")
    for line in result.summary_lines():
        print(redactor.redact(line), flush=True)
    return result.exit_code
