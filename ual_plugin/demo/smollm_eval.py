"""What a fine-tuned SmolLM2 knows, from exact sequence probabilities of known answers.

Every candidate reply is scored whole (its tokens and the end-of-turn token) after the chat prompt,
so "mass on a set of answers" is the summed probability of replying with exactly one of them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from ual_plugin.demo.evaluate import expected_calibration_error
from ual_plugin.demo.smollm_data import (
    MC_FACTS,
    RETENTION_PROMPTS,
    RealWorld,
    open_prompt,
)

# (key, what it measures, higher is better?)
METRICS: tuple[tuple[str, str, bool], ...] = (
    ("wp_train_p", "word problems with fine-tuned numbers: p(right answer)", True),
    ("wp_heldout_p", "word problems with held-out numbers: p(right answer)", True),
    ("wp_heldout_acc", "word problems with held-out numbers: most probable answer right", True),
    ("wp_ece", "word problems: calibration error (ECE over the possible answers, 10 bins)", False),
    ("open_train_mass", "fine-tuned categories: mass on members seen in fine-tuning", True),
    ("open_heldout_mass", "fine-tuned categories: mass on valid members not seen in fine-tuning", True),
    ("open_newcat_mass", "held-out categories: mass on their valid members", True),
    ("open_offcat_mass", "every category: mass on other categories' members (wrong answers)", False),
    ("retention_nll", "NLL per token of the base model's own greedy replies to general prompts", False),
    ("mc_p", "multiple-choice facts the base model knows: p(right option) among the options", True),
    ("mc_acc", "all multiple-choice facts: right option most probable", True),
)


@dataclass
class Probes:
    """What the base model fixes once per run: its greedy replies and the facts it knows."""

    retention: list[tuple[list[int], list[int]]]  # (prompt ids, the base model's greedy reply ids)
    known_facts: list[int]  # indices into MC_FACTS the base model answers right
    n_facts: int


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


def make_probes(base, tokenizer, n_prompts: int, n_tokens: int, n_facts: int) -> Probes:
    """The base model's greedy replies to the first ``n_prompts`` general prompts, and which of the first
    ``n_facts`` multiple-choice facts it knows."""
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
    probs = _mc_option_probs(base, tokenizer, min(n_facts, len(MC_FACTS)))
    known = [i for i, p in enumerate(probs) if max(range(len(p)), key=p.__getitem__) == 0]
    return Probes(retention, known, len(probs))


def _mc_option_probs(model, tokenizer, n: int) -> list[list[float]]:
    """Per fact, the options' probabilities as continuations of its stem, normalised over the options."""
    pairs = []
    for stem, *options in MC_FACTS[:n]:
        prefix = tokenizer(stem, add_special_tokens=False)["input_ids"]
        pairs += [(prefix, tokenizer(" " + o, add_special_tokens=False)["input_ids"]) for o in options]
    lp = sequence_logprobs(model, pairs)
    out = []
    for i in range(n):
        scores = lp[4 * i: 4 * i + 4]
        top = max(scores)
        weights = [math.exp(s - top) for s in scores]
        out.append([w / sum(weights) for w in weights])
    return out


def _mass(lp: list[float]) -> float:
    return sum(math.exp(x) for x in lp)


def evaluate(model, tokenizer, world: RealWorld, probes: Probes) -> dict[str, float]:
    """``{metric key: value}`` for ``METRICS``."""
    model.eval()
    size = world.size
    cats = world.categories()
    members = {c: world.train_members[c] + world.heldout_members[c] for c in cats}
    # open-ended: every in-play member of every category, after each category's prompt
    candidates = [(c, m) for c in cats for m in members[c]]
    pairs = [(chat_prefix(tokenizer, open_prompt(c)), reply_ids(tokenizer, m)) for c in cats for _, m in candidates]
    lp = sequence_logprobs(model, pairs)
    per_prompt = {c: dict(zip(candidates, lp[i * len(candidates): (i + 1) * len(candidates)], strict=True))
                  for i, c in enumerate(cats)}

    def mass(c: str, names: list[str]) -> float:
        return _mass([per_prompt[c][(c, m)] for m in names])

    offcat = [_mass([v for (owner, _), v in per_prompt[c].items() if owner != c]) for c in cats]
    # word problems: the right answer's probability, and the distribution over every possible answer
    answers = world.answer_range()
    wp: dict[str, tuple[list[float], list[float], list[bool]]] = {}
    for split, numbers, salt in (("train", world.train_numbers, 2), ("heldout", world.heldout_numbers, 3)):
        problems = world.problems(numbers, size.eval_problems, salt=salt)
        pairs = [(chat_prefix(tokenizer, p.prompt), reply_ids(tokenizer, str(a))) for p in problems for a in answers]
        lp = sequence_logprobs(model, pairs)
        p_right, conf, correct = [], [], []
        for i, p in enumerate(problems):
            row = lp[i * len(answers): (i + 1) * len(answers)]
            p_right.append(math.exp(row[answers.index(p.answer)]))
            top = max(row)
            norm = sum(math.exp(x - top) for x in row)
            best = max(range(len(row)), key=row.__getitem__)
            conf.append(1.0 / norm)
            correct.append(answers[best] == p.answer)
        wp[split] = (p_right, conf, correct)
    # retention: the base model's greedy replies, and the facts it knows
    nll = sequence_logprobs(model, probes.retention)
    tokens = sum(len(c) for _, c in probes.retention)
    mc = _mc_option_probs(model, tokenizer, probes.n_facts)
    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
    return {
        "wp_train_p": mean(wp["train"][0]),
        "wp_heldout_p": mean(wp["heldout"][0]),
        "wp_heldout_acc": mean([float(x) for x in wp["heldout"][2]]),
        "wp_ece": expected_calibration_error(wp["train"][1] + wp["heldout"][1],
                                             [float(x) for x in wp["train"][2] + wp["heldout"][2]]),
        "open_train_mass": mean([mass(c, world.train_members[c]) for c in world.train_categories]),
        "open_heldout_mass": mean([mass(c, world.heldout_members[c]) for c in world.train_categories]),
        "open_newcat_mass": mean([mass(c, members[c]) for c in world.heldout_categories]),
        "open_offcat_mass": mean(offcat),
        "retention_nll": -sum(nll) / tokens,
        "mc_p": mean([mc[i][0] for i in probes.known_facts]),
        "mc_acc": mean([float(max(range(4), key=p.__getitem__) == 0) for p in mc]),
    }
