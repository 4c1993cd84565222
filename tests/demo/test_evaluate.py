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


def test_evaluate_counts_exact_matches_per_category(model_and_tokenizer, monkeypatch):
    model, tok = model_and_tokenizer
    rows = generate(40, seed=11)
    low = [r for r in rows if r["entropy"] == "low"]
    # a model that answers the first half of the one-right-answer prompts right, the rest wrong
    right = {r["prompt"] for r in low[: len(low) // 2]}
    monkeypatch.setattr(ev, "greedy_replies", lambda m, t, prompts, **kw: [
        next(r["completion"] for r in low if r["prompt"] == p[0]["content"]) if p[0]["content"] in right else "wrong"
        for p in prompts])
    metrics = ev.evaluate(model, tok, rows, messages)
    assert set(metrics) == {m[0] for m in ev.METRICS}
    expected = sum(r["prompt"] in right for r in low) / len(low)  # a prompt can repeat
    assert 0 < expected < 1
    assert metrics["exact_match_low"] == pytest.approx(expected)
    assert metrics["nll_low"] > 0 and metrics["nll_high"] > 0


def test_evaluate_needs_both_categories(model_and_tokenizer):
    model, tok = model_and_tokenizer
    only_low = [r for r in generate(20, seed=1) if r["entropy"] == "low"]
    with pytest.raises(ValueError, match="both kinds"):
        ev.evaluate(model, tok, only_low, messages)
