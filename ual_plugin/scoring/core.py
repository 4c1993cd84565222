"""``score`` / ``score_dataset``: load rows, find what the cache lacks, score it, write the output."""

from __future__ import annotations

import math
import os
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ual_plugin.scoring import formats
from ual_plugin.scoring.cache import ScoreCache, make_key
from ual_plugin.scoring.client import (
    ApiOptions,
    ApiScorer,
    FatalAPIError,
    Job,
    Redactor,
    RunStats,
    using_azure,
)
from ual_plugin.scoring.cost import EST_OUTPUT_TOKENS, Pricing, TokenCounter
from ual_plugin.scoring.prompts import DEFAULT_MAX_SCORE, load_prompt

DEFAULT_FIELD = "uncertainty"
DEFAULT_MAX_SAMPLE_CHARS = 24_000
ASSUMED_SECONDS_PER_REQUEST = 1.0  # for --dry-run time estimates (typical gpt-4o latency for a short reply)


@dataclass
class Estimate:
    """What ``--dry-run`` reports; nothing is sent."""

    rows_to_score: int
    requests: int
    tokens_in: int
    tokens_out: int
    counter_note: str
    exact_tokens: bool
    cost: str
    time: str


@dataclass
class ScoreResult:
    values: list[float | None]
    layout: str
    field: str
    n_rows: int
    n_unique: int
    n_cached_rows: int  # rows already scored in the cache before this run
    failed_rows: dict[int, str]  # row index -> why it has no score
    stats: RunStats
    scorer: str
    pricing: Pricing | None = None
    output: Path | None = None
    cache_path: Path | None = None
    estimate: Estimate | None = None
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
        if self.fatal:
            return 2
        if self.pending_batches:
            return 3
        return 1 if self.failed_rows else 0

    def dataset(self) -> Any:
        """The input rows plus the score column, as a ``datasets.Dataset``."""
        assert self.loaded is not None
        return formats.to_dataset(self.loaded, self.values, self.field)

    def failure_summary(self, limit: int = 5) -> list[str]:
        by_reason = Counter(self.failed_rows.values())
        lines = []
        for reason, n in by_reason.most_common(limit):
            rows = [i for i, r in self.failed_rows.items() if r == reason][:5]
            more = ", ..." if n > len(rows) else ""
            lines.append(f"  {n} row(s) [{', '.join(map(str, rows))}{more}]: {reason}")
        if len(by_reason) > limit:
            lines.append(f"  ... and {len(by_reason) - limit} other reason(s)")
        return lines

    def summary_lines(self) -> list[str]:
        s = self.stats
        if self.estimate is not None:
            e = self.estimate
            return [
                "dry run: nothing was sent and nothing was written.",
                f"rows: {self.n_rows} ({self.n_cached_rows} already scored in the cache, {e.rows_to_score} to "
                f"score; {self.n_unique} distinct samples); layout: {self.layout}",
                f"requests: {e.requests}",
                f"input tokens: {e.tokens_in:,} [{e.counter_note}]",
                f"output tokens: ~{e.tokens_out:,} (assumed {EST_OUTPUT_TOKENS} per reply)",
                f"estimated cost: {e.cost}",
                f"estimated time: {e.time}",
            ]
        lines = [
            f"scored {sum(v is not None for v in self.values)}/{self.n_rows} rows "
            f"({self.n_cached_rows} from the cache) in {s.elapsed:.1f} s with {self.scorer}; layout {self.layout}",
        ]
        if self.scorer.startswith("ppl"):
            lines.append(f"tokens: {s.tokens_in:,} through the local model (no API, no cost)")
        else:
            rate = s.requests / s.elapsed if s.elapsed > 0 else 0.0
            retries = ", ".join(f"{n} x {r}" for r, n in s.retries.most_common()) or "none"
            lines.append(f"requests: {s.requests} ({rate:.1f}/s); retries: {retries}; replies without a score: "
                         f"{s.unparsed}")
            tokens = f"tokens: {s.tokens_in:,} in, {s.tokens_out:,} out"
            if s.usage_missing:
                tokens += f" (the server reported no usage for {s.usage_missing} replies)"
            lines.append(tokens)
            if self.pricing is not None:
                lines.append("cost of this run: " + self.pricing.describe(s.tokens_in, s.tokens_out))
            if s.no_logprobs:
                lines.append(f"note: {s.no_logprobs} replies had no usable logprobs; their sampled score was kept")
        lines += [f"note: {n}" for n in s.notes]
        if self.fatal:
            lines.append(f"STOPPED: {self.fatal}")
            lines.append("results received so far are kept in the cache; fix the problem and re-run the same "
                         "command to continue. No output was written.")
        elif self.pending_batches:
            lines.append(f"batch(es) pending: {', '.join(self.pending_batches)}; re-run the same command to "
                         "collect the results. No output was written.")
        elif self.failed_rows:
            lines.append(f"FAILED: {self.n_failed} row(s) have no score (written as null):")
            lines += self.failure_summary()
            lines.append("re-run the same command to retry them (scored rows are not sent again).")
        if self.output is not None and not self.fatal and not self.pending_batches:
            lines.append(f"wrote {self.output}")
        return lines


