"""``score`` / ``score_dataset``: load rows, find what the cache lacks, score it, write the output."""

from __future__ import annotations

import math
import os
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ual_plugin.scoring import formats
from ual_plugin.scoring.cache import ScoreCache, make_key
from ual_plugin.scoring.client import ApiScorer, Job, RunStats, run_sync, served_model
from ual_plugin.scoring.cost import EST_OUTPUT_TOKENS, Pricing, TokenCounter
from ual_plugin.scoring.layouts import render_sample
from ual_plugin.scoring.options import ScoreOptions
from ual_plugin.scoring.parse import DIGIT_SPLIT
from ual_plugin.scoring.prompts import PAPER_PROMPT_VERSION, load_prompt

ASSUMED_SECONDS_PER_REQUEST = 1.0  # for --dry-run time estimates (typical gpt-4o latency for a short reply)


@dataclass
class ScoreResult:
    """What a run did: the scores (None = no score), why rows failed, counters, and the written output."""

    values: list[float | None]
    layout: str
    field: str
    n_rows: int
    n_unique: int
    n_cached_rows: int  # rows already scored in the cache before this run
    failed_rows: dict[int, str]  # row index -> why it has no score
    stats: RunStats
    scorer: str
    n_replies: list[int] = field(default_factory=list)  # usable replies behind each row's score
    samples: int = 1  # replies asked for per row
    pricing: Pricing | None = None
    output: Path | None = None
    estimate: list[str] | None = None  # the --dry-run report
    pending_batches: list[str] = field(default_factory=list)
    fatal: str | None = None
    loaded: formats.LoadedData | None = None

    @property
    def n_failed(self) -> int:
        return len(self.failed_rows)

    @property
    def exit_code(self) -> int:
        if self.estimate is not None:
            return 0
        return 2 if self.fatal else 3 if self.pending_batches else 1 if self.failed_rows else 0

    def dataset(self) -> Any:
        """The input rows plus the score column, as a ``datasets.Dataset``."""
        assert self.loaded is not None
        return formats.with_scores(self.loaded, self.values, self.field)

    def failure_summary(self, limit: int = 5) -> list[str]:
        by_reason = Counter(self.failed_rows.values())
        lines = []
        for reason, n in by_reason.most_common(limit):
            rows = [i for i, r in self.failed_rows.items() if r == reason][:5]
            lines.append(f"  {n} row(s) [{', '.join(map(str, rows))}{', ...' if n > len(rows) else ''}]: {reason}")
        return lines + ([f"  ... and {len(by_reason) - limit} other reason(s)"] if len(by_reason) > limit else [])

    def summary_lines(self) -> list[str]:
        if self.estimate is not None:
            return self.estimate
        s = self.stats
        lines = [f"scored {sum(v is not None for v in self.values)}/{self.n_rows} rows ({self.n_cached_rows} from "
                 f"the cache) in {s.elapsed:.1f} s with {self.scorer}; layout {self.layout}"]
        if self.scorer.startswith("ppl"):
            lines.append(f"tokens: {s.tokens_in:,} through the local model (no API, no cost)")
        else:
            retries = ", ".join(f"{n} x {r}" for r, n in s.retries.most_common()) or "none"
            lines.append(f"requests: {s.requests} ({s.requests / s.elapsed if s.elapsed > 0 else 0.0:.1f}/s); "
                         f"retries: {retries}; replies without a score: {s.unparsed}")
            unknown = f" (the server reported no usage for {s.usage_missing} replies)" if s.usage_missing else ""
            lines.append(f"tokens: {s.tokens_in:,} in, {s.tokens_out:,} out{unknown}")
            if self.pricing is not None:
                lines.append("cost of this run: " + self.pricing.describe(s.tokens_in, s.tokens_out))
            for why, n in s.logprob_notes.items():
                extra = " (a tokenizer that splits numbers into digits)" if why == DIGIT_SPLIT else ""
                lines.append(f"note: --logprobs: for {n} replies {why}{extra}; their parsed score was kept")
            if short := sum(0 < k < self.samples for k in self.n_replies):
                lines.append(f"note: {short} row(s) are the mean of fewer than {self.samples} usable replies "
                             "(the count of each is in the cache)")
        lines += [f"note: {n}" for n in s.notes]
        if self.fatal:
            lines += [f"STOPPED: {self.fatal}", "results received so far are kept in the cache; fix the problem "
                      "and re-run the same command to continue. No output was written."]
        elif self.pending_batches:
            lines.append(f"batch(es) pending: {', '.join(self.pending_batches)}; re-run the same command to "
                         "collect the results. No output was written.")
        elif self.failed_rows:
            lines += [f"FAILED: {self.n_failed} row(s) have no score (written as null):", *self.failure_summary(),
                      "re-run the same command to retry them (scored rows are not sent again)."]
        if self.output is not None and not self.fatal and not self.pending_batches:
            lines.append(f"wrote {self.output}")
        return lines


