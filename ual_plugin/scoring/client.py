"""Scoring through an OpenAI-compatible chat endpoint with the official ``openai`` client.

Bounded concurrency (a pool of asyncio workers), our own retries (the client's are off) with
exponential backoff and jitter that honour ``retry-after`` / ``retry-after-ms``, a shared pause
after a 429 so all workers back off together, a one-time fallback when the server rejects
structured output or another optional parameter, and every reply appended to the cache as it
arrives. The API key is only ever handed to the client; every message we print or store passes
through :func:`Redactor.redact`.
"""

from __future__ import annotations

import asyncio
import email.utils
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ual_plugin.scoring.cache import ScoreCache
from ual_plugin.scoring.parse import ScoreParseError, expected_score, parse_score
from ual_plugin.scoring.prompts import response_format_schema

KEY_ENV_VARS = ("OPENAI_API_KEY", "AZURE_OPENAI_API_KEY", "AZURE_OPENAI_AD_TOKEN")
DEFAULT_AZURE_API_VERSION = "2024-10-21"
TOP_LOGPROBS = 20


class FatalAPIError(RuntimeError):
    """An error no retry can fix (bad key, unknown model, no quota): the run stops."""


class ConfigError(ValueError):
    """Missing key / endpoint configuration."""


@dataclass
class ApiOptions:
    model: str = "gpt-4o"
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)  # default: OPENAI_API_KEY / Azure variables
    concurrency: int = 16
    samples: int = 1
    logprobs: bool = False
    temperature: float | None = None  # default: 0 for one sample, 1 when averaging several
    structured: bool = True
    max_retries: int = 6
    retry_base_delay: float = 1.0
    max_retry_wait: float = 120.0
    timeout: float = 60.0
    max_tokens: int | None = None
    parse_retries: int = 1
    max_score: float = 99

    @property
    def effective_temperature(self) -> float:
        if self.temperature is not None:
            return float(self.temperature)
        return 0.0 if self.samples == 1 else 1.0


class Redactor:
    """Removes every known secret (the key in use and the key variables) from text."""

    def __init__(self, *secrets: str | None) -> None:
        values = {s for s in secrets if s}
        values |= {os.environ[v] for v in KEY_ENV_VARS if os.environ.get(v)}
        self.secrets = sorted((s for s in values if len(s) >= 4), key=len, reverse=True)

    def redact(self, text: Any) -> str:
        text = str(text)
        for s in self.secrets:
            text = text.replace(s, "***")
        return text


def using_azure(opts: ApiOptions) -> bool:
    return (opts.base_url is None and bool(os.environ.get("AZURE_OPENAI_ENDPOINT"))
            and bool(os.environ.get("AZURE_OPENAI_API_KEY") or os.environ.get("AZURE_OPENAI_AD_TOKEN")))


def make_client(opts: ApiOptions) -> Any:
    """AsyncOpenAI (or AsyncAzureOpenAI when the Azure variables are set and no base URL is given)."""
    import openai

    common = {"max_retries": 0, "timeout": opts.timeout}
    if using_azure(opts):
        return openai.AsyncAzureOpenAI(
            api_key=opts.api_key or os.environ.get("AZURE_OPENAI_API_KEY") or None,
            azure_ad_token=os.environ.get("AZURE_OPENAI_AD_TOKEN") or None,
            azure_endpoint=os.environ["AZURE_OPENAI_ENDPOINT"],
            api_version=os.environ.get("OPENAI_API_VERSION") or DEFAULT_AZURE_API_VERSION,
            **common,
        )
    key = opts.api_key or os.environ.get("OPENAI_API_KEY")
    base_url = opts.base_url or os.environ.get("OPENAI_BASE_URL") or None
    if not key:
        if base_url is None:
            raise ConfigError(
                "no API key: set OPENAI_API_KEY (or AZURE_OPENAI_API_KEY + AZURE_OPENAI_ENDPOINT + "
                "OPENAI_API_VERSION for Azure), or pass --base-url for a local server, or use --scorer ppl"
            )
        key = "not-needed"  # local servers (vLLM, Ollama, llama.cpp) accept any key
    return openai.AsyncOpenAI(api_key=key, base_url=base_url, **common)


