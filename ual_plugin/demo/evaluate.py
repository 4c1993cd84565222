"""Held-out metrics of one trained demo model, per category of row.

- NLL: mean negative log-likelihood per reference token, on exactly the tokens training scores
  (the assistant reply and its end marker), averaged over the rows of a category;
- exact match (one-right-answer rows only): the greedy reply equals the reference answer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

# (metric key, category, what it means, higher is better?)
METRICS: tuple[tuple[str, str, str, bool], ...] = (
    ("nll_low", "one-right-answer rows", "eval NLL per token (lower is better)", False),
    ("exact_match_low", "one-right-answer rows", "exact match of the greedy answer (higher is better)", True),
    ("nll_high", "open-ended rows", "eval NLL per token (lower is better)", False),
)


def reply_nll(model, tokenizer, conversations: Sequence[list[dict]], batch_size: int = 32) -> list[float]:
    """Mean NLL per assistant token of each conversation (its chat template's generation span)."""
    import torch

    encoded = [tokenizer.apply_chat_template(c, return_dict=True, return_assistant_tokens_mask=True)
               for c in conversations]
    pad = tokenizer.pad_token_id
    out: list[float] = []
    model.eval()
    with torch.no_grad():
        for start in range(0, len(encoded), batch_size):
            chunk = encoded[start:start + batch_size]
            width = max(len(e["input_ids"]) for e in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            attention = torch.zeros_like(ids)
            labels = torch.full_like(ids, -100)
            for i, e in enumerate(chunk):
                row = torch.tensor(list(e["input_ids"]))
                mask = torch.tensor(list(e["assistant_masks"]), dtype=torch.bool)
                if not mask.any():
                    raise ValueError(f"conversation {start + i} has no assistant tokens to score")
                ids[i, :len(row)] = row
                attention[i, :len(row)] = 1
                labels[i, :len(row)] = torch.where(mask, row, -100)
            logits = model(input_ids=ids, attention_mask=attention).logits[:, :-1].float()
            target = labels[:, 1:]
            token_nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, reduction="none")
            counted = target != -100
            out.extend((token_nll * counted).sum(1).div(counted.sum(1)).tolist())
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
    """``{metric key: value}`` for ``METRICS`` on held-out ``rows`` (each with ``entropy`` "low" / "high")."""
    low = [r for r in rows if r["entropy"] == "low"]
    high = [r for r in rows if r["entropy"] == "high"]
    if not low or not high:
        raise ValueError(f"evaluation needs both kinds of rows; got {len(low)} one-right-answer, {len(high)} open-ended")
    nll_low = reply_nll(model, tokenizer, [messages(r) for r in low])
    nll_high = reply_nll(model, tokenizer, [messages(r) for r in high])
    replies = greedy_replies(model, tokenizer, [messages(r)[:1] for r in low])
    correct = sum(reply.strip() == r["completion"].strip() for reply, r in zip(replies, low, strict=True))
    return {
        "nll_low": sum(nll_low) / len(nll_low),
        "exact_match_low": correct / len(low),
        "nll_high": sum(nll_high) / len(nll_high),
    }