def _default_log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def score(
    data: Any,
    output: str | os.PathLike | None = None,
    *,
    scorer: str = "openai",
    model: str = "gpt-4o",
    base_url: str | None = None,
    api_key: str | None = None,
    concurrency: int = 16,
    prompt: str | None = "paper",
    samples: int = 1,
    logprobs: bool = False,
    temperature: float | None = None,
    structured: bool = True,
    format: str | None = None,  # noqa: A002 - mirrors --format
    split: str | None = None,
    field: str = DEFAULT_FIELD,
    batch: bool = False,
    batch_ids: Sequence[str] = (),
    wait: bool = True,
    poll_interval: float = 30.0,
    dry_run: bool = False,
    cache_path: str | os.PathLike | None | bool = None,
    max_retries: int = 6,
    retry_base_delay: float = 1.0,
    max_retry_wait: float = 120.0,
    timeout: float = 60.0,
    max_tokens: int | None = None,
    parse_retries: int = 1,
    max_sample_chars: int | None = DEFAULT_MAX_SAMPLE_CHARS,
    max_score: int = DEFAULT_MAX_SCORE,
    price_in: float | None = None,
    price_out: float | None = None,
    ppl_batch_size: int = 8,
    max_length: int = 2048,
    device: str | None = None,
    progress: bool | None = None,
    log: Callable[[str], None] | None = None,
    client: Any = None,
) -> ScoreResult:
    """Score every row of ``data``; see :func:`score_dataset` for the arguments. Returns a report."""
    log = log or _default_log
    if scorer not in ("openai", "ppl"):
        raise ValueError(f"scorer must be 'openai' or 'ppl', got {scorer!r}")
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    if scorer == "ppl" and (batch or logprobs or samples != 1):
        raise ValueError("--batch, --logprobs and --samples apply to the API scorer, not --scorer ppl")
    loaded = formats.load_data(data, split=split)
    layout = formats.resolve_layout(loaded, format)
    convs = formats.conversations(loaded, layout)

    if cache_path is None:
        cache_path = formats.sidecar_path(output) if output is not None else None
    elif cache_path is False:
        cache_path = None
    cache = ScoreCache(cache_path)  # type: ignore[arg-type]
    try:
        if scorer == "openai":
            the_prompt = load_prompt(prompt, max_score)
            opts = ApiOptions(model=model, base_url=base_url, api_key=api_key, concurrency=concurrency,
                              samples=samples, logprobs=logprobs, temperature=temperature, structured=structured,
                              max_retries=max_retries, retry_base_delay=retry_base_delay,
                              max_retry_wait=max_retry_wait, timeout=timeout, max_tokens=max_tokens,
                              parse_retries=parse_retries, max_score=max_score)
            scorer_name = f"openai:{model}" + (" (azure)" if using_azure(opts) else "")
            texts = [formats.render_sample(c, max_sample_chars) for c in convs]
            keys = [make_key("openai", model, the_prompt.fingerprint, opts.effective_temperature, bool(logprobs), t)
                    for t in texts]
            n_samples = samples
        else:
            from ual_plugin.scoring.ppl_scorer import model_fingerprint

            scorer_name = f"ppl:{model}"
            fp = model_fingerprint(model)
            keys = [make_key("ppl", fp, max_length, c) for c in convs]
            n_samples = 1

        first_row: dict[str, int] = {}
        for i, k in enumerate(keys):
            first_row.setdefault(k, i)
        n_cached_rows = sum(cache.score(k, n_samples) is not None for k in keys)
        todo_keys = [k for k in first_row if cache.score(k, n_samples) is None]

        result = ScoreResult(values=[], layout=layout, field=field, n_rows=len(keys), n_unique=len(first_row),
                             n_cached_rows=n_cached_rows, failed_rows={}, stats=RunStats(),
                             scorer=scorer_name, output=Path(output) if output is not None else None,
                             cache_path=Path(cache_path) if cache_path else None, loaded=loaded)

        if scorer == "openai":
            result.pricing = Pricing.resolve(model, price_in, price_out, batch=batch)
            jobs = [Job(k, i, the_prompt.messages(texts[first_row[k]]))
                    for k in todo_keys for i in cache.missing(k, n_samples)]
            if dry_run:
                result.estimate = _estimate(jobs, todo_keys, keys, cache, n_samples, opts, result.pricing, batch)
                result.values = [cache.score(k, n_samples) for k in keys]
                return result
            live = [r.get("batch") or r.get("input_file_id") for r in cache.batches.values()
                    if r.get("state") != "collected"]
            if live and not batch:
                log(f"warning: batch(es) {', '.join(map(str, live))} from an earlier --batch run are not collected; "
                    "their rows are sent again now. Stop and re-run with --batch to collect them instead.")
            api = ApiScorer(opts, cache, scorer_name, the_prompt.version, progress=progress, client=client)
            try:
                if batch:
                    from ual_plugin.scoring.batch import BatchRunner

                    runner = BatchRunner(api, poll_interval=poll_interval, wait=wait, attach=batch_ids, log=log)
                    runner.run(jobs)
                    result.pending_batches = runner.pending
                elif jobs:
                    api.run(jobs)
            except FatalAPIError as err:
                api.stats.fatal = str(err)
            except Exception as err:
                _raise_redacted(err, api.redactor)
            result.stats = api.stats
            result.fatal = api.stats.fatal
        else:
            jobs_ppl = [(k, convs[first_row[k]]) for k in todo_keys]
            if dry_run:
                result.estimate = Estimate(len(jobs_ppl), 0, 0, 0, "no API: local model", True,
                                           "none (local model)", "depends on the model and hardware")
                result.values = [cache.score(k, 1) for k in keys]
                return result
            if jobs_ppl:
                from ual_plugin.scoring.ppl_scorer import score_ppl

                result.stats = score_ppl(jobs_ppl, model, cache, scorer_name, batch_size=ppl_batch_size,
                                         max_length=max_length, device=device, progress=progress)

        result.values = [cache.score(k, n_samples) for k in keys]
        for i, (k, v) in enumerate(zip(keys, result.values, strict=True)):
            if v is None:
                reason = result.stats.failures.get(k) or cache.failures.get(k)
                if reason is None:
                    reason = "not sent: the run stopped early" if result.fatal else "pending in a batch"
                result.failed_rows[i] = reason
        if output is not None and not result.fatal and not result.pending_batches:
            try:
                formats.write_output(output, loaded, result.values, field)
            except Exception as err:
                keep = f" The scores are kept in {cache_path}: re-run with another -o and --cache {cache_path}" \
                    " to write them without sending anything again." if cache_path else ""
                raise formats.InputError(f"could not write {output} ({type(err).__name__}: {err}).{keep}") from err
        return result
    finally:
        cache.close()


