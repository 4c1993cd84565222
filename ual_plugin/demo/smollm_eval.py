"""What a fine-tuned SmolLM2 knows, measured so that smoothing the training target cannot game it.

Every candidate reply is scored whole (its tokens and the end-of-turn token) after the chat prompt.
The primary metrics compare candidates with each other, so mass that label smoothing spreads evenly
over the vocabulary cancels out: p(right answer | the possible answers), the share of held-out valid
answers among valid answers, and the KL divergence from the base model's next-token distributions.
Raw probabilities and masses stay as secondary metrics.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ual_plugin.demo.smollm_data import RETENTION_PROMPTS, RealWorld, open_prompt

# (key, what it measures, higher is better?); the first five are the design's endpoints
METRICS: tuple[tuple[str, str, bool], ...] = (
    ("open_heldout_share", "fine-tuned categories: share of the valid-answer mass on valid members not seen in "
                           "fine-tuning", True),
    ("wp_heldout_pnorm", "word problems with held-out numbers: p(right answer | the possible answers)", True),
    ("wp_heldout_acc", "word problems with held-out numbers: the most probable answer is right", True),
    ("open_invalid_mass", "every category: mass outside its listed valid answers (harm)", False),
    ("retention_kl", "general prompts: KL(base || model) per token over the base model's greedy replies", False),
    ("wp_heldout_p", "secondary, raw: word problems with held-out numbers, p(right answer)", True),
    ("open_heldout_mass", "secondary, raw: fine-tuned categories, mass on valid members not seen in fine-tuning",
     True),
    ("open_train_mass", "secondary, raw: fine-tuned categories, mass on members seen in fine-tuning", True),
    ("open_newcat_mass", "secondary, raw: held-out categories, mass on their valid members", True),
)


@dataclass
class Probes:
    """What the base model fixes once per run: its greedy replies and its next-token log-probabilities on them."""

    retention: list[tuple[list[int], list[int]]]  # (prompt ids, the base model's greedy reply ids)
    base_logp: list[Any]  # per reply, [reply tokens, vocab] log-probabilities of the base model


def sequence_logprobs(model, pairs: Sequence[tuple[list[int], list[int]]], batch_size: int = 256) -> list[float]:
    """Sum of log p(continuation | prefix) for each (prefix ids, continuation ids) pair.

    Pairs that share a prefix (a prompt and its candidate replies) run the prefix once and the
    continuations as one batch on its key/value cache.
    """
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, (prefix, _) in enumerate(pairs):
        groups.setdefault(tuple(prefix), []).append(i)
    out = [0.0] * len(pairs)
    for prefix, members in groups.items():
        for start in range(0, len(members), batch_size):
            chunk = members[start: start + batch_size]
            for i, value in zip(chunk, _continuations(model, list(prefix), [pairs[i][1] for i in chunk]), strict=True):
                out[i] = value
    return out


def _continuations(model, prefix: list[int], continuations: list[list[int]]) -> list[float]:
    import torch

    device = next(model.parameters()).device
    n, width = len(continuations), max(map(len, continuations))
    with torch.no_grad():
        head = model(input_ids=torch.tensor([prefix], device=device), use_cache=True)
        cache = head.past_key_values
        cache.batch_repeat_interleave(n)
        ids = torch.zeros((n, width), dtype=torch.long)
        mask = torch.zeros((n, len(prefix) + width), dtype=torch.long)
        mask[:, : len(prefix)] = 1
        for i, c in enumerate(continuations):
            ids[i, : len(c)] = torch.tensor(c)
            mask[i, len(prefix): len(prefix) + len(c)] = 1
        tail = model(input_ids=ids.to(device), attention_mask=mask.to(device), past_key_values=cache,
                     use_cache=True).logits
        # position j of a continuation is predicted by the prefix's last logits (j = 0) or the tail's j - 1
        logits = torch.cat([head.logits[:, -1:].expand(n, 1, -1), tail[:, :-1]], dim=1).float()
        logp = logits.log_softmax(-1)
    return [float(logp[i, torch.arange(len(c)), torch.tensor(c, device=device)].sum())
            for i, c in enumerate(continuations)]


def chat_prefix(tokenizer, user: str) -> list[int]:
    return list(tokenizer.apply_chat_template([{"role": "user", "content": user}], add_generation_prompt=True,
                                              return_dict=True)["input_ids"])


def reply_ids(tokenizer, reply: str) -> list[int]:
    return tokenizer(reply + "<|im_end|>", add_special_tokens=False)["input_ids"]


def reply_logp(model, retention: Sequence[tuple[list[int], list[int]]]) -> list[Any]:
    """Per (prompt, reply): the model's next-token log-probabilities at each reply position."""
    import torch

    device = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for prefix, reply in retention:
            ids = torch.tensor([prefix + reply], device=device)
            logits = model(input_ids=ids).logits[0, len(prefix) - 1: len(prefix) + len(reply) - 1].float()
            out.append(logits.log_softmax(-1).cpu())
    return out


