"""Scoring through an OpenAI-compatible chat endpoint with the official ``openai`` client.

The client retries 429 / 5xx / timeouts and honours ``retry-after``; httpx hooks add what only this
tool knows: errors no retry fixes, why each attempt was retried, fewer workers after timeouts. The
response format adapts once per run, ``n`` carries ``--samples``, an unusable reply gets a follow-up
turn, and everything printed or stored passes through :class:`Redactor`.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ual_plugin.scoring.cache import ScoreCache
from ual_plugin.scoring.options import ScoreOptions
from ual_plugin.scoring.parse import Reply, get, read_choice
from ual_plugin.scoring.prompts import response_format_schema

KEY_ENV_VARS = ("OPENAI_API_KEY", "AZURE_OPENAI_API_KEY", "AZURE_OPENAI_AD_TOKEN")
DEFAULT_AZURE_API_VERSION = "2024-10-21"
TOP_LOGPROBS = 20
FORMATS = ("json_schema", "json_object", "none")
REASK = "Reply with only the score: a whole number from 0 to {max_score}."
_RETRY = object()  # the request changed (format or parameter dropped): send it again


class FatalAPIError(RuntimeError):
    """An error no retry can fix (bad key, unknown model, no quota): the run stops."""


class ConfigError(ValueError):
    """Missing key / endpoint configuration."""


class Redactor:
    """Removes every known secret (the key in use and the key variables) from text."""

    def __init__(self, *secrets: str | None) -> None:
        values = {s for s in secrets if s} | {os.environ[v] for v in KEY_ENV_VARS if os.environ.get(v)}
        self.secrets = sorted((s for s in values if len(s) >= 4), key=len, reverse=True)

    def redact(self, text: Any) -> str:
        text = str(text)
        for s in self.secrets:
            text = text.replace(s, "***")
        return text


def make_client(opts: ScoreOptions, hooks: dict[str, list] | None = None, sync: bool = False) -> Any:
    """AsyncOpenAI (AsyncAzureOpenAI with the Azure variables and no base URL), retrying on its own."""
    import openai

    common: dict[str, Any] = {"max_retries": opts.max_retries, "timeout": opts.timeout}
    if hooks:
        common["http_client"] = openai.DefaultAsyncHttpxClient(event_hooks=hooks)
    if opts.azure:
        return (openai.AzureOpenAI if sync else openai.AsyncAzureOpenAI)(
            api_key=opts.api_key or os.environ.get("AZURE_OPENAI_API_KEY") or None,
            azure_ad_token=os.environ.get("AZURE_OPENAI_AD_TOKEN") or None,
            azure_endpoint=os.environ["AZURE_OPENAI_ENDPOINT"],
            api_version=os.environ.get("OPENAI_API_VERSION") or DEFAULT_AZURE_API_VERSION, **common)
    key = opts.api_key or os.environ.get("OPENAI_API_KEY")
    if not key and opts.endpoint is None:
        raise ConfigError("no API key: set OPENAI_API_KEY (or AZURE_OPENAI_API_KEY + AZURE_OPENAI_ENDPOINT + "
                          "OPENAI_API_VERSION for Azure), or pass --base-url for a local server, or use --scorer ppl")
    # local servers (vLLM, Ollama, llama.cpp) accept any key
    return (openai.OpenAI if sync else openai.AsyncOpenAI)(api_key=key or "not-needed", base_url=opts.endpoint,
                                                           **common)


def served_model(opts: ScoreOptions) -> str:
    """The model of a custom endpoint that serves exactly one (``GET /v1/models``), else ConfigError."""
    import openai

    try:
        names = [m.id for m in make_client(opts, sync=True).with_options(max_retries=2).models.list()]
    except openai.OpenAIError as err:
        raise ConfigError(Redactor(opts.api_key).redact(
            f"no --model given and {opts.endpoint}/models could not be listed ({type(err).__name__}: "
            f"{err_text(err)}); pass --model")) from None
    if len(names) != 1:
        raise ConfigError(f"no --model given and {opts.endpoint} serves {len(names)} models "
                          f"({', '.join(names[:10]) or 'none'}): pass --model NAME")
    return names[0]


def err_text(err: Any) -> str:
    """An API error's own message, on one line."""
    body = get(err, "body")
    msg = get(body, "message") if isinstance(body, dict) else None
    return " ".join(str(msg or get(err, "message") or err).split())[:300]


