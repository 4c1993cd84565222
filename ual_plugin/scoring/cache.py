"""The resume cache: an append-only JSONL sidecar next to the output.

Every reply is appended and flushed to the OS the moment it arrives, so killing the process at
any point loses no paid-for result; a background thread fsyncs new lines (group commit, off the
event loop) so they also reach the disk within milliseconds. A torn last line is skipped on load. Entries are keyed
by a hash of everything that decides the score (scorer, model, prompt fingerprint, request options,
the rendered sample), plus the index of the reply for ``--samples K``.

Line kinds::

    {"key": K, "i": 0, "ok": true,  "score": 42.0, "parsed": 42.0, "expected": null, ...}   a reply
    {"key": K, "i": 0, "ok": false, "error": "HTTP 500 after 6 retries"}                   a failure
    {"batch": "batch_abc", "state": "submitted", "keys": [...], "input_file_id": "file-1"} Batch API

A row asked K times (``--samples K``) is scored once every reply slot has an answer or a failure and
at least ``min_samples`` answers hold a score: the score is their mean. Failed slots of a row that
has no score are re-sent by a re-run. The API key is never written here.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

CACHE_FORMAT = 1


def make_key(*parts: Any) -> str:
    """A stable 24-hex-digit key for the JSON-serialisable ``parts``."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:24]


class ScoreCache:
    """Replies and batch records, loaded from ``path`` (if it exists) and appended to as they come.

    ``path=None`` keeps everything in memory (no resume).
    """

    def __init__(self, path: str | os.PathLike | None, fsync: bool = True) -> None:
        self.path = Path(path) if path is not None else None
        self.fsync = fsync
        self.replies: dict[str, dict[int, dict]] = {}
        self.failures: dict[str, dict[int, str]] = {}  # key -> reply slot -> why it failed
        self.batches: dict[str, dict] = {}  # batch id (or input file id while pending) -> latest record
        self.n_corrupt = 0
        self._lock = threading.Lock()
        self._fh = None
        self._dirty = threading.Event()
        self._closing = False
        self._syncer: threading.Thread | None = None
        if self.path is not None and self.path.exists():
            self._load()

    # -- reading ----------------------------------------------------------------------------------
    def _load(self) -> None:
        assert self.path is not None
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    self.n_corrupt += 1  # a torn line from a kill mid-write
                    continue
                if isinstance(rec, dict):
                    self._absorb(rec)

    def _absorb(self, rec: dict) -> None:
        if "key" not in rec and "batch" in rec:
            ident = rec.get("batch") or rec.get("input_file_id")
            prev = self.batches.get(ident, {})
            self.batches[ident] = {**prev, **rec}
            if rec.get("input_file_id") and rec.get("batch"):
                self.batches.pop(rec["input_file_id"], None)  # the intent record became a batch
            return
        key, i = rec.get("key"), rec.get("i", 0)
        if not isinstance(key, str):
            return
        if rec.get("ok"):
            self.replies.setdefault(key, {})[int(i)] = rec
            self.failures.get(key, {}).pop(int(i), None)
        else:
            self.failures.setdefault(key, {})[int(i)] = str(rec.get("error", "unknown error"))

    def missing(self, key: str, samples: int) -> list[int]:
        """Reply slots without an answer (never sent, or failed)."""
        have = self.replies.get(key, {})
        return [i for i in range(samples) if i not in have]

    def usable(self, key: str, samples: int) -> list[float]:
        have = self.replies.get(key, {})
        return [float(have[i]["score"]) for i in range(samples) if i in have]

    def score(self, key: str, samples: int = 1, min_samples: int = 1) -> float | None:
        """Mean of the usable replies once every slot is concluded and at least ``min_samples`` hold a score."""
        got = self.usable(key, samples)
        failed = self.failures.get(key, {})
        if len(got) < min_samples or any(i not in self.replies.get(key, {}) and i not in failed
                                         for i in range(samples)):
            return None
        return float(sum(got) / len(got))

    def failure(self, key: str) -> str | None:
        """Why a slot of ``key`` failed (the first one), if any did."""
        failed = self.failures.get(key)
        return failed[min(failed)] if failed else None

    # -- writing ----------------------------------------------------------------------------------
    def append(self, rec: dict) -> None:
        rec = {"v": CACHE_FORMAT, **rec, "t": round(time.time(), 3)}
        line = json.dumps(rec, ensure_ascii=False, separators=(",", ":")) + "\n"
        with self._lock:
            self._absorb(rec)
            if self.path is None:
                return
            if self._fh is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fh = open(self.path, "a", encoding="utf-8")
                if self._fh.tell() > 0 and self._needs_newline():
                    self._fh.write("\n")  # after a torn line, start on a fresh one
            self._fh.write(line)
            self._fh.flush()  # in the kernel now: a killed process loses nothing
            if self.fsync:  # on the disk soon: group-committed by a background thread
                if self._syncer is None:
                    self._syncer = threading.Thread(target=self._sync_loop, name="ual-cache-fsync", daemon=True)
                    self._syncer.start()
                self._dirty.set()

    def _sync_loop(self) -> None:
        while True:
            self._dirty.wait()
            self._dirty.clear()
            with self._lock:
                if self._fh is None:
                    return
                fd = self._fh.fileno()
                try:
                    os.fsync(fd)  # under the lock: close() cannot pull the file away mid-fsync
                except OSError:
                    return
            if self._closing:
                return

    def _needs_newline(self) -> bool:
        assert self.path is not None
        with open(self.path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) != b"\n"

    def add_reply(self, key: str, i: int, **fields: Any) -> None:
        self.append({"key": key, "i": i, "ok": True, **fields})

    def add_failure(self, key: str, i: int, error: str, **fields: Any) -> None:
        self.append({"key": key, "i": i, "ok": False, "error": error, **fields})

    def close(self) -> None:
        self._closing = True
        self._dirty.set()
        if self._syncer is not None:
            self._syncer.join(timeout=30)
        with self._lock:
            if self._fh is not None:
                self._fh.flush()
                if self.fsync:
                    os.fsync(self._fh.fileno())
                self._fh.close()
                self._fh = None

    def __enter__(self) -> ScoreCache:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
