"""The API scorer against the local OpenAI-compatible server, through the real `openai` client."""

from __future__ import annotations

import time

import pytest

from tests.scoring.conftest import alpaca_rows, read_jsonl, write_jsonl
from ual_plugin.scoring import score, score_dataset
from ual_plugin.scoring.formats import sidecar_path

FAST = {"retry_base_delay": 0.01, "max_retries": 3, "progress": False}


def _score(server, data, out=None, **kw):
    opts = {**FAST, "base_url": server.base_url, "log": lambda m: None, **kw}
    return score(data, out, **opts)


def test_json_plain_fenced_bare_replies_all_parse(server, tmp_path):
    styles = ["json", "plain", "fenced", "bare"]
    rows = alpaca_rows(8, {i: f"[[reply={styles[i % 4]}]]" for i in range(8)})
    res = _score(server, write_jsonl(tmp_path / "in.jsonl", rows), tmp_path / "out.jsonl", concurrency=4)
    assert res.exit_code == 0 and res.n_failed == 0
    out = read_jsonl(tmp_path / "out.jsonl")
    assert [r["uncertainty"] for r in out] == [float((7 * i) % 100) for i in range(8)]
    assert [r["idx"] for r in out] == list(range(8))  # order kept
    assert list(out[0]) == ["instruction", "input", "output", "source", "idx", "uncertainty"]
    assert server.n_chat == 8
    body = server.chat_bodies[0]
    assert body["model"] == "gpt-4o" and body["temperature"] == 0.0
    assert body["response_format"]["type"] == "json_schema"
    assert "0 to 39" in body["messages"][-1]["content"]


def test_429_then_success_honours_retry_after(server, tmp_path):
    server.retry_after = "0.4"
    rows = alpaca_rows(1, {0: "[[429=2]]"})
    t0 = time.monotonic()
    res = _score(server, rows, concurrency=1, retry_base_delay=30.0)  # backoff alone would wait ~30 s
    elapsed = time.monotonic() - t0
    assert res.values == [0.0] and res.exit_code == 0
    assert server.counts["r0"] == 3
    assert res.stats.retries["HTTP 429 (rate limited)"] == 2
    assert 0.8 <= elapsed < 10  # two waits of retry-after=0.4 s, not the 30 s backoff


def test_timeout_is_retried(server):
    server.stall_seconds = 1.5
    res = _score(server, alpaca_rows(2, {0: "[[stall=1]]"}), timeout=0.4, concurrency=2)
    assert res.values == [0.0, 7.0] and res.exit_code == 0
    assert res.stats.retries["timeout"] == 1 and server.counts["r0"] == 2


def test_no_quota_stops_the_run_without_output(server, tmp_path):
    rows = alpaca_rows(30, {5: "[[quota=1]]"})
    out = tmp_path / "o.jsonl"
    res = _score(server, rows, out, concurrency=1)
    assert res.exit_code == 2 and "insufficient_quota" in res.fatal
    assert not out.exists()
    assert server.counts["r5"] == 1 and server.n_chat == 6  # stopped at the first quota error
    assert "STOPPED" in "\n".join(res.summary_lines())
    assert all("not sent" in res.failed_rows[i] for i in range(6, 30))


def test_retry_after_ms_header_and_date():
    from email.utils import formatdate

    from ual_plugin.scoring.client import retry_after_seconds

    assert retry_after_seconds({"retry-after-ms": "250", "retry-after": "9"}) == pytest.approx(0.25)
    assert retry_after_seconds({"retry-after": "3"}) == 3.0
    date = formatdate(time.time() + 5, usegmt=True)
    assert 3 <= retry_after_seconds({"retry-after": date}) <= 6
    assert retry_after_seconds({}) is None and retry_after_seconds({"retry-after": "soon"}) is None


