"""Held-out metrics of one trained demo model, per group of rows.

Groups: one-right-answer rows whose prompt also occurs in the training rows (the task space is
small: did the arm learn the exact answers?), one-right-answer rows with a prompt no training row
has (does it carry over?), and open-ended rows (their prompts recur, their replies are new).

- NLL: mean negative log-likelihood per reference token, on exactly the tokens training scores
  (the assistant reply and its end marker), averaged over the rows of a group;
- exact match (one-right-answer rows only): the greedy reply equals the reference answer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

# (group key, what the group is); a held-out row's ``group`` field holds the key
GROUPS: tuple[tuple[str, str], ...] = (
    ("seen", "one-right-answer rows, prompt seen in training"),
    ("new", "one-right-answer rows, new prompt"),
    ("open", "open-ended rows"),
)
_NLL = "NLL per token (lower is better)"
_EM = "exact match (higher is better)"

# (metric key, group, what it means, higher is better?)
METRICS: tuple[tuple[str, str, str, bool], ...] = (
    ("nll_seen", GROUPS[0][1], _NLL, False),
    ("exact_match_seen", GROUPS[0][1], _EM, True),
    ("nll_new", GROUPS[1][1], _NLL, False),
    ("exact_match_new", GROUPS[1][1], _EM, True),
    ("nll_open", GROUPS[2][1], _NLL, False),
)


def group_of(row: dict, training_prompts: set[str]) -> str:
    """The ``GROUPS`` key of a held-out ``row`` (``entropy`` "low" / "high") given the training prompts."""
    if row["entropy"] == "high":
        return "open"
    return "seen" if row["prompt"] in training_prompts else "new"


def reply_nll(model, tokenizer, conversations: Sequence[list[dict]], batch_size: int = 32) -> list[float]:
    """Mean NLL per assistant token of each conversation (its chat template's generation span): the log of
    the response perplexity that ``ual score --scorer ppl`` computes."""
    import math

    from ual_plugin.scoring.ppl_scorer import Encoded, response_perplexities

    encoded = []
    for i, conv in enumerate(conversations):
        e = tokenizer.apply_chat_template(conv, return_dict=True, return_assistant_tokens_mask=True)
        mask = [bool(m) for m in e["assistant_masks"]]
        if not any(mask):
            raise ValueError(f"conversation {i} has no assistant tokens to score")
        encoded.append(Encoded(list(e["input_ids"]), mask))
    model.eval()
    out: list[float] = []
    for start in range(0, len(encoded), batch_size):
        ppl = response_perplexities(model, encoded[start:start + batch_size], tokenizer.pad_token_id)
        out.extend(math.log(p) for p in ppl)
    return out


def greedy_replies(model, tokenizer, prompts: Sequence[list[dict]], max_new_tokens: int = 12,
                   batch_size: int = 64) -> list[str]:
    """The greedy reply to each prompt (left-padded batches; special tokens dropped)."""
    import torch

    replies: list[str] = []
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        model.eval()
        for start in range(0, len(prompts), batch_size):
            batch = tokenizer.apply_chat_template(list(prompts[start:start + batch_size]), add_generation_prompt=True,
                                                  return_dict=True, padding=True, return_tensors="pt")
            with torch.no_grad():
                generated = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                           eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
            new = generated[:, batch["input_ids"].shape[1]:]
            replies.extend(tokenizer.batch_decode(new, skip_special_tokens=True))
    finally:
        tokenizer.padding_side = side
    return replies


def evaluate(model, tokenizer, rows: Sequence[dict], messages: Callable[[dict], list[dict]]) -> dict[str, float]:
    """``{metric key: value}`` for ``METRICS`` on held-out ``rows``, each with a ``group`` from ``GROUPS``."""
    by_group = {key: [r for r in rows if r["group"] == key] for key, _ in GROUPS}
    empty = [key for key, members in by_group.items() if not members]
    if empty:
        raise ValueError(f"evaluation needs rows in every group; none in {empty}")
    out: dict[str, float] = {}
    for key, members in by_group.items():
        nll = reply_nll(model, tokenizer, [messages(r) for r in members])
        out[f"nll_{key}"] = sum(nll) / len(nll)
        if key != "open":
            replies = greedy_replies(model, tokenizer, [messages(r)[:1] for r in members])
            correct = sum(reply.strip() == r["completion"].strip() for reply, r in zip(replies, members, strict=True))
            out[f"exact_match_{key}"] = correct / len(members)
    return {key: out[key] for key, *_ in METRICS}
