"""The API scorer against the local OpenAI-compatible server, through the real `openai` client."""

from __future__ import annotations

import pytest

from tests.scoring.conftest import alpaca_rows, read_jsonl, write_jsonl
from ual_plugin.scoring import score, score_dataset
from ual_plugin.scoring.formats import sidecar_path

FAST = {"max_retries": 3, "progress": False}


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
    # no --model: the one model the endpoint lists; every request bounded
    assert body["model"] == "test-model" and body["temperature"] == 0.0
    assert body["response_format"]["type"] == "json_schema"
    assert "0 to 39" in body["messages"][-1]["content"]
    assert all(b["max_tokens"] == 16 for b in server.chat_bodies)
    assert "openai:test-model at http://127.0.0.1" in res.summary_lines()[0]


def test_429_then_success_honours_retry_after(server):
    server.retry_after = "1.0"  # the client's own backoff before its first retry is at most 0.5 s
    res = _score(server, alpaca_rows(1, {0: "[[429=2]]"}), concurrency=1)
    assert res.values == [0.0] and res.exit_code == 0
    assert server.counts["r0"] == 3
    assert res.stats.retries["HTTP 429 (rate limited)"] == 2 and res.stats.requests == 3
    gaps = [b - a for a, b in zip(server.arrivals["r0"], server.arrivals["r0"][1:], strict=False)]
    assert min(gaps) >= 1.0  # the server saw the retries no sooner than it asked


def test_timeout_is_retried(server):
    server.stall_seconds = 1.5
    res = _score(server, alpaca_rows(2, {0: "[[stall=1]]"}), timeout=0.4, concurrency=2)
    assert res.values == [0.0, 7.0] and res.exit_code == 0
    assert res.stats.retries["timeout"] == 1 and server.counts["r0"] == 2
    assert any("timeouts at concurrency 2: lowered to 1" in n for n in res.stats.notes)


def test_slow_replies_from_a_one_at_a_time_server_lower_the_concurrency():
    """Queued behind each other, replies take longer than half the timeout: fewer requests are sent at once."""
    from tests.scoring.server import FakeOpenAI

    with FakeOpenAI(latency=0.15) as srv:
        srv.serial = True
        res = _score(srv, alpaca_rows(40), timeout=2.0, concurrency=8)
        depths = srv.depths
    assert res.exit_code == 0 and res.values == [float((7 * i) % 100) for i in range(40)]
    assert any("replies slower than half the timeout at concurrency 8: lowered to 4" in n for n in res.stats.notes)
    assert max(depths) >= 6 and max(depths[-10:]) <= 4  # 8 queued at first, at most 4 at the end


def test_no_quota_stops_the_run_without_output(server, tmp_path):
    rows = alpaca_rows(30, {5: "[[quota=1]]"})
    out = tmp_path / "o.jsonl"
    res = _score(server, rows, out, concurrency=1)
    assert res.exit_code == 2 and "insufficient_quota" in res.fatal
    assert not out.exists()
    assert server.counts["r5"] == 1 and server.n_chat == 6  # stopped at the first quota error
    assert "STOPPED" in "\n".join(res.summary_lines())
    assert all("not sent" in res.failed_rows[i] for i in range(6, 30))


def test_server_error_no_score_and_bad_request_rows_stay_null(server, tmp_path):
    rows = alpaca_rows(6, {1: "[[500=always]]", 2: "[[reply=noscore]] [[reask=noscore]]", 3: "[[500=1]]",
                           4: "[[400=always]]"})
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
    reask = [b for b in server.chat_bodies if "[[id=r2]]" in b["messages"][1]["content"]][-1]["messages"]
    assert reask[-2] == {"role": "assistant", "content": "I am not able to rate this sample."}
    assert reask[-1]["content"].startswith("Reply with only the score")
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


def test_samples_use_n_and_average_with_temperature_one(server, tmp_path):
    rows = alpaca_rows(2, {0: "[[spread=1]]"})  # row 0's choices score 0, 2, 4
    res = _score(server, rows, tmp_path / "o.jsonl", samples=3)
    assert res.values == [2.0, 7.0] and res.n_replies == [3, 3]
    assert server.counts["r0"] == 1 and server.counts["r1"] == 1  # one request with n=3 per row
    assert {b["n"] for b in server.chat_bodies} == {3} and {b["temperature"] for b in server.chat_bodies} == {1.0}


def test_samples_without_n_and_a_row_that_keeps_the_mean_of_its_usable_replies(server, tmp_path):
    server.honour_n = False
    rows = alpaca_rows(3, {2: "[[reply=noscore]] [[reask=noscore]]"})
    out = tmp_path / "o.jsonl"
    res = _score(server, rows, out, samples=3)
    assert server.counts["r0"] == 3 and server.counts["r1"] == 3  # K requests once n went unanswered
    assert any("answered `n=3` with 1 choice" in n for n in res.stats.notes)
    assert res.values == [0.0, 7.0, None] and res.exit_code == 1


def test_a_row_with_fewer_usable_replies_than_asked_is_the_mean_of_those(tmp_path):
    from ual_plugin.scoring.cache import ScoreCache

    c = ScoreCache(tmp_path / "c.jsonl")
    c.add_reply("k", 0, score=10.0)
    c.add_failure("k", 1, "no score")
    assert c.score("k", 3) is None  # slot 2 not concluded yet: a re-run sends it
    c.add_reply("k", 2, score=30.0)
    assert c.score("k", 3) == 20.0 and c.score("k", 3, min_samples=3) is None
    assert c.missing("k", 3) == [1]


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
    assert "for 1 replies the server returned no logprobs" in text and "reported no usage for 1 replies" in text