def test_server_error_no_score_and_bad_request_rows_stay_null(server, tmp_path):
    rows = alpaca_rows(6, {1: "[[500=always]]", 2: "[[reply=noscore]]", 3: "[[500=1]]", 4: "[[400=always]]"})
    out = tmp_path / "out.jsonl"
    res = _score(server, write_jsonl(tmp_path / "in.jsonl", rows), out, concurrency=3)
    assert res.exit_code == 1
    values = [r["uncertainty"] for r in read_jsonl(out)]
    assert values == [0.0, None, None, 21.0, None, 35.0]
    assert set(res.failed_rows) == {1, 2, 4}
    assert "HTTP 500" in res.failed_rows[1] and "after 3 retries" in res.failed_rows[1]
    assert "no score" in res.failed_rows[2]
    assert "HTTP 400" in res.failed_rows[4] and "context length" in res.failed_rows[4]
    assert server.counts["r1"] == 4  # 1 + max_retries
    assert server.counts["r2"] == 2  # one re-ask for a reply without a score
    assert server.counts["r4"] == 1  # a 400 is not retried
    text = "\n".join(res.summary_lines())
    assert "FAILED: 3 row(s)" in text and "HTTP 500" in text and "no score" in text
    # structured output stays on: the 400 was about the context, not response_format
    assert "response_format" in server.chat_bodies[-1]


def test_rerun_resumes_sends_nothing_for_scored_rows_and_retries_failed(server, tmp_path):
    rows = alpaca_rows(10, {4: "[[500=4]]"})  # fails the first run (1 + 3 retries), succeeds after
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    first = _score(server, src, out, concurrency=4)
    assert first.exit_code == 1 and set(first.failed_rows) == {4}
    before = dict(server.counts)
    second = _score(server, src, out, concurrency=4)
    assert second.exit_code == 0 and second.n_cached_rows == 9
    assert {k: server.counts[k] - before.get(k, 0) for k in server.counts if server.counts[k] != before.get(k, 0)} \
        == {"r4": 1}
    assert [r["uncertainty"] for r in read_jsonl(out)][4] == 28.0
    third = _score(server, src, out)
    assert third.stats.requests == 0 and third.exit_code == 0
    assert sidecar_path(out).exists()


