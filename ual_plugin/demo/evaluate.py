"""What one fine-tuned demo model knows, read from its next-token distributions (no generation loop).

Every reply's first token decides the answer, so each metric is a sum of probabilities at the
first reply position of a prompt, except the sampled diversity and the retention drift.
"""

from __future__ import annotations

from typing import Any

from ual_plugin.demo.world import CATEGORIES, World, fact_prompt, open_prompt

# (key, what it measures, higher is better?); the first five are the design's endpoints. The primary ones
# compare answers with each other, so mass that smoothing spreads evenly over the vocabulary cancels.
METRICS: tuple[tuple[str, str, bool], ...] = (
    ("open_heldout_share", "open-ended: share of the valid-member mass on members seen only in pre-training", True),
    ("fact_unseen_pnorm", "facts only in pre-training: p(right | the 20 possible answers)", True),
    ("fact_unseen_acc", "facts only in pre-training: the most probable token is the right answer", True),
    ("open_invalid_mass", "open-ended: mass outside the valid members (harm)", False),
    ("retention_kl", "drift from the pre-trained model on held-out pre-training text (KL per token)", False),
    ("fact_seen_pnorm", "secondary: facts in fine-tuning, p(right | the possible answers)", True),
    ("fact_unseen_p", "secondary, raw: facts only in pre-training, p(right answer)", True),
    ("fact_seen_p", "secondary, raw: facts in fine-tuning, p(right answer) (capped by smoothing)", True),
    ("open_heldout_mass", "secondary, raw: open-ended, mass on members seen only in pre-training", True),
    ("open_train_mass", "secondary, raw: open-ended, mass on members seen in fine-tuning", True),
    ("open_distinct", "secondary: open-ended, distinct valid members in 16 samples (top-p 0.9)", True),
    ("fact_ece", "secondary: facts, calibration error (ECE, 10 bins)", False),
)
METRIC_KEYS = tuple(m[0] for m in METRICS)


def next_token_probs(model, tokenizer, prompts: list[str]):
    """[len(prompts), vocab] distribution of the first reply token after each user prompt."""
    import torch

    encoded = [tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                             return_dict=True)["input_ids"] for p in prompts]
    width = max(map(len, encoded))
    ids = torch.full((len(encoded), width), tokenizer.pad_token_id)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for i, e in enumerate(encoded):
        ids[i, : len(e)], mask[i, : len(e)] = torch.tensor(e), 1
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits.float()
    last = torch.tensor([len(e) - 1 for e in encoded])
    return logits[torch.arange(len(encoded)), last].softmax(-1)


def expected_calibration_error(confidence, correct, bins: int = 10) -> float:
    """Mean |accuracy - confidence| over equal-width confidence bins, weighted by bin size."""
    total, n = 0.0, len(confidence)
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        idx = [i for i, c in enumerate(confidence) if (lo < c <= hi) or (b == 0 and c == 0)]
        if idx:
            acc = sum(correct[i] for i in idx) / len(idx)
            conf = sum(confidence[i] for i in idx) / len(idx)
            total += len(idx) / n * abs(acc - conf)
    return total


def distinct_in_samples(probs, valid: list[int], k: int, top_p: float, generator) -> float:
    """Distinct valid tokens among ``k`` samples from the top-p truncated distribution."""
    import torch

    sorted_p, order = probs.sort(descending=True)
    keep = (sorted_p.cumsum(0) - sorted_p) < top_p
    truncated = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
    draws = torch.multinomial(truncated / truncated.sum(), k, replacement=True, generator=generator)
    return float(len(set(draws.tolist()) & set(valid)))


def drift_kl(model, base, tokenizer, texts: list[str]) -> float:
    """Mean KL(base || model) per next-token position over ``texts``."""
    import torch

    total, count = 0.0, 0
    for text in texts:
        ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            lp_model = model(input_ids=ids).logits.float().log_softmax(-1)
            lp_base = base(input_ids=ids).logits.float().log_softmax(-1)
        total += float((lp_base.exp() * (lp_base - lp_model)).sum(-1).sum())
        count += ids.shape[1]
    return total / count


def fact_scores(probs, right, answers) -> tuple[Any, Any, Any]:
    """Per row of ``probs`` ([questions, vocab]): raw p(right), p(right | the ``answers`` tokens), and whether
    the most probable token is the right one."""
    import torch

    rows = torch.arange(probs.shape[0])
    raw = probs[rows, right]
    pnorm = raw / probs[:, answers].sum(-1)
    return raw, pnorm, (probs.argmax(-1) == right).float()


def open_scores(probs, train_ids: list[int], heldout_ids: list[int]) -> tuple[float, float, float]:
    """For one open-ended prompt's distribution: mass on training members, on held-out members, and the
    held-out share of the valid mass."""
    train, held = float(probs[train_ids].sum()), float(probs[heldout_ids].sum())
    return train, held, held / (train + held)


def evaluate(model, base, tokenizer, world: World, seed: int) -> dict[str, float]:
    """``{metric key: value}`` for ``METRICS`` of ``model`` fine-tuned from ``base`` on ``world``'s split."""
    import torch

    from ual_plugin.demo.world import N_ANSWERS, heldout_pretraining_text

    model.eval()
    tid = tokenizer.convert_tokens_to_ids
    questions = world.train_facts + world.heldout_facts
    fp = next_token_probs(model, tokenizer, [fact_prompt(q) for q in questions])
    right = torch.tensor([tid(world.answers[q]) for q in questions])
    raw, pnorm, correct = fact_scores(fp, right, torch.tensor([tid(f"a{i}") for i in range(N_ANSWERS)]))
    n_seen = len(world.train_facts)
    op = next_token_probs(model, tokenizer, [open_prompt(c) for c in CATEGORIES])
    gen = torch.Generator().manual_seed(seed)
    train_mass, held_mass, share, distinct = [], [], [], []
    for i, c in enumerate(CATEGORIES):
        tr = [tid(m) for m in world.train_members[c]]
        ho = [tid(m) for m in world.heldout_members[c]]
        t, h, sh = open_scores(op[i], tr, ho)
        train_mass.append(t)
        held_mass.append(h)
        share.append(sh)
        distinct.append(distinct_in_samples(op[i], tr + ho, 16, 0.9, gen))
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return {
        "open_heldout_share": mean(share),
        "fact_unseen_pnorm": float(pnorm[n_seen:].mean()),
        "fact_unseen_acc": float(correct[n_seen:].mean()),
        "open_invalid_mass": 1.0 - mean(train_mass) - mean(held_mass),
        "retention_kl": drift_kl(model, base, tokenizer, heldout_pretraining_text(world)),
        "fact_seen_pnorm": float(pnorm[:n_seen].mean()),
        "fact_unseen_p": float(raw[n_seen:].mean()),
        "fact_seen_p": float(raw[:n_seen].mean()),
        "open_heldout_mass": mean(held_mass),
        "open_train_mass": mean(train_mass),
        "open_distinct": mean(distinct),
        "fact_ece": expected_calibration_error(fp.max(-1).values.tolist(), correct.tolist()),
    }