@dataclass
class RunStats:
    requests: int = 0  # HTTP attempts, retries included
    replies: int = 0  # replies that held a score
    tokens_in: int = 0
    tokens_out: int = 0
    usage_missing: int = 0
    retries: Counter = field(default_factory=Counter)  # why an attempt was retried -> count
    unparsed: int = 0
    logprob_notes: Counter = field(default_factory=Counter)  # why --logprobs kept the parsed score -> count
    failures: dict[str, str] = field(default_factory=dict)  # cache key -> reason
    notes: list[str] = field(default_factory=list)
    fatal: str | None = None
    elapsed: float = 0.0  # seconds of scoring, timed by core.score

    def add_usage(self, usage: Any) -> None:
        self.usage_missing += usage is None
        self.tokens_in += int(get(usage, "prompt_tokens", 0) or 0)
        self.tokens_out += int(get(usage, "completion_tokens", 0) or 0)


@dataclass
class Job:
    key: str
    slots: list[int]  # which of the --samples replies are missing
    messages: list[dict[str, str]]


class ApiScorer:
    """Runs jobs against the endpoint; replies go to ``cache``; ``stats`` says how it went."""

    def __init__(self, opts: ScoreOptions, cache: ScoreCache, scorer_name: str, prompt_version: str,
                 max_tokens: int) -> None:
        self.opts, self.cache, self.scorer_name, self.prompt_version = opts, cache, scorer_name, prompt_version
        self.max_tokens, self.redactor, self.stats = max_tokens, Redactor(opts.api_key), RunStats()
        self.format = "json_schema" if opts.response_format == "auto" else opts.response_format
        self.dropped: set[str] = set()
        self.token_param, self.n_honoured = "max_tokens", True
        self._attempts: dict[str, list] = {}  # call id -> [start time, status of the last attempt]
        self._ids = itertools.count()
        self._lowered_at = 0.0
        self.limit = self.workers = opts.concurrency  # workers = requests in flight; they retire down to limit

    def request_body(self, messages: Sequence[dict[str, str]], n: int = 1) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.opts.model, "messages": list(messages),
                                self.token_param: self.max_tokens}
        if self.format == "json_schema":
            body["response_format"] = response_format_schema(int(self.opts.max_score))
        elif self.format == "json_object":
            body["response_format"] = {"type": "json_object"}
        if "temperature" not in self.dropped:
            body["temperature"] = self.opts.effective_temperature
        if self.opts.logprobs and "logprobs" not in self.dropped:
            body["logprobs"], body["top_logprobs"] = True, TOP_LOGPROBS
        if n > 1:
            body["n"] = n
        return body

    def _note(self, text: str) -> None:
        self.stats.notes.append(self.redactor.redact(text))

    def _adapt(self, body: dict[str, Any], status: int, text: str) -> bool:
        """After a refusal: change the request for the rest of the run (True), or not (False)."""
        low = text.lower()
        if "response_format" in body and "response_format" in low:
            sent = body["response_format"]["type"]
            if sent == self.format:  # the first refusal decides; requests in flight just follow
                if self.opts.response_format != "auto":
                    raise FatalAPIError(f"the server refuses response_format {sent} (HTTP {status}: {text[:160]}); "
                                        "try --response-format auto")
                self.format = FORMATS[FORMATS.index(sent) + 1]
                self._note(f"the server refused response_format {sent} (HTTP {status}: {text[:160]}); "
                           f"using {'plain text' if self.format == 'none' else self.format} for the rest of the run")
            return True
        if self.token_param == "max_tokens" and "max_completion_tokens" in low:
            self.token_param = "max_completion_tokens"
            return True
        low = low.replace('"', "'").replace("`", "'")
        named = [p for p in ("top_logprobs", "logprobs", "temperature", "n")
                 if p in body and f"'{p}'" in low] if status in (400, 422) else []
        for p in named:
            if p == "n":
                self.n_honoured = False
            elif p not in self.dropped:
                self.dropped.add("logprobs" if p == "top_logprobs" else p)
                self._note(f"the server rejected `{p}` (HTTP {status}: {text[:160]}); continuing without it")
        return bool(named)

    # httpx hooks: what the client's own retries cannot know
    async def _on_request(self, request: Any) -> None:
        call = request.headers.get("x-ual-call")
        if call is None:
            return
        self.stats.requests += 1
        now, prev = time.monotonic(), self._attempts.get(call)
        if prev is not None:  # a retry: say why the attempt before it failed
            if prev[1] is None:
                reason = "timeout" if now - prev[0] >= 0.9 * self.opts.timeout else "connection error"
                if reason == "timeout":
                    self._lower("timeouts")
            else:
                reason = "HTTP 429 (rate limited)" if prev[1] == 429 else f"HTTP {prev[1]} (server error)"
            self.stats.retries[reason] += 1
        self._attempts[call] = [now, None]

    async def _on_response(self, response: Any) -> None:
        attempt = self._attempts.get(response.request.headers.get("x-ual-call", ""))
        if attempt is None:
            return
        attempt[1] = response.status_code
        if response.status_code < 400:
            if time.monotonic() - attempt[0] > self.opts.timeout / 2:
                self._lower("replies slower than half the timeout")
            return
        text = (await response.aread()).decode("utf-8", "replace").lower()
        if ("response_format" in text and b"response_format" in response.request.content) \
                or "insufficient_quota" in text:
            response.headers["x-should-retry"] = "false"

    def _lower(self, why: str) -> None:
        if self.limit == 1 or time.monotonic() - self._lowered_at < self.opts.timeout / 2:
            return
        self._lowered_at = time.monotonic()
        self._note(f"{why} at concurrency {self.limit}: lowered to {max(1, self.limit // 2)}")
        self.limit = max(1, self.limit // 2)

    async def _call(self, client: Any, body: dict[str, Any]) -> Any:
        """The completion, :data:`_RETRY` when the request must change, or the reason it failed (str)."""
        import openai

        call = str(next(self._ids))
        retries = f" after {self.opts.max_retries} retries"
        try:
            return await client.chat.completions.create(**body, extra_headers={"x-ual-call": call})
        except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError) as err:
            what = {401: "authentication failed (check the API key)", 403: "permission denied",
                    404: f"not found (is the model/deployment {self.opts.model!r} right? is --base-url right?)"}
            raise FatalAPIError(f"HTTP {err.status_code}: {what[err.status_code]}: {err_text(err)}") from None
        except openai.APIStatusError as err:
            text, status = err_text(err), err.status_code
            if "insufficient_quota" in f"{get(err, 'code')} {text}":
                raise FatalAPIError(f"HTTP 429 insufficient_quota: {text}") from None
            if self._adapt(body, status, text):
                return _RETRY
            kind = {429: " (rate limited)", 400: " (bad request)"}.get(status, " (server error)" if status >= 500 else "")
            return f"HTTP {status}{kind}{retries if status == 429 or status >= 500 else ''}: {text}"
        except openai.APITimeoutError:
            return f"timeout{retries} (--timeout {self.opts.timeout:g} s)"
        except openai.APIConnectionError as err:
            return f"connection error{retries}: {err_text(err.__cause__ or err)}"
        finally:
            self._attempts.pop(call, None)

    async def _complete(self, client: Any, messages: list[dict[str, str]], n: int = 1) -> Any:
        while (out := await self._call(client, self.request_body(messages, n))) is _RETRY:
            pass
        if not isinstance(out, str):
            self.stats.add_usage(get(out, "usage"))
        return out

    async def _run_job(self, client: Any, job: Job) -> None:
        slots = list(job.slots)
        while slots and not self.stats.fatal:
            n = len(slots) if self.n_honoured and len(slots) > 1 else 1
            completion = await self._complete(client, job.messages, n)
            if isinstance(completion, str):
                for slot in slots:
                    self._fail(job.key, slot, completion)
                return
            choices = list(get(completion, "choices") or [])
            if n > 1 and len(choices) < n and self.n_honoured:
                self.n_honoured = False
                self._note(f"the server answered `n={n}` with {len(choices)} choice(s): sending one request "
                           "per sample instead")
            if not choices:
                self._fail(job.key, slots.pop(0), "reply has no choices")
            for choice in choices[:len(slots)]:
                slot, reply = slots.pop(0), read_choice(choice, self.opts.max_score, self.opts.logprobs)
                for _ in range(self.opts.parse_retries):
                    if reply.score is not None:
                        break
                    self.stats.unparsed += 1
                    reply = await self._reask(client, job, reply)
                self.conclude(job.key, slot, reply)

    async def _reask(self, client: Any, job: Job, reply: Reply) -> Reply:
        """A follow-up turn asking for only the score: a changed request, so even greedy decoding can answer."""
        follow = [*job.messages, {"role": "assistant", "content": reply.text},
                  {"role": "user", "content": REASK.format(max_score=self.opts.max_score)}]
        completion = await self._complete(client, follow)
        if isinstance(completion, str):
            return Reply(reply.text, error=completion)
        choices = get(completion, "choices") or []
        return read_choice(choices[0], self.opts.max_score, self.opts.logprobs) if choices else reply

    def conclude(self, key: str, slot: int, reply: Reply, **extra: Any) -> None:
        """Into the cache: the reply's score, or why it holds none."""
        if reply.score is None:
            self.stats.unparsed += 1
            return self._fail(key, slot, reply.error or "no score")
        self.stats.replies += 1
        if reply.logprob_note:
            self.stats.logprob_notes[reply.logprob_note] += 1
        self.cache.add_reply(key, slot, score=reply.score, parsed=reply.parsed, expected=reply.expected,
                             reply=self.redactor.redact(reply.text[:200]), scorer=self.scorer_name,
                             model=self.opts.model, prompt=self.prompt_version, **extra)

    def _fail(self, key: str, slot: int, reason: str) -> None:
        self.stats.failures[key] = reason = self.redactor.redact(reason)
        self.cache.add_failure(key, slot, reason, scorer=self.scorer_name)

    async def arun(self, jobs: Sequence[Job]) -> RunStats:
        from tqdm.auto import tqdm

        client = make_client(self.opts, {"request": [self._on_request], "response": [self._on_response]})
        bar = tqdm(total=len(jobs), unit="row", desc="scoring", disable=not self.opts.show_progress,
                   dynamic_ncols=True, smoothing=0.1)
        rest = iter(jobs[1:])

        async def work(todo: Any) -> None:
            for job in todo:
                if self.stats.fatal:
                    return
                try:
                    await self._run_job(client, job)
                except FatalAPIError as err:
                    self.stats.fatal = self.redactor.redact(str(err))
                bar.update(1)
                if self.stats.failures or self.stats.retries:
                    bar.set_postfix(failed=len(self.stats.failures), retries=sum(self.stats.retries.values()),
                                    refresh=False)
                if todo is rest and self.workers > self.limit:  # concurrency lowered: this worker retires
                    self.workers -= 1
                    return

        try:  # the first row goes alone: the response format, the model and the key are settled first
            await work(jobs[:1])
            self.workers = min(self.limit, len(jobs) - 1)
            await asyncio.gather(*(work(rest) for _ in range(max(0, self.workers))))
        finally:
            bar.close()
            await client.close()
        return self.stats


def run_sync(coro: Any) -> Any:
    """``asyncio.run(coro)``, in a thread when an event loop is already running (notebooks)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()