def test_changing_model_or_prompt_rescores(server, tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", alpaca_rows(3))
    out = tmp_path / "out.jsonl"
    _score(server, src, out)
    _score(server, src, out, model="gpt-4o-mini")
    custom = tmp_path / "p.txt"
    custom.write_text("Rate it.\n<<<\n{sample}\n>>>\nJSON.")
    _score(server, src, out, prompt=str(custom))
    assert all(server.counts[f"r{i}"] == 3 for i in range(3))
    assert server.chat_bodies[-1]["messages"] == [
        {"role": "user", "content": server.chat_bodies[-1]["messages"][0]["content"]}]
    assert server.chat_bodies[-1]["messages"][0]["content"].startswith("Rate it.\n<<<\n[User]")


def test_duplicate_rows_share_one_request(server):
    rows = alpaca_rows(3) + alpaca_rows(3)
    res = _score(server, rows)
    assert res.values == [0.0, 7.0, 14.0, 0.0, 7.0, 14.0]
    assert server.n_chat == 3 and res.n_unique == 3


def test_samples_are_averaged_and_use_temperature_one(server, tmp_path):
    rows = alpaca_rows(2)
    res = _score(server, rows, samples=3)
    assert res.values == [0.0, 7.0]
    assert server.counts["r0"] == 3 and server.counts["r1"] == 3
    assert {b["temperature"] for b in server.chat_bodies} == {1.0}


def test_samples_with_logprobs_average_the_expected_scores(server, tmp_path):
    rows = [{"text": "[[id=a]] [[dist=20:0.5,80:0.5]]"}]
    res = _score(server, rows, samples=2, logprobs=True)
    # the server answers the argmax (20, first of the tie) with logprobs over {20, 80}: expectation 50
    assert res.values == [pytest.approx(50.0)]
    assert server.chat_bodies[0]["logprobs"] is True and server.chat_bodies[0]["top_logprobs"] == 20


def test_logprobs_expected_score(server, tmp_path):
    rows = [{"text": "[[id=a]] [[dist=30:0.25,40:0.75]]"}, {"text": "[[id=b]] [[score=12]]"}]
    out = tmp_path / "o.jsonl"
    res = _score(server, rows, out, logprobs=True)
    assert res.values == [pytest.approx(37.5), 12.0]
    cache = read_jsonl(sidecar_path(out))
    rec = next(r for r in cache if r["score"] == pytest.approx(37.5))
    assert rec["parsed"] == 40.0 and rec["expected"] == pytest.approx(37.5)
    # without --logprobs the sampled score is used
    res2 = _score(server, rows[:1])
    assert res2.values == [40.0]
    # a server that ignores logprobs: the sampled score, and the summary says so
    server.logprobs_supported = False
    server.usage = False
    res3 = _score(server, [{"text": "[[id=c]] [[dist=30:0.25,40:0.75]]"}], logprobs=True)
    assert res3.values == [40.0]
    text = "\n".join(res3.summary_lines())
    assert "1 replies had no usable logprobs" in text and "reported no usage for 1 replies" in text


def test_structured_output_rejected_falls_back_once(server, tmp_path):
    server.reject_response_format = True
    rows = alpaca_rows(12, {i: "[[reply=plain]]" for i in range(12)})
    res = _score(server, rows, concurrency=3)
    assert res.exit_code == 0 and res.values == [float((7 * i) % 100) for i in range(12)]
    with_rf = [b for b in server.chat_bodies if "response_format" in b]
    assert 1 <= len(with_rf) <= 3  # only requests already in flight when the first 400 came back
    assert all("response_format" not in b for b in server.chat_bodies[len(with_rf) + 3:])
    assert any("rejected `response_format`" in n for n in res.stats.notes)
    assert server.n_chat == 12 + len(with_rf)


def test_concurrency_is_bounded_and_used(server):
    server.latency = 0.05
    res = _score(server, alpaca_rows(40), concurrency=5)
    assert res.exit_code == 0
    assert 2 <= server.max_inflight <= 5


def test_dry_run_sends_nothing_and_writes_nothing(server, tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", alpaca_rows(10))
    out = tmp_path / "out.jsonl"
    res = _score(server, src, out, dry_run=True, concurrency=5)
    assert server.requests == [] and not out.exists() and not sidecar_path(out).exists()
    e = res.estimate
    assert e.requests == 10 and e.rows_to_score == 10 and not e.exact_tokens
    assert e.tokens_in > 10 * 300 // 4  # the rubric alone is several hundred characters
    assert e.cost.startswith("$") and "2025-06" in e.cost
    text = "\n".join(res.summary_lines())
    assert "nothing was sent" in text and "APPROXIMATE" in text and "~2 s at concurrency 5" in text
    # after a real run of half the rows, the estimate shrinks accordingly
    _score(server, write_jsonl(tmp_path / "half.jsonl", alpaca_rows(5)), out)
    n = len(server.requests)
    res2 = _score(server, src, out, dry_run=True)
    assert res2.estimate.requests == 5 and res2.n_cached_rows == 5 and len(server.requests) == n
    unknown = _score(server, src, None, dry_run=True, model="my-llama")
    assert "cost unknown" in unknown.estimate.cost


def test_score_dataset_returns_a_dataset_and_keeps_features(server):
    import datasets

    ds = datasets.Dataset.from_list(alpaca_rows(5)).shuffle(seed=1)
    out = score_dataset(ds, base_url=server.base_url, **FAST)
    assert isinstance(out, datasets.Dataset)
    assert out.column_names == [*ds.column_names, "uncertainty"]
    assert out["idx"] == ds["idx"]
    assert out["uncertainty"] == [float((7 * i) % 100) for i in ds["idx"]]
    assert out.features["idx"] == ds.features["idx"]


def test_score_dataset_warns_on_failures_and_raises_on_bad_key(server):
    rows = alpaca_rows(3, {1: "[[500=always]]"})
    with pytest.warns(RuntimeWarning, match="1 of 3 rows could not be scored"):
        out = score_dataset(rows, base_url=server.base_url, **FAST)
    assert out["uncertainty"] == [0.0, None, 14.0]
    server.expected_key = "the-right-key"
    secret = "sk-wrong-key-0123456789"
    with pytest.raises(RuntimeError, match="authentication failed") as err:
        score_dataset(alpaca_rows(3, prefix="z"), base_url=server.base_url, api_key=secret, **FAST)
    assert secret not in str(err.value) and "***" in str(err.value)
    assert f"Bearer {secret}" in server.auth_headers  # the key really was sent (and echoed back)


def test_unreadable_row_sends_nothing(server, tmp_path):
    from ual_plugin.scoring.formats import RowFormatError

    rows = alpaca_rows(3)
    del rows[2]["output"]
    with pytest.raises(RowFormatError, match="row 2 .*alpaca layout"):
        _score(server, write_jsonl(tmp_path / "in.jsonl", rows), tmp_path / "o.jsonl")
    assert server.requests == []


def test_batch_api_submit_poll_collect(server, tmp_path):
    server.batch_polls = 2
    rows = alpaca_rows(6, {2: "[[500=always]]", 3: "[[reply=noscore]]"})
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    res = _score(server, src, out, batch=True, poll_interval=0.01)
    assert res.exit_code == 1
    assert [r["uncertainty"] for r in read_jsonl(out)] == [0.0, 7.0, None, None, 28.0, 35.0]
    assert "HTTP 500" in res.failed_rows[2] and "no score" in res.failed_rows[3]
    assert server.requests.count(("POST", "/v1/files")) == 1
    assert server.requests.count(("POST", "/v1/batches")) == 1
    assert res.pricing.batch and "Batch API -50%" in "\n".join(res.summary_lines())
    # re-run: only the two failed rows go into a new batch
    res2 = _score(server, src, out, batch=True, poll_interval=0.01)
    assert server.requests.count(("POST", "/v1/batches")) == 2
    assert server.counts["r0"] == 1 and server.counts["r2"] == 2 and server.counts["r3"] == 2
    assert res2.n_cached_rows == 4


def test_batch_no_wait_then_resume_by_recorded_batch_id(server, tmp_path):
    server.batch_polls = 1
    src = write_jsonl(tmp_path / "in.jsonl", alpaca_rows(4))
    out = tmp_path / "out.jsonl"
    res = _score(server, src, out, batch=True, wait=False)
    assert res.exit_code == 3 and len(res.pending_batches) == 1 and not out.exists()
    bid = res.pending_batches[0]
    assert bid in sidecar_path(out).read_text()
    res2 = _score(server, src, out, batch=True, poll_interval=0.01)
    assert res2.exit_code == 0
    assert server.requests.count(("POST", "/v1/batches")) == 1  # not submitted again
    assert ("GET", f"/v1/batches/{bid}") in server.requests
    assert [r["uncertainty"] for r in read_jsonl(out)] == [0.0, 7.0, 14.0, 21.0]
    assert all(server.counts[f"r{i}"] == 1 for i in range(4))


def test_batch_killed_between_upload_and_create_finds_or_creates_the_batch(server, tmp_path):
    """An 'uploaded' record without a batch id: the re-run looks the batch up by its input file."""
    import json

    from ual_plugin.scoring.cache import ScoreCache

    src = write_jsonl(tmp_path / "in.jsonl", alpaca_rows(2))
    out = tmp_path / "out.jsonl"
    res = _score(server, src, out, batch=True, wait=False)
    bid = res.pending_batches[0]
    # rewrite the cache as if the process died right after `batches.create` returned but before
    # the batch id was recorded
    lines = [json.loads(x) for x in sidecar_path(out).read_text().splitlines()]
    kept = [x for x in lines if x.get("batch") != bid]
    sidecar_path(out).write_text("".join(json.dumps(x) + "\n" for x in kept))
    assert any(r.get("state") == "uploaded" for r in ScoreCache(sidecar_path(out)).batches.values())
    res2 = _score(server, src, out, batch=True, poll_interval=0.01)
    assert res2.exit_code == 0 and res2.values == [0.0, 7.0]
    assert server.requests.count(("POST", "/v1/batches")) == 1  # found by input file, not re-created
