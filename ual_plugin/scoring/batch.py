"""``--batch``: the OpenAI Batch API (half price, results within 24 h) with resume by batch id.

Submit: the requests go into JSONL files of at most 50,000 lines (the API's limit), each is
uploaded (``purpose="batch"``) and a batch is created on ``/v1/chat/completions``. Before the
batch is created the uploaded file id is recorded in the cache, and the batch id right after, so a
kill never orphans a paid batch: a re-run finds it (by id, or by its input file in the batch list)
and polls it instead of submitting again. Collect: output and error files are read line by line,
``custom_id = "<cache key>:<sample index>"`` maps each reply back to its rows.
"""

from __future__ import annotations

import asyncio
import io
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

from ual_plugin.scoring.cache import ScoreCache
from ual_plugin.scoring.client import ApiScorer, Job, _err_text, _get, interpret_completion

MAX_LINES_PER_BATCH = 50_000
MAX_BYTES_PER_BATCH = 190 * 1024 * 1024  # the API allows 200 MB per input file
TERMINAL = {"completed", "failed", "expired", "cancelled"}
ENDPOINT = "/v1/chat/completions"


def _custom_id(job: Job) -> str:
    return f"{job.key}:{job.index}"


def _split_custom_id(custom_id: str) -> tuple[str, int] | None:
    key, _, idx = str(custom_id).rpartition(":")
    if not key or not idx.isdigit():
        return None
    return key, int(idx)


