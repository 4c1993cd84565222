"""First pass (token plan), feature capture at the LM head input, model / adapter resolution."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from ual_plugin.analysis import (
    AnalysisError,
    check_same_vocab,
    collect_features,
    lm_head_inputs,
    load_model,
    load_tokenizer,
    plan_tokens,
    resolve_model,
    special_token_ids,
    tokenize_texts,
)


@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir):
    return load_model(tiny_model_dir, device="cpu")


@pytest.fixture(scope="module")
def plan(analysis_texts, tiny_tokenizer):
    seqs = tokenize_texts(analysis_texts, tiny_tokenizer, max_length=64)
    return plan_tokens(seqs, top_tokens=8, max_per_token=30, exclude=special_token_ids(tiny_tokenizer), seed=0)


def test_plan_picks_most_frequent_non_special_tokens(analysis_texts, tiny_tokenizer):
    seqs = tokenize_texts(analysis_texts, tiny_tokenizer, max_length=64)
    plan = plan_tokens(seqs, top_tokens=8, max_per_token=30, exclude=special_token_ids(tiny_tokenizer), dedupe=False)
    counts = np.bincount(np.concatenate([s[1:] for s in seqs]))
    special = special_token_ids(tiny_tokenizer)
    assert tiny_tokenizer.pad_token_id in special and tiny_tokenizer.eos_token_id in special
    eligible = [t for t in np.argsort(-counts, kind="stable") if t not in special and counts[t] >= 2]
    assert plan.tokens == [int(t) for t in eligible[:8]]
    assert [plan.counts[t] for t in plan.tokens] == sorted(plan.counts.values(), reverse=True)
    for t in plan.tokens:
        pos = plan.positions[t]
        assert len(pos) == min(30, plan.counts[t])
        assert all(plan.sequences[ti][p + 1] == t for ti, p in pos)  # labelled with the NEXT token


def test_dedupe_keeps_each_context_and_next_token_once(analysis_texts, tiny_tokenizer):
    seqs = tokenize_texts(analysis_texts, tiny_tokenizer, max_length=64)
    plan = plan_tokens(seqs, top_tokens=10, max_per_token=None)
    unique: dict[int, set] = {}
    for s in seqs:
        for p in range(len(s) - 1):
            unique.setdefault(int(s[p + 1]), set()).add(tuple(s[: p + 2].tolist()))
    assert plan.n_unique == sum(len(v) for v in unique.values()) < plan.n_positions
    for t in plan.tokens:
        contexts = [tuple(plan.sequences[ti][: p + 2].tolist()) for ti, p in plan.positions[t]]
        assert len(set(contexts)) == len(contexts) == plan.counts[t] == len(unique[t])
    # a shared prefix is kept once; the same context with another next token is kept too
    seqs = [np.array([1, 2, 3, 4]), np.array([1, 2, 3, 5]), np.array([1, 2]), np.array([1, 2, 3, 4, 6])]
    deduped = plan_tokens(seqs, top_tokens=5, min_count=1)
    assert {t: len(p) for t, p in deduped.positions.items()} == {2: 1, 3: 1, 4: 1, 5: 1, 6: 1}
    full = plan_tokens(seqs, top_tokens=5, min_count=1, dedupe=False)
    assert {t: len(p) for t, p in full.positions.items()} == {2: 4, 3: 3, 4: 2, 5: 1, 6: 1}


def test_plan_is_seeded_and_capped(analysis_texts, tiny_tokenizer):
    seqs = tokenize_texts(analysis_texts, tiny_tokenizer, max_length=64)
    a = plan_tokens(seqs, top_tokens=5, max_per_token=10, seed=0)
    b = plan_tokens(seqs, top_tokens=5, max_per_token=10, seed=0)
    c = plan_tokens(seqs, top_tokens=5, max_per_token=10, seed=1)
    assert a.tokens == b.tokens == c.tokens
    assert all(np.array_equal(a.positions[t], b.positions[t]) for t in a.tokens)
    assert any(not np.array_equal(a.positions[t], c.positions[t]) for t in a.tokens)
    full = plan_tokens(seqs, top_tokens=5, max_per_token=None)
    assert all(len(full.positions[t]) == full.counts[t] for t in full.tokens)
    assert all(len(a.positions[t]) == min(10, a.counts[t]) for t in a.tokens)


def test_special_tokens_can_be_included(tiny_tokenizer):
    eos = tiny_tokenizer.eos_token_id
    seqs = [np.array([1, eos, 7, eos, 7, eos, 8, 9, 8, 9])]
    assert eos not in plan_tokens(seqs, top_tokens=3, exclude={eos}).tokens
    assert plan_tokens(seqs, top_tokens=3).tokens[0] == eos


def test_plan_errors():
    with pytest.raises(AnalysisError, match="shorter than 2 tokens"):
        plan_tokens([np.array([5])])
    with pytest.raises(AnalysisError, match="only 1 token"):
        plan_tokens([np.array([1, 2, 2, 3])])
    with pytest.raises(AnalysisError, match="top_tokens"):
        plan_tokens([np.array([1, 2, 3])], top_tokens=1)


def test_max_length_truncates(analysis_texts, tiny_tokenizer):
    seqs = tokenize_texts(analysis_texts, tiny_tokenizer, max_length=5)
    assert max(len(s) for s in seqs) == 5


def test_lm_head_inputs_are_the_heads_input(tiny_model):
    ids = torch.randint(10, 200, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    with torch.no_grad():
        h = lm_head_inputs(tiny_model, ids, mask)
        logits = tiny_model(input_ids=ids, attention_mask=mask).logits
    assert h.shape == (2, 9, tiny_model.config.hidden_size)
    torch.testing.assert_close(tiny_model.get_output_embeddings()(h), logits)


def test_no_logits_are_computed(tiny_model, lora_adapter_dir):
    for model in (tiny_model, load_model(lora_adapter_dir, device="cpu")):
        head_calls: list[int] = []
        handle = model.get_output_embeddings().register_forward_hook(lambda *a, c=head_calls: c.append(1))
        try:
            ids = torch.randint(10, 200, (1, 6))
            with torch.no_grad():
                lm_head_inputs(model, ids, torch.ones_like(ids))
        finally:
            handle.remove()
        assert head_calls == []  # the head's input was captured and the forward stopped there


def test_fallback_without_head_module(tiny_model, monkeypatch):
    ids = torch.randint(10, 200, (1, 7))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        expected = lm_head_inputs(tiny_model, ids, mask)
        monkeypatch.setattr(tiny_model, "get_output_embeddings", lambda: None)
        got = lm_head_inputs(tiny_model, ids, mask)
    torch.testing.assert_close(got, expected)


def test_collect_features_independent_of_batching(tiny_model, plan, tiny_tokenizer):
    one = collect_features(tiny_model, plan, batch_size=1, progress=False)
    many = collect_features(tiny_model, plan, batch_size=7, pad_token_id=tiny_tokenizer.pad_token_id, progress=False)
    assert set(one) == set(plan.tokens)
    for t in plan.tokens:
        assert one[t].dtype == np.float32
        assert one[t].shape == (len(plan.positions[t]), tiny_model.config.hidden_size)
        np.testing.assert_allclose(one[t], many[t], atol=1e-4)
    # row k is the feature at plan.positions[t][k]: check one against a direct forward
    t = plan.tokens[0]
    ti, p = plan.positions[t][3]
    seq = torch.as_tensor(plan.sequences[ti][None, : p + 1])
    with torch.no_grad():
        direct = lm_head_inputs(tiny_model, seq, torch.ones_like(seq))[0, p].numpy()
    np.testing.assert_allclose(one[t][3], direct, atol=1e-4)


def test_resolve_plain_model_and_errors(tmp_path, tiny_model_dir):
    loc = resolve_model(tiny_model_dir)
    assert loc.adapter is None and loc.base == tiny_model_dir
    with pytest.raises(AnalysisError, match="model folder not found"):
        resolve_model(tmp_path / "missing")
    with pytest.raises(AnalysisError, match="neither a Hugging Face model folder"):
        resolve_model(tmp_path)


def test_resolve_adapter(tmp_path, lora_adapter_dir, tiny_model_dir):
    loc = resolve_model(lora_adapter_dir)
    assert loc.adapter == lora_adapter_dir and loc.base == tiny_model_dir
    assert loc.tokenizer == tiny_model_dir  # the adapter folder has no tokenizer of its own
    # a missing base is a clear error, and --base overrides it
    moved = tmp_path / "adapter"
    shutil.copytree(lora_adapter_dir, moved)
    cfg = json.loads((moved / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(tmp_path / "no-such-base")
    (moved / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(AnalysisError, match=r"base model folder not found: .*no-such-base.*--base"):
        resolve_model(moved)
    assert resolve_model(moved, base=tiny_model_dir).base == tiny_model_dir
    with pytest.raises(AnalysisError, match="base model folder not found"):
        resolve_model(moved, base=tmp_path / "other-missing")
    # a relative base is also looked up from the adapter folder
    shutil.copytree(tiny_model_dir, tmp_path / "base-copy")
    cfg["base_model_name_or_path"] = "../base-copy"
    (moved / "adapter_config.json").write_text(json.dumps(cfg))
    assert resolve_model(moved).base.resolve() == (tmp_path / "base-copy").resolve()


def test_adapter_changes_features(lora_adapter_dir, tiny_model, plan):
    adapted = load_model(lora_adapter_dir, device="cpu")
    assert type(adapted).__name__.startswith("Peft")
    a = collect_features(adapted, plan, progress=False)
    b = collect_features(tiny_model, plan, progress=False)
    t = plan.tokens[0]
    assert a[t].shape == b[t].shape
    assert not np.allclose(a[t], b[t], atol=1e-4)
    assert load_tokenizer(lora_adapter_dir).get_vocab() == load_tokenizer(lora_adapter_dir.parent / "base").get_vocab()


class _Tok:
    def __init__(self, vocab):
        self._vocab = vocab

    def get_vocab(self):
        return dict(self._vocab)


def test_vocab_mismatch_is_a_clear_error():
    check_same_vocab({"a": _Tok({"x": 0, "y": 1}), "b": _Tok({"x": 0, "y": 1})})
    with pytest.raises(AnalysisError, match="'a' and 'b' do not share a tokenizer vocabulary"):
        check_same_vocab({"a": _Tok({"x": 0, "y": 1}), "b": _Tok({"x": 1, "y": 0})})


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_bf16_features_match_cpu(tiny_model_dir, tiny_model, plan):
    gpu = load_model(tiny_model_dir)  # default: cuda + bf16
    assert next(gpu.parameters()).dtype == torch.bfloat16
    a = collect_features(gpu, plan, progress=False)
    b = collect_features(tiny_model, plan, progress=False)
    for t in plan.tokens:
        assert a[t].dtype == np.float32
        np.testing.assert_allclose(a[t], b[t], atol=0.15, rtol=0.05)
