"""`ual score` / `ual stats` as a user runs them: subprocesses against the local server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from tests.scoring.conftest import REPO, alpaca_rows, fast_retry_args, read_jsonl, run_cli, write_jsonl
from ual_plugin.cli import main
from ual_plugin.scoring.cache import ScoreCache
from ual_plugin.scoring.formats import sidecar_path


def _row_of_score(score: float) -> int:
    return int(score) * 43 % 100  # alpaca_rows: row i scores 7 i mod 100, and 7 * 43 = 1 mod 100


def test_kill_mid_run_then_resume_sends_no_duplicate_request(server, tmp_path):
    server.latency = 0.1
    n = 30
    src = write_jsonl(tmp_path / "in.jsonl", alpaca_rows(n))
    out = tmp_path / "out.jsonl"
    cache = sidecar_path(out)
    args = ["score", str(src), "-o", str(out), "--base-url", server.base_url, "--concurrency", "2",
            *fast_retry_args()]
    env = {**os.environ, "OPENAI_API_KEY": "sk-test"}
    proc = subprocess.Popen([sys.executable, "-m", "ual_plugin.cli", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if cache.exists() and cache.read_text().count('"ok":true') >= 6:
                break
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()  # killed before the end: no half-written output
    counts_at_kill = dict(server.counts)
    saved = ScoreCache(cache)
    done = {_row_of_score(r[0]["score"]) for r in saved.replies.values()}
    assert 6 <= len(done) < n
    assert all(counts_at_kill[f"r{i}"] == 1 for i in done)

    rerun = run_cli(args, env_extra={"OPENAI_API_KEY": "sk-test"})
    assert rerun.returncode == 0, rerun.stderr + rerun.stdout
    assert f"({len(done)} from the cache)" in rerun.stdout
    for i in done:  # no second request for any row answered before the kill
        assert server.counts[f"r{i}"] == 1, i
    assert all(server.counts[f"r{i}"] >= 1 for i in range(n))
    lost_in_flight = sum(server.counts.values()) - n
    assert 0 <= lost_in_flight <= 2  # at most the requests in flight at the kill (concurrency 2)
    assert [r["uncertainty"] for r in read_jsonl(out)] == [float(7 * i % 100) for i in range(n)]


def test_sigterm_says_how_to_resume_and_keeps_the_cache(server, tmp_path):
    server.latency = 0.1
    src = write_jsonl(tmp_path / "in.jsonl", alpaca_rows(40))
    out = tmp_path / "out.jsonl"
    cache = sidecar_path(out)
    args = ["score", str(src), "-o", str(out), "--base-url", server.base_url, "--concurrency", "2",
            *fast_retry_args()]
    proc = subprocess.Popen([sys.executable, "-m", "ual_plugin.cli", *args], cwd=REPO,
                            env={**os.environ, "OPENAI_API_KEY": "sk-test"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (cache.exists() and cache.read_text().count('"ok":true') >= 4):
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143
    assert "terminated: every reply received so far is saved in" in err and "re-run the same command" in err
    saved = ScoreCache(cache)
    assert saved.n_corrupt == 0 and len(saved.replies) >= 4 and not out.exists()


def test_api_key_appears_in_no_file_and_no_output(server, tmp_path, monkeypatch, capfd):
    secret = "sk-UALTEST-" + uuid.uuid4().hex
    server.expected_key = secret
    rows = alpaca_rows(6, {2: "[[500=always]]", 3: "[[reply=noscore]]"})
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    env = {"OPENAI_API_KEY": secret}
    base = ["--base-url", server.base_url, "--model", "m", *fast_retry_args()]
    # as a user runs it (a subprocess): a run with failures, then one the server rejects, echoing the key
    ok = run_cli(["score", str(src), "-o", str(tmp_path / "out.jsonl"), *base], env)
    assert ok.returncode == 1, ok.stderr
    assert f"Bearer {secret}" in server.auth_headers  # the key was really used
    server.expected_key = "another-key"
    bad = run_cli(["score", str(src), "-o", str(tmp_path / "c.jsonl"), *base], env)
    assert bad.returncode == 2 and "authentication failed" in bad.stdout and "***" in bad.stdout
    # without --model the key first goes to GET /models, whose 401 is redacted too
    listing = run_cli(["score", str(src), "-o", str(tmp_path / "e.jsonl"), *base[:2], *fast_retry_args()], env)
    assert listing.returncode == 2 and "could not be listed" in listing.stderr and "***" in listing.stderr
    # the other paths in-process (fd-level capture also catches library logging): dry run, batch, batch 401
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    server.expected_key = secret
    codes = [main(["score", str(src), "-o", str(tmp_path / "out.jsonl"), "--dry-run", *base]),
             main(["score", str(src), "-o", str(tmp_path / "b.jsonl"), "--batch", "--poll-interval", "0.01", *base])]
    server.expected_key = "another-key"
    codes.append(main(["score", str(src), "-o", str(tmp_path / "d.jsonl"), "--batch", *base]))
    captured = capfd.readouterr()
    assert codes == [0, 1, 2] and "HTTP 401" in captured.out
    for text in (ok.stdout, ok.stderr, bad.stdout, bad.stderr, listing.stderr, captured.out, captured.err):
        assert secret not in text
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) >= 5  # input, two outputs and their caches
    for p in files:
        assert secret.encode() not in p.read_bytes(), p


def test_missing_key_and_bad_input_exit_2(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    src = write_jsonl(tmp_path / "in.jsonl", alpaca_rows(2))
    assert main(["score", str(src), "-o", str(tmp_path / "o.jsonl"), "--no-progress"]) == 2
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"instruction": "x", "output": "y"}, {"foo": 1}])
    assert main(["score", str(bad), "-o", str(tmp_path / "o.jsonl"), "--base-url", "http://127.0.0.1:9/v1"]) == 2
    assert main(["score", str(src)]) == 2  # no -o and no --dry-run


def test_cli_in_process_messages(server, tmp_path, capsys):
    src = write_jsonl(tmp_path / "in.jsonl", alpaca_rows(3) + [{"instruction": "x"}])
    code = main(["score", str(src), "-o", str(tmp_path / "o.jsonl"), "--base-url", server.base_url])
    err = capsys.readouterr().err
    assert code == 2 and "row 3 (line 4 of in.jsonl) does not fit the alpaca layout: missing `output`" in err
    assert server.requests == []
    code = main(["score", str(src), "-o", str(tmp_path / "o.jsonl"), "--base-url", server.base_url, "--format", "text"])
    assert code == 2 and "text layout" in capsys.readouterr().err
    src2 = write_jsonl(tmp_path / "in2.jsonl", alpaca_rows(3))
    code = main(["score", str(src2), "-o", str(tmp_path / "o2.csv"), "--base-url", server.base_url, "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0 and "no scoring request was sent" in out and "requests: 3" in out
    assert server.requests == [("GET", "/v1/models")]  # the model name, nothing else
    code = main(["score", str(src2), "-o", str(tmp_path / "o2.csv"), "--base-url", server.base_url,
                 "--no-progress", "--field", "u"])
    out = capsys.readouterr().out
    assert code == 0 and "scored 3/3 rows" in out and "tokens:" in out
    assert "cost unknown (a custom endpoint" in out and "with openai:test-model at http://127.0.0.1" in out
    lines = (tmp_path / "o2.csv").read_text().splitlines()
    assert lines[0].endswith(",u") and lines[2].endswith(",7.0")


def test_azure_variables_route_to_the_deployment(server, tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", "azure-key-123")
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", server.base_url.removesuffix("/v1"))
    monkeypatch.setenv("OPENAI_API_VERSION", "2024-10-21")
    src = write_jsonl(tmp_path / "in.jsonl", alpaca_rows(2))
    code = main(["score", str(src), "-o", str(tmp_path / "o.jsonl"), "--model", "my-deploy", "--no-progress"])
    assert code == 0
    assert ("POST", "/openai/deployments/my-deploy/chat/completions") in server.requests
    assert "api-key azure-key-123" in server.auth_headers
    assert [r["uncertainty"] for r in read_jsonl(tmp_path / "o.jsonl")] == [0.0, 7.0]


def test_stats_table_groups_and_png(tmp_path, capsys):
    rows = [{"text": f"t{i}", "source": "math" if i < 50 else "chat",
             "uncertainty": (float(i % 50) if i < 50 else 50.0 + i % 50)} for i in range(100)]
    rows[3]["uncertainty"] = None
    f = write_jsonl(tmp_path / "s.jsonl", rows)
    png = tmp_path / "plot.png"
    assert main(["stats", str(f), "--alpha", "0.2", "--plot", str(png)]) == 1  # a row without a score
    out = capsys.readouterr().out
    assert "uncertainty (all)" in out and "source=math" in out and "source=chat" in out
    assert "WARNING: 1 of 100 rows (1.0%) have no uncertainty" in out
    head = out.splitlines()[1].split()
    assert head[2:4] == ["100", "1"]  # count, missing
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert main(["stats", str(f), "--alpha", "0.2", "--json", "--no-plot"]) == 1
    summary = json.loads(capsys.readouterr().out)
    assert summary["count"] == 100 and summary["missing"] == 1 and summary["missing_share"] == 0.01
    assert summary["smoothing"]["mean"] == pytest.approx(0.2)
    vals = [r["uncertainty"] for r in rows if r["uncertainty"] is not None]
    assert summary["scores"]["mean"] == pytest.approx(sum(vals) / len(vals))
    g = summary["groups"]
    assert g["math"]["missing"] == 1 and g["chat"]["count"] == 50
    assert g["chat"]["smoothing_mean"] > g["math"]["smoothing_mean"]
    # default plot path next to the file; an unreachable alpha is reported, not crashed on
    zeros = write_jsonl(tmp_path / "z.jsonl", [{"text": "a", "uncertainty": 0.0}, {"text": "b", "uncertainty": 1.0}])
    assert main(["stats", str(zeros), "--alpha", "0.9"]) == 1
    assert "cannot be reached" in capsys.readouterr().out
    assert (tmp_path / "z.jsonl.stats.png").exists()
    assert main(["stats", str(write_jsonl(tmp_path / "n.jsonl", [{"text": "a"}]))]) == 2
    all_null = write_jsonl(tmp_path / "a.jsonl", [{"text": "a", "uncertainty": None}] * 3)
    assert main(["stats", str(all_null), "--no-plot"]) == 1
    out = capsys.readouterr().out
    assert "cannot map" in out and "3 of 3 rows (100.0%)" in out
    full = write_jsonl(tmp_path / "f.jsonl", [{"text": "a", "uncertainty": 3.0}, {"text": "b", "uncertainty": 9.0}])
    assert main(["stats", str(full), "--no-plot"]) == 0