def make_probes(base, tokenizer, n_prompts: int, n_tokens: int) -> Probes:
    """The base model's greedy replies to the first ``n_prompts`` general prompts (none is a training
    prompt), and its log-probabilities along them."""
    import torch

    device = next(base.parameters()).device
    base.eval()
    retention = []
    for prompt in RETENTION_PROMPTS[:n_prompts]:
        prefix = chat_prefix(tokenizer, prompt)
        with torch.no_grad():
            out = base.generate(torch.tensor([prefix], device=device), max_new_tokens=n_tokens, do_sample=False,
                                pad_token_id=tokenizer.pad_token_id)
        retention.append((prefix, out[0, len(prefix):].tolist()))
    return Probes(retention, reply_logp(base, retention))


def retention_kl(model, probes: Probes) -> float:
    """Mean over reply tokens of KL(base || model) between the next-token distributions."""
    total, count = 0.0, 0
    for base_lp, lp in zip(probes.base_logp, reply_logp(model, probes.retention), strict=True):
        total += float((base_lp.exp() * (base_lp - lp)).sum())
        count += base_lp.shape[0]
    return total / count


def _mass(lp: list[float]) -> float:
    return sum(math.exp(x) for x in lp)


def _normalised(lp: list[float], index: int) -> float:
    top = max(lp)
    return math.exp(lp[index] - top) / sum(math.exp(x - top) for x in lp)


def evaluate(model, tokenizer, world: RealWorld, probes: Probes) -> dict[str, float]:
    """``{metric key: value}`` for ``METRICS``."""
    model.eval()
    size = world.size
    cats = world.categories()
    members = {c: world.train_members[c] + world.heldout_members[c] for c in cats}
    # open-ended: each category's own in-play members after its prompt
    pairs = [(chat_prefix(tokenizer, open_prompt(c)), reply_ids(tokenizer, m)) for c in cats for m in members[c]]
    lp = iter(sequence_logprobs(model, pairs))
    scores = {c: {m: next(lp) for m in members[c]} for c in cats}

    def mass(c: str, names: list[str]) -> float:
        return _mass([scores[c][m] for m in names])

    share = [mass(c, world.heldout_members[c]) / mass(c, members[c]) for c in world.train_categories]
    # word problems: the right answer among every possible answer
    answers = world.answer_range()
    wp: dict[str, tuple[list[float], list[float], list[float]]] = {}
    for split, numbers, salt in (("heldout", world.heldout_numbers, 3),):
        problems = world.problems(numbers, size.eval_problems, salt=salt)
        pairs = [(chat_prefix(tokenizer, p.prompt), reply_ids(tokenizer, str(a))) for p in problems for a in answers]
        lp_all = sequence_logprobs(model, pairs)
        raw, norm, acc = [], [], []
        for i, p in enumerate(problems):
            row = lp_all[i * len(answers): (i + 1) * len(answers)]
            right = answers.index(p.answer)
            raw.append(math.exp(row[right]))
            norm.append(_normalised(row, right))
            acc.append(float(max(range(len(row)), key=row.__getitem__) == right))
        wp[split] = (raw, norm, acc)
    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
    return {
        "open_heldout_share": mean(share),
        "wp_heldout_pnorm": mean(wp["heldout"][1]),
        "wp_heldout_acc": mean(wp["heldout"][2]),
        "open_invalid_mass": mean([1.0 - mass(c, members[c]) for c in cats]),
        "retention_kl": retention_kl(model, probes),
        "wp_heldout_p": mean(wp["heldout"][0]),
        "open_heldout_mass": mean([mass(c, world.heldout_members[c]) for c in world.train_categories]),
        "open_train_mass": mean([mass(c, world.train_members[c]) for c in world.train_categories]),
        "open_newcat_mass": mean([mass(c, members[c]) for c in world.heldout_categories]),
    }
