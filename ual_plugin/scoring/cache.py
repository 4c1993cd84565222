"""The resume cache: an append-only JSONL sidecar next to the output, never holding the API key.

Each line is flushed as written (a kill loses nothing) and fsync'd at most every 0.5 s and at close; a torn
last line is skipped on load. A line is a reply ``{"key", "i", "ok": true, "score", "parsed", ...}``, a
failure ``{"key", "i", "ok": false, "error"}`` or a Batch API record ``{"batch", "state", "keys",
"input_file_id"}``. ``key`` hashes everything that decides the score; ``i`` is the ``--samples`` slot.
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
FSYNC_EVERY = 0.5  # seconds: fsync is slow (ms), so a burst of replies shares one


def make_key(*parts: Any) -> str:
    """A stable 24-hex-digit key for the JSON-serialisable ``parts``."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:24]


def _ends_mid_line(path: Path) -> bool:
    if not path.exists() or path.stat().st_size == 0:
        return False
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) != b"\n"


class ScoreCache:
    """Replies and batch records, loaded from ``path`` and appended to as they come (None: in memory;
    ``write=False``: read from ``path`` but kept in memory, as on the non-first processes of a launch)."""

    def __init__(self, path: str | os.PathLike | None, fsync: bool = True, write: bool = True) -> None:
        self.path, self.fsync, self.write = (Path(path) if path is not None else None), fsync, write
        self.replies: dict[str, dict[int, dict]] = {}
        self.failures: dict[str, dict[int, str]] = {}  # key -> reply slot -> why it failed
        self.batches: dict[str, dict] = {}  # batch id (or input file id while pending) -> latest record
        self.n_corrupt = 0
        self._lock, self._fh, self._synced = threading.Lock(), None, 0.0
        if self.path is not None and self.path.exists():
            with open(self.path, encoding="utf-8") as f:
                for line in filter(str.strip, f):
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
            self.batches[ident] = {**self.batches.get(ident, {}), **rec}
            if rec.get("input_file_id") and rec.get("batch"):
                self.batches.pop(rec["input_file_id"], None)  # the intent record became a batch
            return
        key, i = rec.get("key"), int(rec.get("i", 0))
        if not isinstance(key, str):
            return
        if rec.get("ok"):
            self.replies.setdefault(key, {})[i] = rec
            self.failures.get(key, {}).pop(i, None)
        else:
            self.failures.setdefault(key, {})[i] = str(rec.get("error", "unknown error"))

    def missing(self, key: str, samples: int) -> list[int]:
        """Reply slots without an answer (never sent, or failed)."""
        return [i for i in range(samples) if i not in self.replies.get(key, {})]

    def usable(self, key: str, samples: int) -> list[float]:
        have = self.replies.get(key, {})
        return [float(have[i]["score"]) for i in range(samples) if i in have]

    def score(self, key: str, samples: int = 1, min_samples: int = 1) -> float | None:
        """Mean of the usable replies once every slot is concluded and at least ``min_samples`` hold a score."""
        got, failed = self.usable(key, samples), self.failures.get(key, {})
        if len(got) < min_samples or any(i not in failed for i in self.missing(key, samples)):
            return None
        return float(sum(got) / len(got))

    def failure(self, key: str) -> str | None:
        """Why a slot of ``key`` failed (the first one), if any did."""
        failed = self.failures.get(key)
        return failed[min(failed)] if failed else None

    def append(self, rec: dict) -> None:
        rec = {"v": CACHE_FORMAT, **rec, "t": round(time.time(), 3)}
        line = json.dumps(rec, ensure_ascii=False, separators=(",", ":")) + "\n"
        with self._lock:
            self._absorb(rec)
            if self.path is None or not self.write:
                return
            if self._fh is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                torn = _ends_mid_line(self.path)
                self._fh = open(self.path, "a", encoding="utf-8")
                self._fh.write("\n" if torn else "")  # after a torn line, start on a fresh one
            self._fh.write(line)
            self._fh.flush()  # in the kernel now: a killed process loses nothing
            if self.fsync and time.monotonic() - self._synced > FSYNC_EVERY:  # one fsync per burst
                os.fsync(self._fh.fileno())
                self._synced = time.monotonic()

    def add_reply(self, key: str, i: int, **fields: Any) -> None:
        self.append({"key": key, "i": i, "ok": True, **fields})

    def add_failure(self, key: str, i: int, error: str, **fields: Any) -> None:
        self.append({"key": key, "i": i, "ok": False, "error": error, **fields})

    def close(self) -> None:
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