def score(data: Any, output: str | os.PathLike | None = None, options: ScoreOptions | None = None, *,
          log: Callable[[str], None] | None = None, **kwargs: Any) -> ScoreResult:
    """Score every row of ``data``; settings as a :class:`ScoreOptions` or its field names as keywords."""
    opts = options or ScoreOptions(**kwargs)
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    loaded = formats.load_data(data, split=opts.split)
    layout = formats.resolve_layout(loaded, opts.format)
    convs = formats.conversations(loaded, layout)
    samples = opts.samples if opts.scorer == "openai" else 1
    if opts.scorer == "openai":
        opts.model = opts.model or ("gpt-4o" if opts.openai_hosted else served_model(opts))
        prompt = load_prompt(opts.prompt, opts.max_score)
        host = "" if opts.openai_hosted else f" at {opts.endpoint}"
        scorer_name = f"openai:{opts.model}" + (" (azure)" if opts.azure else "") + host
        texts = [render_sample(c, opts.max_sample_chars) for c in convs]
        keys = [make_key("openai", opts.model, prompt.fingerprint, opts.effective_temperature, opts.logprobs, t)
                for t in texts]
    else:
        from ual_plugin.scoring.ppl_scorer import model_fingerprint

        if not opts.model:
            raise ValueError("--scorer ppl needs --model PATH (a local causal LM folder)")
        scorer_name = f"ppl:{opts.model}"
        keys = [make_key("ppl", model_fingerprint(opts.model), opts.max_length, c) for c in convs]
    world, first = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0")) == 0
    if world > 1 and opts.scorer != "ppl":
        raise ValueError(f"only --scorer ppl runs on several processes; this launch has {world} (run the API "
                         "scorer as one process and raise --concurrency instead)")
    first_row: dict[str, int] = {}
    for i, k in enumerate(keys):
        first_row.setdefault(k, i)
    cache_path = formats.sidecar_path(output) if opts.cache_path is None and output is not None else opts.cache_path
    with ScoreCache(cache_path or None, write=first) as cache:  # under a launch, only the first process writes
        done = {k for k in first_row if cache.score(k, samples, opts.min_samples) is not None}
        todo = [k for k in first_row if k not in done]
        result = ScoreResult(values=[], layout=layout, field=opts.field, n_rows=len(keys), n_unique=len(first_row),
                             n_cached_rows=sum(k in done for k in keys), failed_rows={}, stats=RunStats(),
                             scorer=scorer_name, output=Path(output) if output is not None and first else None,
                             loaded=loaded, samples=samples)
        t0 = time.monotonic()
        if opts.scorer == "openai":
            result.pricing = Pricing.resolve(opts.model, opts.price_in, opts.price_out, opts.batch,
                                             opts.openai_hosted)
            jobs = [Job(k, cache.missing(k, samples), prompt.messages(texts[first_row[k]])) for k in todo]
            if opts.dry_run:
                result.estimate = _estimate(result, jobs, opts)
                return result
            _run_api(opts, cache, jobs, result, prompt.version, log)
        elif opts.dry_run:
            result.estimate = ["dry run: nothing was computed and nothing was written.",
                               f"rows: {result.n_rows} ({result.n_cached_rows} already scored in the cache); "
                               f"{len(todo)} distinct samples to run through the local model {opts.model}"]
            return result
        elif todo:
            from ual_plugin.scoring.ppl_scorer import score_ppl

            result.stats = score_ppl([(k, convs[first_row[k]]) for k in todo], opts, cache, scorer_name)
        result.stats.elapsed = time.monotonic() - t0
        result.values = [cache.score(k, samples, opts.min_samples) for k in keys]
        result.n_replies = [len(cache.usable(k, samples)) for k in keys]
        for i, (k, v) in enumerate(zip(keys, result.values, strict=True)):
            if v is None:
                result.failed_rows[i] = result.stats.failures.get(k) or cache.failure(k) or (
                    "not sent: the run stopped early" if result.fatal else "pending in a batch")
        if result.output is not None and not result.fatal and not result.pending_batches:
            try:
                formats.write_output(output, result.dataset())
            except Exception as err:
                keep = f" The scores are kept in {cache.path}: re-run with another -o and --cache {cache.path} " \
                       "to write them without sending anything again." if cache.path else ""
                raise formats.InputError(f"could not write {output} ({type(err).__name__}: {err}).{keep}") from err
    return result