def retry_after_seconds(headers: Any) -> float | None:
    """Seconds the server asked us to wait (``retry-after-ms``, ``retry-after``: seconds or a date)."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _get(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, dict):
        return obj.get(name, default)
    return getattr(obj, name, default)


@dataclass
class Interpreted:
    """A completion turned into a score (or the reason it could not be)."""

    score: float | None
    parsed: float | None
    expected: float | None
    reply: str
    tokens_in: int
    tokens_out: int
    error: str | None = None
    usage_known: bool = True


def interpret_completion(completion: Any, max_score: float, logprobs: bool) -> Interpreted:
    """Works on the client's ChatCompletion objects and on plain dicts (Batch API output lines)."""
    usage = _get(completion, "usage")
    tin = int(_get(usage, "prompt_tokens", 0) or 0) if usage is not None else 0
    tout = int(_get(usage, "completion_tokens", 0) or 0) if usage is not None else 0
    choices = _get(completion, "choices") or []
    if not choices:
        return Interpreted(None, None, None, "", tin, tout, "reply has no choices", usage is not None)
    choice = choices[0]
    message = _get(choice, "message")
    text = _get(message, "content") or ""
    refusal = _get(message, "refusal")
    try:
        parsed = parse_score(text, max_score)
    except ScoreParseError as err:
        why = f"model refused: {refusal}" if refusal and not text else f"no score in reply: {err}"
        return Interpreted(None, None, None, text, tin, tout, why, usage is not None)
    expected = None
    if logprobs:
        lp = _get(choice, "logprobs")
        expected = expected_score(_get(lp, "content") if lp is not None else None, parsed, max_score)
    score = expected if expected is not None else parsed.value
    return Interpreted(score, parsed.value, expected, text, tin, tout, None, usage is not None)


@dataclass
class RunStats:
    requests: int = 0
    replies: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    usage_missing: int = 0
    retries: Counter = field(default_factory=Counter)  # reason -> count
    unparsed: int = 0
    no_logprobs: int = 0
    failures: dict[str, str] = field(default_factory=dict)  # cache key -> reason
    notes: list[str] = field(default_factory=list)
    fatal: str | None = None
    elapsed: float = 0.0

    def add_usage(self, it: Interpreted) -> None:
        self.tokens_in += it.tokens_in
        self.tokens_out += it.tokens_out
        if not it.usage_known:
            self.usage_missing += 1


@dataclass
class Job:
    key: str
    index: int  # which of the K samples
    messages: list[dict[str, str]]