def _raise_redacted(err: Exception, redactor: Redactor) -> None:
    """Re-raise with the key scrubbed from the message (openai errors can quote the request)."""
    text = redactor.redact(f"{type(err).__name__}: {err}")
    if text == f"{type(err).__name__}: {err}":
        raise err
    raise RuntimeError(text) from None


def _estimate(jobs: Sequence[Job], todo_keys: Sequence[str], keys: Sequence[str], cache: ScoreCache,
              n_samples: int, opts: ApiOptions, pricing: Pricing, batch: bool) -> Estimate:
    counter = TokenCounter.for_model(opts.model)
    tokens_in = sum(counter.count_messages(j.messages) for j in jobs)
    tokens_out = EST_OUTPUT_TOKENS * len(jobs)
    todo = set(todo_keys)
    rows_to_score = sum(k in todo for k in keys)
    if batch:
        time_text = "up to 24 h (Batch API completion window; often much less)"
    elif not jobs:
        time_text = "nothing to do"
    else:
        secs = math.ceil(len(jobs) / max(1, opts.concurrency)) * ASSUMED_SECONDS_PER_REQUEST
        time_text = (f"~{_fmt_duration(secs)} at concurrency {opts.concurrency}, assuming "
                     f"{ASSUMED_SECONDS_PER_REQUEST:g} s per request and no rate limiting")
    return Estimate(rows_to_score, len(jobs), tokens_in, tokens_out, counter.note, counter.exact,
                    pricing.describe(tokens_in, tokens_out), time_text)


