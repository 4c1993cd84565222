from __future__ import annotations

import json
import socket

import pytest

from ual_plugin.scoring.cache import ScoreCache, make_key
from ual_plugin.scoring.cost import Pricing, TokenCounter, load_tiktoken_offline, price_for


def test_cache_roundtrip_samples_and_failures(tmp_path):
    path = tmp_path / "c.jsonl"
    with ScoreCache(path) as c:
        c.add_reply("k1", 0, score=10.0)
        c.add_reply("k1", 1, score=20.0)
        c.add_failure("k2", 0, "HTTP 500")
        c.add_reply("k3", 0, score=5.0)
    c = ScoreCache(path)
    assert c.score("k1", 2) == 15.0
    assert c.score("k1", 3) is None and c.missing("k1", 3) == [2]
    assert c.score("k1", 1) == 10.0
    assert c.score("k2", 1) is None and c.failure("k2") == "HTTP 500"
    # a later success clears the failure
    c.add_reply("k2", 0, score=1.0)
    c.close()
    c = ScoreCache(path)
    assert c.score("k2", 1) == 1.0 and c.failure("k2") is None


def test_cache_survives_a_torn_last_line(tmp_path):
    path = tmp_path / "c.jsonl"
    with ScoreCache(path) as c:
        c.add_reply("a", 0, score=1.0)
    with open(path, "a") as f:
        f.write('{"key": "b", "i": 0, "ok": tr')  # killed mid-write
    c = ScoreCache(path)
    assert c.score("a", 1) == 1.0 and c.score("b", 1) is None and c.n_corrupt == 1
    c.add_reply("b", 0, score=2.0)  # appended on a fresh line, not glued to the torn one
    c.close()
    c2 = ScoreCache(path)
    assert c2.score("b", 1) == 2.0 and c2.n_corrupt == 1
    assert all(line.startswith("{") for line in path.read_text().splitlines())


def test_in_memory_cache_writes_nothing(tmp_path):
    c = ScoreCache(None)
    c.add_reply("a", 0, score=3.0)
    assert c.score("a", 1) == 3.0
    assert list(tmp_path.iterdir()) == []


def test_make_key_is_stable_and_sensitive():
    a = make_key("openai", "gpt-4o", "v1", 0.0, False, "sample")
    assert a == make_key("openai", "gpt-4o", "v1", 0.0, False, "sample")
    assert len(a) == 24
    assert a != make_key("openai", "gpt-4o-mini", "v1", 0.0, False, "sample")
    assert a != make_key("openai", "gpt-4o", "v2", 0.0, False, "sample")
    assert a != make_key("openai", "gpt-4o", "v1", 0.0, False, "sample ")


def test_prices_known_snapshots_and_unknown():
    assert price_for("gpt-4o") == (2.50, 10.00)
    assert price_for("gpt-4o-2024-08-06") == (2.50, 10.00)
    assert price_for("gpt-4o-mini-2024-07-18") == (0.15, 0.60)
    assert price_for("gpt-4-0613") == (30.0, 60.0)
    for name in ("gpt-4-32k", "llama-3-70b", "my-azure-deployment", "gpt-4o-audio-preview"):
        assert price_for(name) is None, name
    p = Pricing.resolve("gpt-4o")
    assert p.cost(1_000_000, 100_000) == pytest.approx(2.50 + 1.00)
    assert Pricing.resolve("gpt-4o", batch=True).cost(1_000_000, 100_000) == pytest.approx((2.50 + 1.00) / 2)
    unknown = Pricing.resolve("llama-3-70b")
    assert unknown.cost(10, 10) is None and "cost unknown" in unknown.describe(10, 10)
    # a model name the table knows, served by a custom endpoint: never priced from the table
    local = Pricing.resolve("gpt-4o", openai_hosted=False)
    assert local.cost(10, 10) is None and "a custom endpoint" in local.describe(10, 10)
    custom = Pricing.resolve("llama-3-70b", price_in=1.0, price_out=2.0)
    assert custom.cost(1_000_000, 1_000_000) == pytest.approx(3.0) and "--price-in" in custom.describe(1, 1)


def test_tiktoken_never_downloads(tmp_path, monkeypatch):
    """With an empty tiktoken cache: no connection attempt, an answer at once, an approximate counter."""
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "empty-cache"))
    attempts = []

    def no_network(*args, **kwargs):
        attempts.append(args)
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    import tiktoken.registry

    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})  # forget any encoding loaded earlier
    enc, note = load_tiktoken_offline("gpt-4o")
    assert enc is None and "not cached" in note and "o200k_base" in note
    assert attempts == []
    counter = TokenCounter.for_model("gpt-4o")
    assert not counter.exact and counter.note.startswith("APPROXIMATE")
    assert counter.count_text("x" * 40) == 10


def test_message_token_count_adds_chat_overhead():
    counter = TokenCounter(encode=lambda s: s.split(), note="words")
    msgs = [{"role": "system", "content": "a b c"}, {"role": "user", "content": "d e"}]
    # 3 priming + per message (3 + role 1 + content)
    assert counter.count_messages(msgs) == 3 + (3 + 1 + 3) + (3 + 1 + 2)


def test_cache_lines_are_plain_json(tmp_path):
    path = tmp_path / "c.jsonl"
    with ScoreCache(path) as c:
        c.add_reply("k", 0, score=1.0, scorer="openai:gpt-4o")
    rec = json.loads(path.read_text())
    assert rec["key"] == "k" and rec["ok"] is True and rec["scorer"] == "openai:gpt-4o" and "t" in rec
