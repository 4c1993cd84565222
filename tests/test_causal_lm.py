"""The UAL loss inside a causal LM's forward: reference values and gradients, MoE router loss, PEFT heads."""

from __future__ import annotations

import inspect

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")

from ual_plugin.causal_lm import UALRequest, install_ual_forward, ual_request  # noqa: E402
from ual_plugin.ppl import PPLSmoother  # noqa: E402

V = 97


def tiny_llama(tie: bool = False) -> torch.nn.Module:
    cfg = transformers.LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   tie_word_embeddings=tie)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg)


def batch(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (3, 10), generator=g)
    labels = ids.clone()
    labels[:, :3] = -100
    labels[2, 7:] = -100
    smoothing = torch.rand(3, 10, generator=g) * 0.6
    return ids, labels, smoothing


def reference(logits: torch.Tensor, labels: torch.Tensor, smoothing: torch.Tensor, num_items: int) -> torch.Tensor:
    """Sum of torch's label-smoothed CE over label tokens, one token at a time, / num_items."""
    z, t, e = logits[:, :-1], labels[:, 1:], smoothing[:, 1:]
    total = sum(F.cross_entropy(z[r, c : c + 1], t[r, c : c + 1], label_smoothing=float(e[r, c]), reduction="sum")
                for r, c in (t != -100).nonzero().tolist())
    return total / num_items


def ual_forward(model, ids, labels, request, num_items=None, **kwargs):
    with ual_request(request):
        return model(input_ids=ids, labels=labels, num_items_in_batch=num_items, **kwargs)


def assert_same_grads(loss_a, loss_b, params, rtol=1e-5):
    ga = torch.autograd.grad(loss_a, params, allow_unused=True)
    gb = torch.autograd.grad(loss_b, params, allow_unused=True)
    checked = 0
    for a, b in zip(ga, gb, strict=True):
        if b is None:
            assert a is None or not a.any()
            continue
        assert float((a - b).norm() / b.norm().clamp(min=1e-30)) < rtol
        checked += 1
    assert checked > 0


def test_without_a_request_the_model_is_unchanged():
    model = tiny_llama()
    ids, labels, _ = batch()
    before = model(input_ids=ids, labels=labels)
    lm = install_ual_forward(model)
    assert lm is model and install_ual_forward(model) is model  # idempotent
    after = model(input_ids=ids, labels=labels)
    torch.testing.assert_close(after.logits, before.logits, rtol=0, atol=0)
    torch.testing.assert_close(after.loss, before.loss, rtol=0, atol=0)
    # trainers read the forward's signature to decide which batch columns to keep
    assert list(inspect.signature(model.forward).parameters) == list(
        inspect.signature(type(model).forward).parameters)[1:]


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_loss_and_gradients_match_torch_on_full_logits(tie):
    model = tiny_llama(tie)
    ids, labels, smoothing = batch()
    full_logits = model(input_ids=ids).logits
    with torch.no_grad():
        last_logits = model(input_ids=ids, logits_to_keep=1).logits
    ref = reference(full_logits, labels, smoothing, 17)
    install_ual_forward(model)
    request = UALRequest(smoothing=smoothing)
    out = ual_forward(model, ids, labels, request, num_items=torch.tensor(17))
    torch.testing.assert_close(out.loss, ref, rtol=1e-5, atol=1e-6)
    # the model's own projection covered one position only, and the loss it carries changed no logit: bit-equal
    # to the same one-position call (same GEMM shape); a full-length GEMM may round differently, so only close
    torch.testing.assert_close(out.logits, last_logits, rtol=0, atol=0)
    torch.testing.assert_close(out.logits, full_logits[:, -1:].detach(), rtol=1e-5, atol=1e-6)
    n = int((labels[:, 1:] != -100).sum())
    assert int(request.stats["n_tokens"]) == n
    expected_sum = float((smoothing[:, 1:] * (labels[:, 1:] != -100)).sum())
    assert float(request.stats["smoothing_sum"]) == pytest.approx(expected_sum, rel=1e-6)
    assert_same_grads(out.loss, ref, list(model.parameters()))


