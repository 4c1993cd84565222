"""What one fine-tuned demo model knows, read from its next-token distributions (no generation loop).

Every reply's first token decides the answer, so each metric is a sum of probabilities at the
first reply position of a prompt, except the sampled diversity and the retention drift.
"""

from __future__ import annotations

from ual_plugin.demo.world import CATEGORIES, World, fact_prompt, open_prompt

# (key, what it measures, higher is better?)
METRICS: tuple[tuple[str, str, bool], ...] = (
    ("fact_seen_p", "facts in fine-tuning: p(right answer)", True),
    ("fact_unseen_p", "facts only in pre-training: p(right answer)", True),
    ("fact_unseen_exact", "facts only in pre-training: greedy answer right", True),
    ("fact_ece", "facts: calibration error (ECE, 10 bins)", False),
    ("open_train_mass", "open-ended: mass on members seen in fine-tuning", True),
    ("open_heldout_mass", "open-ended: mass on members seen only in pre-training", True),
    ("open_invalid_mass", "open-ended: mass on invalid answers", False),
    ("open_distinct", "open-ended: distinct valid members in 16 samples (top-p 0.9)", True),
    ("retention_kl", "drift from the pre-trained model on held-out pre-training text (KL per token)", False),
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


def evaluate(model, base, tokenizer, world: World, seed: int) -> dict[str, float]:
    """``{metric key: value}`` for ``METRICS`` of ``model`` fine-tuned from ``base`` on ``world``'s split."""
    import torch

    from ual_plugin.demo.world import heldout_pretraining_text

    model.eval()
    tid = tokenizer.convert_tokens_to_ids
    questions = world.train_facts + world.heldout_facts
    fp = next_token_probs(model, tokenizer, [fact_prompt(q) for q in questions])
    right = torch.tensor([tid(world.answers[q]) for q in questions])
    p_right = fp[torch.arange(len(questions)), right]
    top_p, top = fp.max(-1)
    correct = (top == right).float()
    n_seen = len(world.train_facts)
    op = next_token_probs(model, tokenizer, [open_prompt(c) for c in CATEGORIES])
    gen = torch.Generator().manual_seed(seed)
    train_mass, held_mass, distinct = [], [], []
    for i, c in enumerate(CATEGORIES):
        tr = [tid(m) for m in world.train_members[c]]
        ho = [tid(m) for m in world.heldout_members[c]]
        train_mass.append(float(op[i, tr].sum()))
        held_mass.append(float(op[i, ho].sum()))
        distinct.append(distinct_in_samples(op[i], tr + ho, 16, 0.9, gen))
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return {
        "fact_seen_p": float(p_right[:n_seen].mean()),
        "fact_unseen_p": float(p_right[n_seen:].mean()),
        "fact_unseen_exact": float(correct[n_seen:].mean()),
        "fact_ece": expected_calibration_error(top_p.tolist(), correct.tolist()),
        "open_train_mass": mean(train_mass),
        "open_heldout_mass": mean(held_mass),
        "open_invalid_mass": 1.0 - mean(train_mass) - mean(held_mass),
        "open_distinct": mean(distinct),
        "retention_kl": drift_kl(model, base, tokenizer, heldout_pretraining_text(world)),
    }