def _fmt_duration(secs: float) -> str:
    if secs < 120:
        return f"{secs:.0f} s"
    if secs < 7200:
        return f"{secs / 60:.0f} min"
    return f"{secs / 3600:.1f} h"


def score_dataset(
    data: Any,
    output: str | os.PathLike | None = None,
    **kwargs: Any,
) -> Any:
    """Add an uncertainty column to ``data`` and return it as a ``datasets.Dataset``.

    Args:
        data: a path (``.jsonl``, ``.json``, ``.csv``, ``.parquet`` or a ``save_to_disk`` folder), a
            ``datasets.Dataset`` / ``DatasetDict`` (with ``split=``) or a list of dicts.
        output: where to write the scored rows (format from the extension; no extension = folder).
            Its resume cache ``OUTPUT.ual-cache.jsonl`` is written next to it. Without ``output`` no
            file is written and nothing is resumable unless ``cache_path`` is given.
        scorer: ``"openai"`` (any OpenAI-compatible endpoint; default) or ``"ppl"`` (local causal LM at
            ``model``; the value is the response perplexity).
        model, base_url, api_key: endpoint settings. The key defaults to ``OPENAI_API_KEY`` (or the
            Azure variables ``AZURE_OPENAI_API_KEY`` / ``AZURE_OPENAI_ENDPOINT`` / ``OPENAI_API_VERSION``
            when no ``base_url`` is given) and is never written anywhere.
        concurrency, samples, logprobs, temperature, prompt, structured, format, field, batch, ...:
            as the ``ual score`` flags of the same names.

    Rows that could not be scored keep ``None`` (a warning says how many and why); a stop on an
    unrecoverable API error (bad key, unknown model, no quota) raises ``RuntimeError``.
    """
    import warnings

    result = score(data, output, **kwargs)
    if result.fatal:
        raise RuntimeError(f"scoring stopped: {result.fatal}")
    if result.pending_batches:
        raise RuntimeError(f"batch(es) {', '.join(result.pending_batches)} still pending; call again to collect")
    if result.failed_rows:
        warnings.warn(f"{result.n_failed} of {result.n_rows} rows could not be scored and are None:\n"
                      + "\n".join(result.failure_summary()), RuntimeWarning, stacklevel=2)
    return result.dataset()