def test_without_num_items_the_loss_is_the_mean_over_label_tokens():
    model = tiny_llama()
    ids, labels, smoothing = batch()
    n = int((labels[:, 1:] != -100).sum())
    ref = reference(model(input_ids=ids).logits, labels, smoothing, n)
    install_ual_forward(model)
    out = ual_forward(model, ids, labels, UALRequest(smoothing=smoothing))
    torch.testing.assert_close(out.loss, ref, rtol=1e-5, atol=1e-6)


def test_ppl_mode_uses_each_rows_perplexity_and_updates_only_in_training():
    model = tiny_llama()
    ids, labels, _ = batch()
    logits = model(input_ids=ids).logits
    t = labels[:, 1:]
    mask = t != -100
    nll = F.cross_entropy(logits[:, :-1].reshape(-1, V), t.reshape(-1), reduction="none", ignore_index=-100)
    ppl = torch.exp((nll.reshape(t.shape) * mask).sum(1) / mask.sum(1))
    per_row = (0.3 * ppl / ppl.mean()).clamp(max=0.99).detach()
    ref = reference(logits, labels, per_row[:, None].expand_as(labels), 20)
    install_ual_forward(model)
    smoother = PPLSmoother(alpha=0.3)
    out = ual_forward(model, ids, labels, UALRequest(ppl=smoother), num_items=torch.tensor(20))
    torch.testing.assert_close(out.loss, ref, rtol=1e-5, atol=1e-6)
    assert smoother.count == 3 and smoother.running_mean == pytest.approx(float(ppl.detach().mean()), rel=1e-5)
    with torch.no_grad():
        ual_forward(model, ids, labels, UALRequest(ppl=smoother, update_ppl=False))
    assert smoother.count == 3  # evaluation leaves the training mean alone


MOE = {
    "mixtral": lambda: transformers.MixtralConfig(
        vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, output_router_logits=True,
        router_aux_loss_coef=0.5, max_position_embeddings=64),
    "qwen2_moe": lambda: transformers.Qwen2MoeConfig(
        vocab_size=V, hidden_size=32, intermediate_size=48, moe_intermediate_size=24,
        shared_expert_intermediate_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        num_experts=4, num_experts_per_tok=2, output_router_logits=True, router_aux_loss_coef=0.5,
        max_position_embeddings=64),
}


@pytest.mark.parametrize("family", sorted(MOE))
def test_moe_router_loss_is_added_as_the_model_adds_it(family):
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(MOE[family]())
    ids, labels, _ = batch()
    n = torch.tensor(int((labels[:, 1:] != -100).sum()))
    own = model(input_ids=ids, labels=labels, num_items_in_batch=n)
    assert own.aux_loss is not None and float(own.aux_loss) > 0
    install_ual_forward(model)
    out = ual_forward(model, ids, labels, UALRequest(smoothing=torch.zeros(labels.shape)), num_items=n)
    torch.testing.assert_close(out.loss, own.loss, rtol=1e-5, atol=1e-6)
    assert_same_grads(out.loss, own.loss, [p for p in model.parameters() if p.requires_grad])


def test_context_parallel_batches_are_refused():
    model = tiny_llama()
    ids, labels, smoothing = batch()
    install_ual_forward(model)
    with pytest.raises(ValueError, match="context / sequence parallelism"):
        ual_forward(model, ids, labels, UALRequest(smoothing=smoothing), shift_labels=labels[:, 1:])


def test_lora_on_lm_head_is_refused_with_the_reason():
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(tiny_llama(), peft.LoraConfig(r=4, target_modules=["q_proj", "lm_head"]))
    with pytest.raises(ValueError, match="LoRA adapter on lm_head.*bypassed"):
        install_ual_forward(model)


def test_lora_on_lm_head_added_after_a_first_install_is_refused():
    """PEFT wrapping a model that already has the UAL entry: the second install still checks the head."""
    peft = pytest.importorskip("peft")
    base = tiny_llama()
    install_ual_forward(base)
    model = peft.get_peft_model(base, peft.LoraConfig(r=4, target_modules=["q_proj", "lm_head"]))
    with pytest.raises(ValueError, match="LoRA adapter on lm_head.*bypassed"):
        install_ual_forward(model)


