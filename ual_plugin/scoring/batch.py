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

from ual_plugin.scoring.client import ApiScorer, Job, _err_text, _get, make_client
from ual_plugin.scoring.parse import read_choice

MAX_LINES_PER_BATCH = 50_000
MAX_BYTES_PER_BATCH = 190 * 1024 * 1024  # the API allows 200 MB per input file
TERMINAL = {"completed", "failed", "expired", "cancelled"}
ENDPOINT = "/v1/chat/completions"


def _requests(jobs: Sequence[Job]) -> list[tuple[str, Job]]:
    """One request per missing reply slot: ``custom_id = "<cache key>:<slot>"``."""
    return [(f"{job.key}:{slot}", job) for job in jobs for slot in job.slots]


class BatchRunner:
    """Submits missing jobs as batches, polls pending ones and collects their results into the cache."""

    def __init__(self, scorer: ApiScorer, log: Any = None) -> None:
        self.scorer, self.cache, opts = scorer, scorer.cache, scorer.opts
        self.poll_interval, self.wait, self.attach = opts.poll_interval, opts.wait, list(opts.batch_ids)
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.submitted: list[str] = []
        self.pending: list[str] = []

    def run(self, jobs: Sequence[Job]) -> None:
        asyncio.run(self.arun(jobs))

    async def arun(self, jobs: Sequence[Job]) -> None:
        import openai

        t0 = time.monotonic()
        client = make_client(self.scorer.opts)
        try:
            await self._arun(client, jobs)
        except (openai.APIStatusError, openai.APIConnectionError) as err:
            status = getattr(err, "status_code", None)
            where = f"HTTP {status}" if status else type(err).__name__
            self.scorer.stats.fatal = self.scorer.redactor.redact(f"Batch API call failed ({where}): {_err_text(err)}")
        finally:
            self.scorer.stats.elapsed = time.monotonic() - t0
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
        todo = [(cid, j) for cid, j in _requests(jobs) if cid not in covered]
        if todo:
            for chunk in self._chunks(todo):
                lines = "".join(json.dumps({"custom_id": cid, "method": "POST", "url": ENDPOINT,
                                            "body": self.scorer.request_body(j.messages)},
                                           ensure_ascii=False) + "\n" for cid, j in chunk)
                keys = [cid for cid, _ in chunk]
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

    def _chunks(self, todo: Sequence[tuple[str, Job]]):
        chunk: list[tuple[str, Job]] = []
        size = 0
        for item in todo:
            line_size = len(json.dumps(self.scorer.request_body(item[1].messages), ensure_ascii=False)) + 200
            if chunk and (len(chunk) >= MAX_LINES_PER_BATCH or size + line_size > MAX_BYTES_PER_BATCH):
                yield chunk
                chunk, size = [], 0
            chunk.append(item)
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
        scorer, stats = self.scorer, self.scorer.stats
        seen: set[str] = set()
        for file_id in (_get(batch, "output_file_id"), _get(batch, "error_file_id")):
            content = (await client.files.content(file_id)).text if file_id else ""
            for line in content.splitlines():
                try:
                    item = json.loads(line)
                except json.JSONDecodeError:
                    continue
                key, _, idx = str(item.get("custom_id", "")).rpartition(":")
                if not key or not idx.isdigit():
                    continue
                seen.add(item["custom_id"])
                if int(idx) in self.cache.replies.get(key, {}):
                    continue  # collected before
                stats.requests += 1
                response = item.get("response") or {}
                body = response.get("body") or {}
                if response.get("status_code") != 200 or item.get("error"):
                    err = item.get("error") or (body.get("error") if isinstance(body, dict) else None) or {}
                    msg = " ".join(str((err.get("message") if isinstance(err, dict) else err) or "error").split())
                    scorer._fail(key, int(idx), f"batch {batch.id}: HTTP {response.get('status_code')}: {msg[:300]}")
                    continue
                stats.add_usage(body.get("usage"))
                reply = read_choice((body.get("choices") or [{}])[0], scorer.opts.max_score, scorer.opts.logprobs)
                if reply.score is None:
                    stats.unparsed += 1
                    scorer._fail(key, int(idx), reply.error or "no score")
                else:
                    scorer._record(key, int(idx), reply, batch_id=batch.id)
        if _get(batch, "status") != "completed":
            data = _get(_get(batch, "errors"), "data")
            detail = ": " + "; ".join(str(_get(e, "message")) for e in data[:3]) if data else ""
            for cid in set(rec.get("keys") or []) - seen:
                key, _, idx = cid.rpartition(":")
                scorer._fail(key, int(idx) if idx.isdigit() else 0, f"batch {batch.id} ended {batch.status}{detail}")