def test_structured_output_rejected_falls_back_once(server, tmp_path):
    server.reject_response_format = True
    rows = alpaca_rows(12, {i: "[[reply=plain]]" for i in range(12)})
    res = _score(server, rows, concurrency=3)
    assert res.exit_code == 0 and res.values == [float((7 * i) % 100) for i in range(12)]
    sent = [(b.get("response_format") or {}).get("type") for b in server.chat_bodies]
    assert sent[:2] == ["json_schema", "json_object"] and set(sent[2:]) == {None}  # decided on the first row
    assert server.n_chat == 12 + 2
    assert sum("the server refused response_format" in n for n in res.stats.notes) == 2


def test_refusal_with_http_500_is_not_retried_and_an_explicit_format_is_not_dropped(tmp_path):
    from tests.scoring.server import FakeOpenAI

    with FakeOpenAI.llama_cpp(latency=0.0) as srv:
        res = _score(srv, alpaca_rows(3), max_retries=6, response_format="json_schema")
        assert res.exit_code == 2 and "refuses response_format json_schema" in res.fatal
        assert "literal_error" in res.fatal and srv.n_chat == 1  # a 500 about response_format: no retry


def test_llama_cpp_like_server_with_default_settings(tmp_path):
    """HTTP 500 on json_schema, one request at a time, n ignored, digit-split logprobs, chatty replies."""
    from tests.scoring.server import FakeOpenAI

    extra = {0: "[[reply=distractor]]", 1: "[[reply=percent]]", 2: "[[reply=chatty]]",
             3: "[[reply=distractor]] [[reask=noscore]]", 4: "[[reply=bare]]", 6: "[[reply=cut]]",
             7: "[[reply=big]] [[reask=same]]"}
    rows = alpaca_rows(24, extra)
    with FakeOpenAI.llama_cpp(latency=0.02) as srv:
        res = _score(srv, write_jsonl(tmp_path / "in.jsonl", rows), tmp_path / "o.jsonl", max_retries=6)
        formats = [(b.get("response_format") or {}).get("type") for b in srv.chat_bodies]
    assert formats.count("json_schema") == 1 and srv.max_inflight == 1
    assert all(b["max_tokens"] == 16 for b in srv.chat_bodies)
    want = [float((7 * i) % 100) for i in range(24)]
    want[3] = want[7] = None  # their replies hold no score (or one off the scale), before and after the re-ask
    assert res.values == want and set(res.failed_rows) == {3, 7}
    assert "no score in reply 'I cannot say.'" in res.failed_rows[3]  # the re-ask's reply
    assert "score 1024.5 is outside 0..99" in res.failed_rows[7]
    # row 0 went first: refused json_schema, then json_object, then a re-ask; others: a re-ask only if needed
    assert srv.counts["r0"] == 3 and srv.counts["r1"] == 2 and srv.counts["r5"] == 1 and srv.counts["r6"] == 1
    text = "\n".join(res.summary_lines())
    assert "cost unknown (a custom endpoint" in text and "SmolLM2-135M-Instruct" in text
    # --logprobs with a digit-splitting tokenizer: the parsed score, and a note saying why
    with FakeOpenAI.llama_cpp(latency=0.0) as srv:
        lp = _score(srv, [{"text": "[[id=d]] [[score=0]]"}, {"text": "[[id=e]] [[score=42]]"}], logprobs=True)
    assert lp.values == [0.0, 42.0]
    assert "splits numbers into digits" in "\n".join(lp.summary_lines())


def test_custom_endpoint_with_several_models_needs_model(server):
    from ual_plugin.scoring.client import ConfigError

    server.models = ["a", "b"]
    with pytest.raises(ConfigError, match="serves 2 models .*pass --model"):
        _score(server, alpaca_rows(2))
    assert not [r for r in server.requests if r[0] == "POST"]


def test_concurrency_is_bounded_and_used(server):
    server.latency = 0.05
    res = _score(server, alpaca_rows(40), concurrency=5)
    assert res.exit_code == 0
    assert 2 <= server.max_inflight <= 5


def test_dry_run_sends_nothing_and_writes_nothing(server, tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", alpaca_rows(10))
    out = tmp_path / "out.jsonl"
    res = _score(server, src, out, dry_run=True, concurrency=5)
    assert server.requests == [("GET", "/v1/models")] and not out.exists() and not sidecar_path(out).exists()
    text = "\n".join(res.summary_lines())
    assert "requests: 10\n" in text and "10 distinct samples to score" in text
    tokens_in = int(text.split("input tokens: ")[1].split(" ")[0].replace(",", ""))
    assert tokens_in > 10 * 300 // 4  # the rubric alone is several hundred characters
    assert "no scoring request was sent" in text and "APPROXIMATE" in text and "~2 s at concurrency 5" in text
    assert "cost unknown (a custom endpoint" in text  # never priced as gpt-4o
    priced = "\n".join(_score(server, src, None, dry_run=True, price_in=1.0, price_out=2.0).summary_lines())
    assert "estimated cost: $" in priced and "--price-in/--price-out" in priced
    # after a real run of half the rows, the estimate shrinks accordingly
    _score(server, write_jsonl(tmp_path / "half.jsonl", alpaca_rows(5)), out)
    n = server.n_chat
    res2 = _score(server, src, out, dry_run=True)
    assert "requests: 5\n" in "\n".join(res2.summary_lines()) and res2.n_cached_rows == 5 and server.n_chat == n


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
        score_dataset(alpaca_rows(3, prefix="z"), base_url=server.base_url, api_key=secret, model="m", **FAST)
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
    res = _score(server, src, out, batch=True, poll_interval=0.01, price_in=2.0, price_out=8.0)
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