class ApiScorer:
    """Runs jobs against the endpoint; results go to ``cache``; returns :class:`RunStats`."""

    def __init__(self, opts: ApiOptions, cache: ScoreCache, scorer_name: str, prompt_version: str,
                 progress: bool | None = None, client: Any = None) -> None:
        self.opts = opts
        self.cache = cache
        self.scorer_name = scorer_name
        self.prompt_version = prompt_version
        self.progress = progress
        self._client = client
        self.redactor = Redactor(opts.api_key)
        self.stats = RunStats()
        self.dropped: set[str] = set() if opts.structured else {"response_format"}
        self._pause_until = 0.0

    # -- request construction ---------------------------------------------------------------------
    def request_body(self, messages: Sequence[dict[str, str]]) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.opts.model, "messages": list(messages)}
        if "response_format" not in self.dropped:
            body["response_format"] = response_format_schema(int(self.opts.max_score))
        if "temperature" not in self.dropped:
            body["temperature"] = self.opts.effective_temperature
        if self.opts.logprobs and "logprobs" not in self.dropped:
            body["logprobs"] = True
            body["top_logprobs"] = TOP_LOGPROBS
        if self.opts.max_tokens:
            body["max_tokens"] = self.opts.max_tokens
        return body

    def _drop_rejected_param(self, err: Any, body: dict[str, Any]) -> str | None:
        """After a 400: the optional parameter the server objected to (dropped for the rest of the run)."""
        text = f"{_get(err, 'param') or ''} {_get(err, 'message') or ''}".lower()
        optional = ["response_format", "top_logprobs", "logprobs", "temperature"]
        named = [p for p in optional if p in body and p.replace("_", "") in text.replace("_", "")]
        if not named and "response_format" in body and any(w in text for w in ("json", "schema", "format", "structured")):
            named = ["response_format"]
        if not named:
            return None
        for p in named:
            if p not in self.dropped:  # first worker to hit it: remember and say so once
                self.dropped.add(p)
                if p == "top_logprobs":
                    self.dropped.add("logprobs")
                msg = self.redactor.redact(_get(err, "message") or "")
                self.stats.notes.append(f"the server rejected `{p}` (HTTP 400: {msg[:160]}); "
                                        f"continuing without it")
        return named[0]  # (possibly dropped already by a worker whose request was in flight too)

    # -- the run ----------------------------------------------------------------------------------
    def run(self, jobs: Sequence[Job]) -> RunStats:
        """Blocking entry point (runs its own event loop, in a thread if one is already running)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.arun(jobs))
        import concurrent.futures

        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, self.arun(jobs)).result()

    async def arun(self, jobs: Sequence[Job]) -> RunStats:
        from tqdm.auto import tqdm

        t0 = time.monotonic()
        client = self._client or make_client(self.opts)
        disable = (not sys.stderr.isatty()) if self.progress is None else not self.progress
        bar = tqdm(total=len(jobs), unit="req", desc="scoring", disable=disable, dynamic_ncols=True,
                   smoothing=0.1)
        it = iter(jobs)

        async def worker() -> None:
            for job in it:
                if self.stats.fatal:
                    return
                await self._run_job(client, job)
                bar.update(1)
                if self.stats.failures or self.stats.retries:
                    bar.set_postfix(failed=len(self.stats.failures), retries=sum(self.stats.retries.values()),
                                    refresh=False)

        try:
            await asyncio.gather(*(worker() for _ in range(max(1, min(self.opts.concurrency, len(jobs))))))
        finally:
            bar.close()
            self.stats.elapsed = time.monotonic() - t0
            if self._client is None:
                await client.close()
        return self.stats

    async def _wait_for_pause(self) -> None:
        while True:
            delay = self._pause_until - time.monotonic()
            if delay <= 0:
                return
            await asyncio.sleep(delay)

    def _backoff(self, attempt: int, hinted: float | None) -> float:
        if hinted is not None:
            return min(hinted, self.opts.max_retry_wait)
        base = self.opts.retry_base_delay * (2 ** attempt)
        return min(self.opts.max_retry_wait, base) * (0.5 + random.random() / 2)

    def _fail(self, job: Job, reason: str) -> None:
        reason = self.redactor.redact(reason)
        self.stats.failures[job.key] = reason
        self.cache.add_failure(job.key, job.index, reason, scorer=self.scorer_name)

    async def _run_job(self, client: Any, job: Job) -> None:
        import openai

        transient = 0
        parse_failures = 0
        while True:
            if self.stats.fatal:
                return
            await self._wait_for_pause()
            body = self.request_body(job.messages)
            self.stats.requests += 1
            try:
                completion = await client.chat.completions.create(**body)
            except openai.BadRequestError as err:
                if self._drop_rejected_param(err, body):
                    continue
                return self._fail(job, f"HTTP 400 (bad request): {_err_text(err)}")
            except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError) as err:
                what = {401: "authentication failed (check the API key)", 403: "permission denied",
                        404: f"not found (is the model/deployment {self.opts.model!r} right? is --base-url right?)"}
                self.stats.fatal = self.redactor.redact(
                    f"HTTP {err.status_code}: {what.get(err.status_code, '')}: {_err_text(err)}")
                return
            except openai.APIStatusError as err:
                status = err.status_code
                code = _get(err, "code")
                if status == 429 and code == "insufficient_quota":
                    self.stats.fatal = self.redactor.redact(f"HTTP 429 insufficient_quota: {_err_text(err)}")
                    return
                if status == 429 or status >= 500 or status in (408, 409):
                    reason = "HTTP 429 (rate limited)" if status == 429 else f"HTTP {status} (server error)"
                    if transient >= self.opts.max_retries:
                        return self._fail(job, f"{reason} after {transient} retries: {_err_text(err)}")
                    wait = self._backoff(transient, retry_after_seconds(err.response.headers))
                    if status == 429:
                        self._pause_until = max(self._pause_until, time.monotonic() + wait)
                    transient += 1
                    self.stats.retries[reason] += 1
                    await asyncio.sleep(wait)
                    continue
                return self._fail(job, f"HTTP {status}: {_err_text(err)}")
            except (openai.APITimeoutError, openai.APIConnectionError) as err:
                reason = "timeout" if isinstance(err, openai.APITimeoutError) else "connection error"
                if transient >= self.opts.max_retries:
                    return self._fail(job, f"{reason} after {transient} retries")
                transient += 1
                self.stats.retries[reason] += 1
                await asyncio.sleep(self._backoff(transient - 1, None))
                continue
            result = interpret_completion(completion, self.opts.max_score, "logprobs" in body)
            self.stats.add_usage(result)
            if result.score is None:
                self.stats.unparsed += 1
                parse_failures += 1
                if parse_failures > self.opts.parse_retries:
                    return self._fail(job, result.error or "no score")
                continue
            if "logprobs" in body and result.expected is None:
                self.stats.no_logprobs += 1
            self.stats.replies += 1
            self.cache.add_reply(
                job.key, job.index, score=result.score, parsed=result.parsed, expected=result.expected,
                reply=self.redactor.redact(result.reply[:200]), usage=[result.tokens_in, result.tokens_out],
                scorer=self.scorer_name, model=self.opts.model, prompt=self.prompt_version,
            )
            return


def _err_text(err: Any) -> str:
    body = _get(err, "body")
    msg = _get(body, "message") if isinstance(body, dict) else None
    text = " ".join(str(msg or _get(err, "message") or err).split())
    return text[:300]