class BatchRunner:
    """Submits missing jobs as batches, polls pending ones and collects their results into the cache."""

    def __init__(self, scorer: ApiScorer, poll_interval: float = 30.0, wait: bool = True,
                 attach: Sequence[str] = (), log: Any = None) -> None:
        self.scorer = scorer
        self.cache: ScoreCache = scorer.cache
        self.poll_interval = poll_interval
        self.wait = wait
        self.attach = list(attach)
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.submitted: list[str] = []
        self.pending: list[str] = []

    def run(self, jobs: Sequence[Job]) -> None:
        asyncio.run(self.arun(jobs))

    async def arun(self, jobs: Sequence[Job]) -> None:
        import openai

        from ual_plugin.scoring.client import make_client

        t0 = time.monotonic()
        client = self.scorer._client or make_client(self.scorer.opts)
        try:
            await self._arun(client, jobs)
        except (openai.APIStatusError, openai.APIConnectionError) as err:
            status = getattr(err, "status_code", None)
            where = f"HTTP {status}" if status else type(err).__name__
            self.scorer.stats.fatal = self.scorer.redactor.redact(f"Batch API call failed ({where}): {_err_text(err)}")
        finally:
            self.scorer.stats.elapsed = time.monotonic() - t0
            if self.scorer._client is None:
                await client.close()

    async def _arun(self, client: Any, jobs: Sequence[Job]) -> None:
        # 1. batches already known from earlier runs (and any the user attached with --batch-id)
        active: dict[str, dict] = {}
        for rec in list(self.cache.batches.values()):
            if rec.get("state") == "collected":
                continue
            if rec.get("batch"):
                active[rec["batch"]] = rec
            elif rec.get("input_file_id"):  # uploaded, creation not confirmed: find it or create it
                bid = await self._find_batch_for_file(client, rec["input_file_id"])
                if bid is None:
                    batch = await client.batches.create(input_file_id=rec["input_file_id"], endpoint=ENDPOINT,
                                                        completion_window="24h",
                                                        metadata={"tool": "ual score"})
                    bid = batch.id
                    self.submitted.append(bid)
                new = {**rec, "batch": bid, "state": "submitted"}
                self.cache.append(new)
                active[bid] = new
        for bid in self.attach:
            if bid not in active:
                rec = {"batch": bid, "state": "submitted", "keys": None}
                self.cache.append(rec)
                active[bid] = rec
        covered = set()
        for rec in active.values():
            covered.update(rec.get("keys") or [])
        # 2. submit whatever is neither cached nor covered by a live batch
        todo = [j for j in jobs if _custom_id(j) not in covered]
        if todo:
            for chunk in self._chunks(todo):
                lines = "".join(json.dumps({"custom_id": _custom_id(j), "method": "POST", "url": ENDPOINT,
                                            "body": self.scorer.request_body(j.messages)},
                                           ensure_ascii=False) + "\n" for j in chunk)
                keys = [_custom_id(j) for j in chunk]
                upload = await client.files.create(file=("ual-score-batch.jsonl", io.BytesIO(lines.encode())),
                                                   purpose="batch")
                self.cache.append({"batch": None, "input_file_id": upload.id, "state": "uploaded", "keys": keys})
                batch = await client.batches.create(input_file_id=upload.id, endpoint=ENDPOINT,
                                                    completion_window="24h", metadata={"tool": "ual score"})
                rec = {"batch": batch.id, "input_file_id": upload.id, "state": "submitted", "keys": keys}
                self.cache.append(rec)
                active[batch.id] = rec
                self.submitted.append(batch.id)
                self.log(f"submitted batch {batch.id} ({len(chunk)} requests)")
        if not self.wait:
            self.pending = list(active)
            return
        # 3. poll every live batch to the end and collect it
        remaining = dict(active)
        last_status: dict[str, str] = {}
        while remaining:
            for bid in list(remaining):
                batch = await client.batches.retrieve(bid)
                status = batch.status
                if last_status.get(bid) != status:
                    counts = _get(batch, "request_counts")
                    done = f" ({_get(counts, 'completed', 0)}/{_get(counts, 'total', '?')} done)" if counts else ""
                    self.log(f"batch {bid}: {status}{done}")
                    last_status[bid] = status
                if status in TERMINAL:
                    await self._collect(client, batch, remaining[bid])
                    self.cache.append({"batch": bid, "state": "collected", "status": status})
                    del remaining[bid]
            if remaining:
                await asyncio.sleep(self.poll_interval)

    def _chunks(self, todo: Sequence[Job]):
        chunk: list[Job] = []
        size = 0
        for job in todo:
            line_size = len(json.dumps(self.scorer.request_body(job.messages), ensure_ascii=False)) + 200
            if chunk and (len(chunk) >= MAX_LINES_PER_BATCH or size + line_size > MAX_BYTES_PER_BATCH):
                yield chunk
                chunk, size = [], 0
            chunk.append(job)
            size += line_size
        if chunk:
            yield chunk

    async def _find_batch_for_file(self, client: Any, file_id: str) -> str | None:
        try:
            page = await client.batches.list(limit=100)
        except Exception:
            return None
        for batch in getattr(page, "data", []) or []:
            if _get(batch, "input_file_id") == file_id:
                return batch.id
        return None

    async def _collect(self, client: Any, batch: Any, rec: dict) -> None:
        stats = self.scorer.stats
        redact = self.scorer.redactor.redact
        seen: set[str] = set()
        for file_id in (_get(batch, "output_file_id"), _get(batch, "error_file_id")):
            if not file_id:
                continue
            content = await client.files.content(file_id)
            for line in content.text.splitlines():
                if not line.strip():
                    continue
                try:
                    item = json.loads(line)
                except json.JSONDecodeError:
                    continue
                parsed_id = _split_custom_id(item.get("custom_id", ""))
                if parsed_id is None:
                    continue
                key, idx = parsed_id
                seen.add(item["custom_id"])
                if idx in self.cache.replies.get(key, {}):
                    continue  # collected before
                stats.requests += 1
                response = item.get("response") or {}
                status = response.get("status_code")
                body = response.get("body") or {}
                if status != 200 or item.get("error"):
                    err = item.get("error") or (body.get("error") if isinstance(body, dict) else None) or {}
                    msg = err.get("message") if isinstance(err, dict) else str(err)
                    reason = f"batch {batch.id}: HTTP {status}: {' '.join(str(msg or 'error').split())[:300]}"
                    stats.failures[key] = redact(reason)
                    self.cache.add_failure(key, idx, redact(reason), scorer=self.scorer.scorer_name)
                    continue
                result = interpret_completion(body, self.scorer.opts.max_score, self.scorer.opts.logprobs)
                stats.add_usage(result)
                if result.score is None:
                    stats.unparsed += 1
                    stats.failures[key] = redact(result.error or "no score")
                    self.cache.add_failure(key, idx, redact(result.error or "no score"),
                                           scorer=self.scorer.scorer_name)
                    continue
                stats.replies += 1
                if self.scorer.opts.logprobs and result.expected is None:
                    stats.no_logprobs += 1
                self.cache.add_reply(key, idx, score=result.score, parsed=result.parsed, expected=result.expected,
                                     reply=redact(result.reply[:200]), usage=[result.tokens_in, result.tokens_out],
                                     scorer=self.scorer.scorer_name, model=self.scorer.opts.model,
                                     prompt=self.scorer.prompt_version, batch_id=batch.id)
        if _get(batch, "status") != "completed":
            errors = _get(batch, "errors")
            detail = ""
            data = _get(errors, "data") if errors is not None else None
            if data:
                detail = ": " + "; ".join(str(_get(e, "message")) for e in data[:3])
            reason = redact(f"batch {batch.id} ended {batch.status}{detail}")
            for cid in rec.get("keys") or []:
                if cid in seen:
                    continue
                key, idx = _split_custom_id(cid) or (cid, 0)
                stats.failures[key] = reason
                self.cache.add_failure(key, idx, reason, scorer=self.scorer.scorer_name)