def _run_api(opts: ScoreOptions, cache: ScoreCache, jobs: list[Job], result: ScoreResult, prompt_version: str,
             log: Callable[[str], None]) -> None:
    live = [r.get("batch") or r.get("input_file_id") for r in cache.batches.values() if r.get("state") != "collected"]
    if live and not opts.batch:
        log(f"warning: batch(es) {', '.join(map(str, live))} from an earlier --batch run are not collected; "
            "their rows are sent again now. Stop and re-run with --batch to collect them instead.")
    max_tokens = opts.max_tokens or (16 if prompt_version == PAPER_PROMPT_VERSION else 256)
    api = ApiScorer(opts, cache, result.scorer, prompt_version, max_tokens)
    try:
        if opts.batch:
            from ual_plugin.scoring.batch import BatchRunner

            runner = BatchRunner(api, log)
            run_sync(runner.arun(jobs))
            result.pending_batches = runner.pending
        elif jobs:
            run_sync(api.arun(jobs))
    except Exception as err:  # openai errors can quote the request: never show the key
        text = api.redactor.redact(f"{type(err).__name__}: {err}")
        if text == f"{type(err).__name__}: {err}":
            raise
        raise RuntimeError(text) from None
    result.stats, result.fatal = api.stats, api.stats.fatal


def _estimate(result: ScoreResult, jobs: list[Job], opts: ScoreOptions) -> list[str]:
    """The --dry-run report: tokens, cost and time of what a run would send."""
    counter = TokenCounter.for_model(opts.model or "")
    requests = sum(len(j.slots) for j in jobs)
    tokens_in = sum(counter.count_messages(j.messages) * len(j.slots) for j in jobs)
    tokens_out = EST_OUTPUT_TOKENS * requests
    secs = math.ceil(requests / opts.concurrency) * ASSUMED_SECONDS_PER_REQUEST
    span = f"~{secs:.0f} s" if secs < 120 else f"~{secs / 60:.0f} min" if secs < 7200 else f"~{secs / 3600:.1f} h"
    when = "up to 24 h (Batch API completion window; often much less)" if opts.batch else "nothing to do" \
        if not jobs else f"{span} at concurrency {opts.concurrency}, assuming {ASSUMED_SECONDS_PER_REQUEST:g} s " \
        "per request and no rate limiting"
    return ["dry run: no scoring request was sent and nothing was written.",
            f"rows: {result.n_rows} ({result.n_cached_rows} already scored in the cache, {len(jobs)} distinct "
            f"samples to score); layout: {result.layout}; model: {opts.model}",
            f"requests: {requests}",
            f"input tokens: {tokens_in:,} [{counter.note}]",
            f"output tokens: ~{tokens_out:,} (assumed {EST_OUTPUT_TOKENS} per reply)",
            f"estimated cost: {result.pricing.describe(tokens_in, tokens_out)}",  # type: ignore[union-attr]
            f"estimated time: {when}"]


def score_dataset(data: Any, output: str | os.PathLike | None = None, **kwargs: Any) -> Any:
    """Add the score column to ``data`` (a path, ``datasets.Dataset``/``DatasetDict`` or list of dicts).

    Keywords: the fields of :class:`ScoreOptions`. Rows without a score are ``None`` with a
    ``RuntimeWarning`` saying why; an error no retry fixes (bad key, no quota) raises ``RuntimeError``.
    """
    result = score(data, output, **kwargs)
    if result.fatal:
        raise RuntimeError(f"scoring stopped: {result.fatal}")
    if result.pending_batches:
        raise RuntimeError(f"batch(es) {', '.join(result.pending_batches)} still pending; call again to collect")
    if result.failed_rows:
        warnings.warn(f"{result.n_failed} of {result.n_rows} rows could not be scored and are None:\n"
                      + "\n".join(result.failure_summary()), RuntimeWarning, stacklevel=2)
    return result.dataset()