def test_remove_ual_forward_restores_the_model():
    from ual_plugin import remove_ual_forward

    model = tiny_llama()
    ids, labels, smoothing = batch()
    before = model(input_ids=ids, labels=labels)
    install_ual_forward(model)
    assert remove_ual_forward(model) is model
    leftovers = [(name, key) for name, m in model.named_modules() for key in m.__dict__ if key.startswith("_ual")]
    assert leftovers == [] and "forward" not in model.__dict__ and "forward" not in model.lm_head.__dict__
    after = model(input_ids=ids, labels=labels)
    torch.testing.assert_close(after.logits, before.logits, rtol=0, atol=0)
    # a request now finds no entry and the forward is the plain one: no UAL loss, no stats
    request = UALRequest(smoothing=smoothing)
    out = ual_forward(model, ids, labels, request)
    torch.testing.assert_close(out.loss, before.loss, rtol=0, atol=0)
    assert request.stats == {}
    install_ual_forward(model)  # and it can be installed again
    assert float(ual_forward(model, ids, labels, UALRequest(smoothing=smoothing)).loss) != float(before.loss)


def test_modules_to_save_lm_head_trains_the_copy():
    peft = pytest.importorskip("peft")
    base = tiny_llama()
    ids, labels, smoothing = batch()
    model = peft.get_peft_model(base, peft.LoraConfig(r=4, target_modules=["q_proj"], modules_to_save=["lm_head"]))
    ref = reference(model(input_ids=ids).logits, labels, smoothing, 17)
    install_ual_forward(model)
    out = ual_forward(model, ids, labels, UALRequest(smoothing=smoothing), num_items=torch.tensor(17))
    torch.testing.assert_close(out.loss, ref, rtol=1e-5, atol=1e-6)
    trainable = [p for p in model.parameters() if p.requires_grad]
    head_copy = base.lm_head.modules_to_save["default"].weight
    assert any(p is head_copy for p in trainable)
    assert_same_grads(out.loss, ref, trainable)


