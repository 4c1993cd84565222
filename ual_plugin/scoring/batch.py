"""``--batch``: the OpenAI Batch API (half price, results within 24 h) with resume by batch id.

Each uploaded file id is recorded in the cache before its batch is created and the batch id right
after, so a kill never orphans a paid batch: a re-run finds it (by id, or by its input file in the
batch list) and polls it. ``custom_id = "<cache key>:<slot>"`` maps each result back to its rows.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ual_plugin.scoring.client import ApiScorer, Job, err_text, make_client
from ual_plugin.scoring.parse import get, read_choice

MAX_LINES_PER_BATCH = 50_000
MAX_BYTES_PER_BATCH = 190 * 1024 * 1024  # the API allows 200 MB per input file
TERMINAL = {"completed", "failed", "expired", "cancelled"}
ENDPOINT = "/v1/chat/completions"


class BatchRunner:
    """Submits missing jobs as batches, polls pending ones and collects their results into the cache."""

    def __init__(self, scorer: ApiScorer, log: Callable[[str], None]) -> None:
        self.scorer, self.cache, self.opts, self.log = scorer, scorer.cache, scorer.opts, log
        self.pending: list[str] = []  # batch ids still running after a --no-wait run

    async def arun(self, jobs: Sequence[Job]) -> None:
        import openai

        client = make_client(self.opts)
        try:
            await self._arun(client, jobs)
        except (openai.APIStatusError, openai.APIConnectionError) as err:
            status = getattr(err, "status_code", None)
            self.scorer.stats.fatal = self.scorer.redactor.redact(
                f"Batch API call failed ({f'HTTP {status}' if status else type(err).__name__}): {err_text(err)}")
        finally:
            await client.close()

    async def _create(self, client: Any, file_id: str, keys: list[str] | None) -> dict:
        batch = await client.batches.create(input_file_id=file_id, endpoint=ENDPOINT, completion_window="24h",
                                            metadata={"tool": "ual score"})
        rec = {"batch": batch.id, "input_file_id": file_id, "state": "submitted", "keys": keys}
        self.cache.append(rec)
        return rec

    async def _arun(self, client: Any, jobs: Sequence[Job]) -> None:
        # 1. batches known from earlier runs, and any attached with --batch-id
        active: dict[str, dict] = {}
        for rec in list(self.cache.batches.values()):
            if rec.get("state") == "collected":
                continue
            if not rec.get("batch") and rec.get("input_file_id"):  # uploaded, creation not confirmed
                bid = await self._find_batch_for_file(client, rec["input_file_id"])
                if bid is None:
                    rec = await self._create(client, rec["input_file_id"], rec.get("keys"))
                else:
                    rec = {**rec, "batch": bid, "state": "submitted"}
                    self.cache.append(rec)
            if rec.get("batch"):
                active[rec["batch"]] = rec
        for bid in self.opts.batch_ids:
            if bid not in active:
                active[bid] = {"batch": bid, "state": "submitted", "keys": None}
                self.cache.append(active[bid])
        covered = {k for rec in active.values() for k in rec.get("keys") or []}
        # 2. submit whatever is neither cached nor covered by a live batch
        todo: list[tuple[str, bytes]] = []  # (custom_id, its JSONL line)
        for j in jobs:
            line = {"method": "POST", "url": ENDPOINT, "body": self.scorer.request_body(j.messages)}
            todo += [(cid, (json.dumps({"custom_id": cid, **line}, ensure_ascii=False) + "\n").encode())
                     for cid in (f"{j.key}:{slot}" for slot in j.slots) if cid not in covered]
        for chunk in _chunks(todo):
            data = io.BytesIO(b"".join(line for _, line in chunk))
            upload = await client.files.create(file=("ual-score-batch.jsonl", data), purpose="batch")
            keys = [cid for cid, _ in chunk]
            self.cache.append({"batch": None, "input_file_id": upload.id, "state": "uploaded", "keys": keys})
            rec = await self._create(client, upload.id, keys)
            active[rec["batch"]] = rec
            self.log(f"submitted batch {rec['batch']} ({len(chunk)} requests)")
        if not self.opts.wait:
            self.pending = list(active)
            return
        # 3. poll every live batch to the end and collect it
        last_status: dict[str, str] = {}
        while active:
            for bid in list(active):
                batch = await client.batches.retrieve(bid)
                if last_status.get(bid) != batch.status:
                    counts = get(batch, "request_counts")
                    done = f" ({get(counts, 'completed', 0)}/{get(counts, 'total', '?')} done)" if counts else ""
                    self.log(f"batch {bid}: {batch.status}{done}")
                    last_status[bid] = batch.status
                if batch.status in TERMINAL:
                    await self._collect(client, batch, active.pop(bid))
                    self.cache.append({"batch": bid, "state": "collected", "status": batch.status})
            if active:
                await asyncio.sleep(self.opts.poll_interval)

    async def _find_batch_for_file(self, client: Any, file_id: str) -> str | None:
        try:
            page = await client.batches.list(limit=100)
        except Exception:
            return None
        return next((b.id for b in getattr(page, "data", None) or [] if get(b, "input_file_id") == file_id), None)

    async def _collect(self, client: Any, batch: Any, rec: dict) -> None:
        scorer, stats = self.scorer, self.scorer.stats
        seen: set[str] = set()
        for file_id in (get(batch, "output_file_id"), get(batch, "error_file_id")):
            for line in ((await client.files.content(file_id)).text if file_id else "").splitlines():
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
                reply = read_choice((body.get("choices") or [{}])[0], self.opts.max_score, self.opts.logprobs)
                scorer.conclude(key, int(idx), reply, batch_id=batch.id)
        if get(batch, "status") != "completed":
            data = get(get(batch, "errors"), "data")
            detail = ": " + "; ".join(str(get(e, "message")) for e in data[:3]) if data else ""
            for cid in set(rec.get("keys") or []) - seen:
                key, _, idx = cid.rpartition(":")
                scorer._fail(key, int(idx) if idx.isdigit() else 0, f"batch {batch.id} ended {batch.status}{detail}")


def _chunks(lines: Sequence[tuple[str, bytes]]) -> Iterator[list[tuple[str, bytes]]]:
    """Input files within the API's limits on lines and bytes."""
    chunk: list[tuple[str, bytes]] = []
    size = 0
    for item in lines:
        if chunk and (len(chunk) >= MAX_LINES_PER_BATCH or size + len(item[1]) > MAX_BYTES_PER_BATCH):
            yield chunk
            chunk, size = [], 0
        chunk.append(item)
        size += len(item[1])
    if chunk:
        yield chunk
