"""``ual score --scorer ppl`` under ``torchrun`` with 2 CPU processes (gloo): the same scores as one
process, one output in input order, and a run killed mid-way resumes without rescoring anything."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.scoring.conftest import read_jsonl, write_jsonl
from ual_plugin.cli import main
from ual_plugin.scoring.formats import sidecar_path

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("accelerate")

pytestmark = pytest.mark.slow

N_ROWS = 96
WORDS = "rain sea wind night light stone river tree bird cloud".split()


def _rows() -> list[dict]:
    rows = []
    for i in range(N_ROWS):
        reply = " ".join(WORDS[(i * k) % len(WORDS)] for k in range(1, 4 + i % 40))
        rows.append({"messages": [{"role": "user", "content": f"Question {i}: say something."},
                                  {"role": "assistant", "content": reply}], "id": i})
    return rows


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny Llama, the input rows and their one-process scores."""
    from ual_plugin.demo.tiny import build_tiny_llama

    root = tmp_path_factory.mktemp("ppl_mp")
    rows = _rows()
    model = build_tiny_llama(root / "tiny", texts=[m["content"] for r in rows for m in r["messages"]])
    src = write_jsonl(root / "in.jsonl", rows)
    out = root / "single.jsonl"
    assert main(["score", str(src), "-o", str(out), "--scorer", "ppl", "--model", str(model), "--batch-size", "2",
                 "--no-progress"]) == 0
    return root, src, str(model), [r["uncertainty"] for r in read_jsonl(out)]


def _command(src: Path, out: Path, model: str) -> list[str]:
    ual = os.path.join(os.path.dirname(sys.executable), "ual")
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", ual, "score",
            str(src), "-o", str(out), "--scorer", "ppl", "--model", model, "--batch-size", "2", "--no-progress"]


def _env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.getcwd())


def _reply_keys(out: Path) -> list[str]:
    keys = []
    for line in sidecar_path(out).read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # a line torn by the kill
            continue
        if rec.get("ok"):
            keys.append(rec["key"])
    return keys


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (torchrun starts its workers in sessions of their own)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
        for child in children:
            found += [child, *_descendants(child)]
    return found


def _assert_same_scores(out: Path, single: list[float]) -> None:
    scored = read_jsonl(out)
    assert [r["id"] for r in scored] == list(range(N_ROWS))
    for got, want in zip((r["uncertainty"] for r in scored), single, strict=True):
        assert got == pytest.approx(want, rel=1e-5)


def test_two_processes_match_one(setup):
    root, src, model, single = setup
    out = root / "two.jsonl"
    proc = subprocess.run(_command(src, out, model), env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count(f"scored {N_ROWS}/{N_ROWS} rows (0 from the cache)") == 1, proc.stdout
    batches = N_ROWS // 2
    for rank in (0, 1):  # each process scores its half, not every row
        assert f"process {rank} of 2 scores {batches // 2} of {batches} batches" in proc.stderr, proc.stderr[-3000:]
    _assert_same_scores(out, single)
    keys = _reply_keys(out)
    assert len(keys) == N_ROWS == len(set(keys))  # the one cache holds every row once


def test_killed_run_resumes_without_rescoring(setup):
    root, src, model, single = setup
    out = root / "killed.jsonl"
    cache = sidecar_path(out)
    proc = subprocess.Popen(_command(src, out, model), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not (cache.exists() and _reply_keys(out)) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        for pid in [proc.pid, *_descendants(proc.pid)]:  # every process of the launch, mid-run
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    finally:
        proc.wait(timeout=60)
    before = _reply_keys(out)
    time.sleep(1.0)
    assert len(_reply_keys(out)) == len(before), "a process of the launch outlived the kill"
    assert 0 < len(before) < N_ROWS, f"the kill came at {len(before)} of {N_ROWS} rows"
    assert not out.exists()
    proc = subprocess.run(_command(src, out, model), env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"scored {N_ROWS}/{N_ROWS} rows ({len(before)} from the cache)" in proc.stdout, proc.stdout
    after = _reply_keys(out)
    assert after[: len(before)] == before and len(after) == N_ROWS == len(set(after))  # nothing scored twice
    _assert_same_scores(out, single)