def test_fused_correction_needs_no_float32_copy_of_the_head():
    """z_y - mean(z) from the head rows: exact against float64 logits, and no [V, H] float32 tensor made."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from ual_plugin.causal_lm import smoothing_correction

    class Float32Shapes(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.shapes = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if isinstance(out, torch.Tensor) and out.dtype == torch.float32:
                self.shapes.add(tuple(out.shape))
            return out

    g = torch.Generator().manual_seed(3)
    vocab, hidden_size = 257, 16
    weight = torch.randn(vocab, hidden_size, generator=g).bfloat16()
    bias = torch.randn(vocab, generator=g).bfloat16()
    hidden = torch.randn(5, hidden_size, generator=g).bfloat16()
    targets = torch.tensor([0, 3, 256, 17, 3])
    with Float32Shapes() as seen:
        got = smoothing_correction(hidden, weight, bias, targets)
    assert (vocab, hidden_size) not in seen.shapes
    z = hidden.double() @ weight.double().t() + bias.double()
    want = z.gather(1, targets[:, None]).squeeze(1) - z.mean(1)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("contract", ["loss", "fused"], ids=["outputs.loss", "fused_log_probs"])
@pytest.mark.parametrize("n", [3, 7])
def test_bf16_autocast_does_not_round_the_scale(n, contract):
    """fp32 weights under bf16 autocast (TRL's bf16=True): the head gradient at num_items=N is exactly
    1/N of the one at N=1, however the head's bf16 output would round 1/N; through ``outputs.loss`` and
    through the fused contract's per-token log-probs, which TRL >= 1.16 reduces as ``-sum / N``."""
    model = tiny_llama()
    ids, labels, smoothing = batch()
    install_ual_forward(model)

    def head_grad(num_items: int) -> torch.Tensor:
        model.zero_grad(set_to_none=True)
        n_items = torch.tensor(num_items)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = ual_forward(model, ids, labels, UALRequest(smoothing=smoothing), num_items=n_items,
                              **({"fused_lm_head": True} if contract == "fused" else {}))
        loss = out.loss if contract == "loss" else -out.log_probs.sum() / n_items
        loss.backward()
        return model.lm_head.weight.grad.detach().clone()

    one, scaled = head_grad(1), head_grad(n)
    assert float((scaled * n - one).norm() / one.norm()) < 3e-4


class _HalvingLlama(transformers.LlamaForCausalLM):
    """Post-processes its logits after the head without saying so in its config."""

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        out.logits = out.logits / 2
        return out


class _UnpaddedLlama(transformers.LlamaForCausalLM):
    """Drops the padded vocabulary rows after the head (like models with an ``unpadded_vocab_size``)."""

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        out.logits = out.logits[..., : V - 5]
        return out


@pytest.mark.parametrize("cls", [_HalvingLlama, _UnpaddedLlama], ids=["halving", "unpadded"])
def test_unnamed_logit_post_processing_stops_instead_of_training_a_wrong_loss(cls):
    model = cls(tiny_llama().config)
    ids, labels, smoothing = batch()
    install_ual_forward(model)
    with pytest.raises(ValueError, match="post-processes its logits"):
        ual_forward(model, ids, labels, UALRequest(smoothing=smoothing))


def test_keep_logits_returns_the_full_logits_with_the_same_loss():
    model = tiny_llama()
    ids, labels, smoothing = batch()
    full_logits = model(input_ids=ids).logits.detach()
    install_ual_forward(model)
    short = ual_forward(model, ids, labels, UALRequest(smoothing=smoothing), num_items=torch.tensor(17))
    full = ual_forward(model, ids, labels, UALRequest(smoothing=smoothing, keep_logits=True),
                       num_items=torch.tensor(17))
    assert full.logits.shape == full_logits.shape
    torch.testing.assert_close(full.logits, full_logits, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(full.loss, short.loss, rtol=1e-6, atol=1e-7)


def test_plain_nll_is_the_unsmoothed_loss():
    model = tiny_llama()
    ids, labels, smoothing = batch()
    ref = reference(model(input_ids=ids).logits, labels, torch.zeros_like(smoothing), 1)
    install_ual_forward(model)
    request = UALRequest(smoothing=smoothing, plain_nll=True)
    with torch.no_grad():
        ual_forward(model, ids, labels, request)
    assert float(request.stats["nll_sum"]) == pytest.approx(float(ref), rel=1e-5)


def _reference_token_metrics(logits: torch.Tensor, labels: torch.Tensor):
    """Per next-token label: entropy, top-1 flag and mask from the full logits, as TRL computes them."""
    z, t = logits[:, :-1].float(), labels[:, 1:]
    mask = t != -100
    logp = z.log_softmax(-1)
    entropy = -(logp.exp() * logp).sum(-1) * mask
    top1 = (z.argmax(-1) == t) & mask
    return entropy, top1, mask


def test_trl_chunked_nll_contract_counts_come_from_the_ual_forward():
    """trl < 1.16's chunked_nll reads num_valid_tokens, num_correct_tokens and entropy_sum from the outputs."""
    model = tiny_llama()
    ids, labels, smoothing = batch()
    entropy, top1, mask = _reference_token_metrics(model(input_ids=ids).logits.detach(), labels)
    install_ual_forward(model)
    out = ual_forward(model, ids, labels, UALRequest(smoothing=smoothing, entropy=True, trl_counts=True))
    assert int(out.num_valid_tokens) == int(mask.sum())
    assert int(out.num_correct_tokens) == int(top1.sum())
    assert float(out.entropy_sum) == pytest.approx(float(entropy.sum()), rel=1e-5)


def test_trl_fused_contract_per_token_fields_carry_the_ual_loss():
    """fused_lm_head=True (trl >= 1.16): -log_probs are UAL's per-token losses, so TRL's NLL of them is UAL's loss in
    value and gradients; entropy, is_top1 and label_mask are per token, zero where ignored."""
    model = tiny_llama()
    ids, labels, smoothing = batch()
    logits = model(input_ids=ids).logits
    entropy, top1, mask = _reference_token_metrics(logits.detach(), labels)
    install_ual_forward(model)
    params = [p for p in model.parameters() if p.requires_grad]
    n = torch.tensor(11)
    out = ual_forward(model, ids, labels, UALRequest(smoothing=smoothing), num_items=n, fused_lm_head=True)
    assert out.log_probs.shape == labels[:, 1:].shape and out.log_probs.dtype == torch.float32
    trl_loss = -out.log_probs.sum() / n  # what SFTTrainer.compute_loss does with them
    ref = reference(logits, labels, smoothing, int(n))
    torch.testing.assert_close(trl_loss, ref, rtol=1e-5, atol=1e-6)
    assert_same_grads(trl_loss, ref, params)
    assert not out.log_probs.detach()[~mask].any()
    torch.testing.assert_close(out.entropy, entropy, rtol=1e-5, atol=1e-6)
    assert torch.equal(out.is_top1, top1) and torch.equal(out.label_mask, mask)


def test_trl_fused_contract_refuses_a_reduction_that_weights_tokens_differently():
    model = tiny_llama()
    ids, labels, smoothing = batch()
    install_ual_forward(model)
    out = ual_forward(model, ids, labels, UALRequest(smoothing=smoothing), fused_lm_head=True)
    weights = torch.linspace(0.5, 1.5, out.log_probs.numel()).reshape(out.log_probs.shape)  # e.g. DFT's
    with pytest.raises(RuntimeError, match="different weights per token"):
        (-(out.log_probs * weights).sum()).backward()


def test_a_logits_only_forward_under_a_request_is_the_models_own():
    """TRL >= 1.16 builds the logits for its metrics with a second forward without labels: no loss, full logits."""
    model = tiny_llama()
    ids, labels, smoothing = batch()
    want = model(input_ids=ids).logits
    install_ual_forward(model)
    request = UALRequest(smoothing=smoothing)
    with ual_request(request):
        got = model(input_ids=ids)
    assert got.loss is None and not request.stats
    torch.testing.assert_close(got.logits, want)


@pytest.mark.parametrize("fused", [False, True], ids=["chunked_nll", "fused"])
def test_trainer_fields_survive_a_rebuild_of_the_output_from_its_keys(fused):
    """accelerate's convert_outputs_to_fp32 (bf16) and pytree flattening (FSDP, compile) rebuild the output from its
    keys: TRL's fields must be declared, not attributes, and the output stays an instance of the model's own type."""
    from torch.utils import _pytree

    model = tiny_llama()
    ids, labels, smoothing = batch()
    install_ual_forward(model)
    kwargs = {"fused_lm_head": True} if fused else {}
    request = UALRequest(smoothing=smoothing, entropy=True, trl_counts=not fused)
    out = ual_forward(model, ids, labels, request, num_items=7, **kwargs)
    names = ["loss"] + (["log_probs", "entropy", "is_top1", "label_mask"] if fused else
                        ["num_valid_tokens", "num_correct_tokens", "entropy_sum"])
    assert isinstance(out, transformers.modeling_outputs.CausalLMOutputWithPast)
    rebuilt = type(out)({k: v for k, v in out.items()})  # what accelerate's recursively_apply does
    leaves, spec = _pytree.tree_flatten(out)
    unflattened = _pytree.tree_unflatten(leaves, spec)
    for copy in (rebuilt, unflattened):
        for name in names:
            assert torch.equal(getattr(copy, name), getattr(out, name)), name
    valid = out.label_mask.sum() if fused else out.num_valid_tokens
    assert int(valid) == int((labels[:, 1:] != -100).sum())


def test_prompt_tuning_virtual_tokens_get_no_smoothing_and_the_rest_their_own():
    """PEFT's prompt tuning prepends virtual tokens (labelled -100) inside its forward: the batch's smoothing, laid out
    like the caller's labels, must land on the same real tokens, checked against torch's loss on the model's logits."""
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(tiny_llama(), peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    ids, labels, smoothing = batch()
    with torch.no_grad():
        logits = model(input_ids=ids).logits  # [3, 4 + 10, V]: the virtual tokens come first
    padded_labels = torch.cat([torch.full((3, 4), -100), labels], dim=1)
    padded_smoothing = torch.cat([torch.full((3, 4), 0.9), smoothing], dim=1)  # any value: no label there
    install_ual_forward(model)
    out = ual_forward(model, ids, labels, UALRequest(smoothing=smoothing), num_items=7)
    assert out.loss.item() == pytest.approx(reference(logits, padded_labels, padded_smoothing, 7).item(), rel=1e-5)


def test_smoothing_that_fits_no_label_layout_is_refused():
    model = tiny_llama()
    ids, labels, smoothing = batch()
    install_ual_forward(model)
    labels = torch.cat([torch.full((3, 2), 5), labels], dim=1)  # two extra columns, but real labels
    ids = torch.cat([ids[:, :2], ids], dim=1)
    with pytest.raises(ValueError, match="not a prefix of ignored"):
        ual_forward(model, ids, labels, UALRequest(smoothing=smoothing))
