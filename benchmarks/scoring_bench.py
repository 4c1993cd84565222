"""Throughput of `ual score` against the local OpenAI-compatible test server.

Starts tests/scoring/server.py on 127.0.0.1 with a fixed per-request latency (in its own process by
default, as a real endpoint would be, so client and server do not share one GIL), generates N
alpaca rows of realistic length, and scores them through the real `openai` client:

  1. in-process `score()` (load, score, write; the resume cache fsync'd per reply),
  2. the same again (everything cached: the resume path),
  3. optionally the `ual score` CLI in a fresh process (adds interpreter + import start-up).

    .venv/bin/python benchmarks/scoring_bench.py                       # 2000 rows, concurrency 32, 50 ms
    .venv/bin/python benchmarks/scoring_bench.py --rows 500 --latency 0.2 --cli
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.scoring.server import FakeOpenAI  # noqa: E402
from ual_plugin.scoring import score  # noqa: E402

WORDS = ("the model answer question explain write story code number because which would could data "
         "example result value function people time first water light city market music history").split()


def make_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        q = " ".join(rng.choice(WORDS) for _ in range(rng.randint(10, 60)))
        a = " ".join(rng.choice(WORDS) for _ in range(rng.randint(40, 200)))
        rows.append({"instruction": f"[[id=b{i}]] {q}?", "input": "", "output": a + "."})
    return rows


class _ServerProcess:
    """tests/scoring/server.py in a child process; /stats reads its counters."""

    def __init__(self, latency: float) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.scoring.server", "--latency", str(latency)],
                                     cwd=REPO, stdout=subprocess.PIPE, text=True)
        self.base_url = self.proc.stdout.readline().strip()
        assert self.base_url.startswith("http://127.0.0.1:"), self.base_url

    def stats(self) -> dict:
        import urllib.request

        with urllib.request.urlopen(self.base_url.removesuffix("/v1") + "/stats", timeout=10) as r:
            return json.loads(r.read())

    def __enter__(self) -> _ServerProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


class _ServerThread:
    def __init__(self, latency: float) -> None:
        self.srv = FakeOpenAI(latency=latency).start()
        self.base_url = self.srv.base_url

    def stats(self) -> dict:
        return {"n_chat": self.srv.n_chat, "max_inflight": self.srv.max_inflight}

    def __enter__(self) -> _ServerThread:
        return self

    def __exit__(self, *exc) -> None:
        self.srv.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--latency", type=float, default=0.05, help="seconds the server waits per request")
    ap.add_argument("--server", choices=("process", "thread"), default="process",
                    help="run the server in a child process (default) or in a thread of this process")
    ap.add_argument("--cli", action="store_true", help="also time the `ual score` CLI in a fresh process")
    args = ap.parse_args()
    os.environ["OPENAI_API_KEY"] = "sk-bench-not-a-key"
    rows = make_rows(args.rows)
    chars = sum(len(r["instruction"]) + len(r["output"]) for r in rows) / len(rows)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, python {platform.python_version()}, "
          f"load average {load:.1f} at start")
    print(f"rows: {args.rows} (mean sample {chars:.0f} chars), concurrency {args.concurrency}, "
          f"server latency {args.latency * 1000:.0f} ms/request, server in a {args.server}")
    floor = args.rows * args.latency / args.concurrency
    server_cls = _ServerProcess if args.server == "process" else _ServerThread
    with tempfile.TemporaryDirectory() as tmp, server_cls(args.latency) as srv:
        src = Path(tmp) / "in.jsonl"
        src.write_text("".join(json.dumps(r) + "\n" for r in rows))
        out = Path(tmp) / "out.jsonl"
        t0 = time.perf_counter()
        res = score(src, out, base_url=srv.base_url, concurrency=args.concurrency, progress=False,
                    log=lambda m: None)
        wall = time.perf_counter() - t0
        st = srv.stats()
        assert res.exit_code == 0 and res.n_failed == 0, res.summary_lines()
        assert st["n_chat"] == args.rows and st["max_inflight"] <= args.concurrency, st
        print(f"[1] score(): {wall:.2f} s wall, {args.rows / wall:.0f} requests/s "
              f"(floor at this latency and concurrency: {floor:.2f} s); max in flight {st['max_inflight']}")
        t0 = time.perf_counter()
        res2 = score(src, out, base_url=srv.base_url, concurrency=args.concurrency, progress=False,
                     log=lambda m: None)
        wall2 = time.perf_counter() - t0
        assert res2.stats.requests == 0 and srv.stats()["n_chat"] == args.rows
        print(f"[2] re-run, all {res2.n_cached_rows} rows cached: {wall2:.2f} s, 0 requests sent")
        if args.cli:
            out3 = Path(tmp) / "out3.jsonl"
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "ual_plugin.cli", "score", str(src), "-o", str(out3),
                                   "--base-url", srv.base_url, "--concurrency", str(args.concurrency),
                                   "--no-progress", "--model", "gpt-4o-mini"],
                                  capture_output=True, text=True, cwd=REPO)
            wall3 = time.perf_counter() - t0
            assert proc.returncode == 0, proc.stderr
            print(f"[3] `ual score` CLI, fresh process: {wall3:.2f} s wall ({args.rows / wall3:.0f} requests/s)")
            print("    " + proc.stdout.strip().replace("\n", "\n    "))
    return 0


if __name__ == "__main__":
    sys.exit(main())
