"""Held-out metrics of the demo: NLL on exactly the reply tokens, batched like unbatched, exact match counted."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402

from ual_plugin.demo import evaluate as ev  # noqa: E402
from ual_plugin.demo.synthetic import generate  # noqa: E402


def messages(row: dict) -> list[dict]:
    return [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["completion"].strip()}]


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir)


def test_reply_nll_scores_only_the_reply_and_ignores_batch_padding(model_and_tokenizer):
    model, tok = model_and_tokenizer
    convs = [messages(r) for r in generate(6, seed=5)]
    batched = ev.reply_nll(model, tok, convs, batch_size=4)
    for conv, got in zip(convs, batched, strict=True):
        full = tok.apply_chat_template(conv, return_dict=True)["input_ids"]
        prompt = tok.apply_chat_template(conv[:1], add_generation_prompt=True, return_dict=True)["input_ids"]
        ids = torch.tensor([list(full)])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, :-1]
        start = len(prompt) - 1  # the first reply token is predicted from the last prompt position
        # the reply and its end marker; the newline after the end marker is outside the generation span
        end = len(full) - 2
        want = torch.nn.functional.cross_entropy(logits[start:end], ids[0, 1:][start:end]).item()
        assert got == pytest.approx(want, rel=1e-4)


def test_greedy_replies_batched_equal_one_at_a_time(model_and_tokenizer):
    model, tok = model_and_tokenizer
    prompts = [messages(r)[:1] for r in generate(5, seed=7)]
    batched = ev.greedy_replies(model, tok, prompts, max_new_tokens=6, batch_size=5)
    single = [ev.greedy_replies(model, tok, [p], max_new_tokens=6)[0] for p in prompts]
    assert batched == single
    assert tok.padding_side == "right"  # restored


def test_groups_split_one_right_answer_rows_by_training_prompt():
    seen = {"What is 2 + 3?"}
    assert ev.group_of({"entropy": "low", "prompt": "What is 2 + 3?"}, seen) == "seen"
    assert ev.group_of({"entropy": "low", "prompt": "What is 4 + 4?"}, seen) == "new"
    assert ev.group_of({"entropy": "high", "prompt": "What is 2 + 3?"}, seen) == "open"
    assert {m[1] for m in ev.METRICS} == {label for _, label in ev.GROUPS}


def grouped(rows: list[dict]) -> list[dict]:
    training_prompts = {r["prompt"] for r in rows[::2]}
    return [{**r, "group": ev.group_of(r, training_prompts)} for r in rows]


def test_evaluate_counts_exact_matches_per_group(model_and_tokenizer, monkeypatch):
    model, tok = model_and_tokenizer
    rows = grouped(generate(60, seed=11))
    low = [r for r in rows if r["entropy"] == "low"]
    # a model that answers the first half of the one-right-answer prompts right, the rest wrong
    right = {r["prompt"] for r in low[: len(low) // 2]}
    monkeypatch.setattr(ev, "greedy_replies", lambda m, t, prompts, **kw: [
        next(r["completion"] for r in low if r["prompt"] == p[0]["content"]) if p[0]["content"] in right else "wrong"
        for p in prompts])
    metrics = ev.evaluate(model, tok, rows, messages)
    assert list(metrics) == [m[0] for m in ev.METRICS]
    for group in ("seen", "new"):
        members = [r for r in rows if r["group"] == group]
        assert members
        assert metrics[f"exact_match_{group}"] == pytest.approx(sum(r["prompt"] in right for r in members) / len(members))
    assert 0 < metrics["exact_match_seen"] < 1
    assert all(metrics[f"nll_{g}"] > 0 for g in ("seen", "new", "open"))


def test_evaluate_needs_every_group(model_and_tokenizer):
    model, tok = model_and_tokenizer
    rows = [{**r, "group": "seen" if r["entropy"] == "low" else "open"} for r in generate(20, seed=1)]
    with pytest.raises(ValueError, match=r"none in \['new'\]"):
        ev.evaluate(model, tok, rows, messages)
