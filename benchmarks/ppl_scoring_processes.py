"""``ual score --scorer ppl`` on one process and on two (``torchrun``), rows/s side by side in one run.

    .venv/bin/python benchmarks/ppl_scoring_processes.py            # prints a markdown table

A local Llama (hidden 256, 4 layers, word-level vocabulary) scores the same rows three ways: one
process on one thread, two processes on one thread each (what several GPUs give: one device per
process), and one process on two threads. Each command runs twice: the first scores every row, the
second finds every row in the resume cache and so measures start-up alone (interpreter, imports,
model load); rows/s = rows / (first - second).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROWS = 384
WORDS = "rain sea wind night light stone river tree bird cloud snow sun moon star field hill".split()
VARIANTS = (("1 process x 1 thread", 1, "1"), ("2 processes x 1 thread", 2, "1"), ("1 process x 2 threads", 1, "2"))


def _rows() -> list[dict]:
    rows = []
    for i in range(ROWS):
        reply = " ".join(WORDS[(i * k + k * k) % len(WORDS)] for k in range(1, 60 + i % 120))
        rows.append({"messages": [{"role": "user", "content": f"Question {i}: say something."},
                                  {"role": "assistant", "content": reply}], "id": i})
    return rows


def _command(processes: int, src: Path, out: Path, model: Path) -> list[str]:
    ual = os.path.join(os.path.dirname(sys.executable), "ual")
    score = [ual, "score", str(src), "-o", str(out), "--scorer", "ppl", "--model", str(model), "--batch-size", "8",
             "--no-progress"]
    if processes == 1:
        return score
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes), *score]


def _timed(cmd: list[str], threads: str) -> float:
    env = dict(os.environ, OMP_NUM_THREADS=threads, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    from ual_plugin.demo.tiny import build_tiny_llama

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rows = _rows()
        model = build_tiny_llama(root / "model", texts=[m["content"] for r in rows for m in r["messages"]],
                                 hidden_size=256, num_layers=4)
        src = root / "in.jsonl"
        src.write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(f"{ROWS} rows, replies of 60-180 words; Llama hidden 256, 4 layers; batch 8; CPU\n")
        print("| launch | scoring s | start-up s | rows/s | vs 1 process x 1 thread |")
        print("|---|---|---|---|---|")
        base = None
        for name, processes, threads in VARIANTS:
            out = root / f"out-{processes}-{threads}.jsonl"
            cmd = _command(processes, src, out, model)
            first, again = _timed(cmd, threads), _timed(cmd, threads)  # the second run scores nothing
            rate = ROWS / (first - again)
            base = base or rate
            print(f"| {name} | {first - again:.1f} | {again:.1f} | {rate:.1f} | {rate / base:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
