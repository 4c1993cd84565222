"""The UAL forward under real sharding engines, run by tests under torchrun (2 CPU processes, gloo).

usage: sharded_loss.py OUT_JSON ENGINE [ENGINE ...]
ENGINE: fsdp2 | fsdp2_head_unit | fsdp2_tail_group | fsdp2_accelerate | fsdp2_bf16 | fsdp1_orig | fsdp1_flat | zero3

For each engine and model variant (plain, tied, lora_gc, modules_to_save) and mode (column, ppl),
every rank computes a one-process reference on the whole batch with materialised logits, then
runs its half of the batch through the sharded model (loss x world size, since engines average
gradients), and rank 0 writes the largest relative error of the loss and of every parameter's
gradient.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import traceback
from types import SimpleNamespace

import torch
import torch.distributed as dist
import torch.nn.functional as F
import transformers

from ual_plugin.causal_lm import UALRequest, install_ual_forward, ual_request
from ual_plugin.ppl import PPLSmoother

V, B, T = 61, 4, 12
VARIANTS = ("plain", "tied", "lora_gc", "modules_to_save")


def build(variant: str, reentrant: bool = False) -> torch.nn.Module:
    cfg = transformers.LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   tie_word_embeddings=variant == "tied")
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg)
    if variant in ("lora_gc", "modules_to_save"):
        import peft

        lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                               modules_to_save=["lm_head"] if variant == "modules_to_save" else None)
        model = peft.get_peft_model(model, lora)
        for name, p in model.named_parameters():  # non-zero B so the LoRA path carries gradient everywhere
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.05)
        if variant == "lora_gc":
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
            model.enable_input_require_grads()
    return model


def data():
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(0, V, (B, T), generator=g)
    labels = ids.clone()
    labels[:, :4] = -100
    labels[1, 9:] = -100
    smoothing = (torch.rand(B, T, generator=g) * 0.5 + 0.0123456).float()  # not representable in bf16
    return ids, labels, smoothing


def reference(model, ids, labels, smoothing):
    logits = model(input_ids=ids).logits[:, :-1].float()
    t, e = labels[:, 1:], smoothing[:, 1:]
    total = sum(F.cross_entropy(logits[r, c : c + 1], t[r, c : c + 1], label_smoothing=float(e[r, c]),
                                reduction="sum") for r, c in (t != -100).nonzero().tolist())
    return total / int((t != -100).sum())


def ppl_smoothing(model, ids, labels, alpha=0.3):
    """The per-token smoothing PPL mode gives on the whole batch (fresh running mean)."""
    with torch.no_grad():
        logits = model(input_ids=ids).logits[:, :-1]
        t = labels[:, 1:]
        mask = t != -100
        nll = F.cross_entropy(logits.reshape(-1, V), t.reshape(-1), reduction="none").reshape(t.shape)
        ppl = torch.exp((nll * mask).sum(1) / mask.sum(1))
        return (alpha * ppl / ppl.mean()).clamp(max=0.99)[:, None].expand(B, T).contiguous()


def clean(name: str) -> str:
    for junk in ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "module."):
        name = name.replace(junk, "")
    return name


def shard(engine: str, model: torch.nn.Module, rank: int):
    """(sharded model, backward(loss), {name: full gradient}) for one engine."""
    layer_cls = transformers.models.llama.modeling_llama.LlamaDecoderLayer
    if engine.startswith("fsdp2"):
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        if engine == "fsdp2_accelerate":
            from accelerate.utils import FullyShardedDataParallelPlugin
            from accelerate.utils.fsdp_utils import fsdp2_prepare_model

            plugin = FullyShardedDataParallelPlugin(
                fsdp_version=2, auto_wrap_policy="transformer_based_wrap",
                transformer_cls_names_to_wrap=["LlamaDecoderLayer"], reshard_after_forward=True,
                cpu_ram_efficient_loading=False)
            accelerator = SimpleNamespace(state=SimpleNamespace(fsdp_plugin=plugin), device=torch.device("cpu"),
                                          mixed_precision="no", is_main_process=rank == 0)
            model = fsdp2_prepare_model(accelerator, model)
        else:
            mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16) if engine == "fsdp2_bf16" else MixedPrecisionPolicy()
            for module in model.modules():
                if isinstance(module, layer_cls):
                    fully_shard(module, reshard_after_forward=True, mp_policy=mp)
            if engine == "fsdp2_head_unit":
                fully_shard(model.get_output_embeddings(), reshard_after_forward=True, mp_policy=mp)
            if engine == "fsdp2_tail_group":  # final norm and head as one unit, as accelerate >= 1.16 groups them
                norm = next(m for n, m in model.named_modules() if n.endswith("model.norm"))
                fully_shard([norm, model.get_output_embeddings()], reshard_after_forward=False, mp_policy=mp)
            fully_shard(model, reshard_after_forward=True, mp_policy=mp)

        def grads():
            return {clean(n): p.grad.full_tensor() for n, p in model.named_parameters() if p.grad is not None}

        return model, lambda loss: loss.backward(), grads
    if engine.startswith("fsdp1"):
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        from torch.distributed.fsdp.wrap import ModuleWrapPolicy

        policy = ModuleWrapPolicy({layer_cls})
        if hasattr(model, "peft_config"):
            from peft.utils.other import fsdp_auto_wrap_policy

            policy = fsdp_auto_wrap_policy(model)
        orig = engine == "fsdp1_orig"
        wrapped = FSDP(model, auto_wrap_policy=policy, use_orig_params=orig, device_id=torch.device("cpu"))

        # SGD's first momentum buffer is the gradient; FSDP's optimizer state dict un-flattens and gathers it
        optim = torch.optim.SGD([p for p in wrapped.parameters() if p.requires_grad], lr=0.0, momentum=0.5)

        def grads():
            optim.step()
            state = FSDP.optim_state_dict(wrapped, optim)["state"]
            return {clean(n): s["momentum_buffer"] for n, s in state.items()}

        return wrapped, lambda loss: loss.backward(), grads
    if engine == "zero3":
        import deepspeed
        from deepspeed.utils import safe_get_full_grad

        config = {"train_micro_batch_size_per_gpu": B // 2, "gradient_accumulation_steps": 1,
                  "zero_optimization": {"stage": 3}, "zero_allow_untested_optimizer": True, "optimizer": {"type": "SGD", "params": {"lr": 0.0}}}
        params = [p for p in model.parameters() if p.requires_grad]
        engine_, *_ = deepspeed.initialize(model=model, model_parameters=params, config=config)

        def grads():
            return {clean(n): safe_get_full_grad(p).clone() for n, p in engine_.module.named_parameters()
                    if p.requires_grad}

        return engine_, engine_.backward, grads
    raise ValueError(engine)


def run_case(engine: str, variant: str, mode: str, rank: int, world: int) -> dict:
    ids, labels, smoothing = data()
    # ZeRO-3 frees parameters between forward and recompute, which non-reentrant checkpointing rejects
    model = build(variant, reentrant=engine == "zero3")
    ref_model = copy.deepcopy(model)
    if mode == "ppl":
        smoothing = ppl_smoothing(ref_model, ids, labels)
    ref = reference(ref_model, ids, labels, smoothing)
    ref.backward()
    ref_grads = {clean(n): p.grad for n, p in ref_model.named_parameters() if p.grad is not None}

    install_ual_forward(model)
    sharded, backward, full_grads = shard(engine, model, rank)
    rows = slice(rank * B // world, (rank + 1) * B // world)
    num_items = torch.tensor(int((labels[:, 1:] != -100).sum()))
    request = UALRequest(smoothing=None if mode == "ppl" else smoothing[rows],
                         ppl=PPLSmoother(alpha=0.3) if mode == "ppl" else None)
    with ual_request(request):
        out = sharded(input_ids=ids[rows], labels=labels[rows], num_items_in_batch=num_items)
    loss = out.loss * world  # every engine averages gradients over ranks
    backward(loss)
    got = full_grads()
    mean_loss = loss.detach().clone()
    dist.all_reduce(mean_loss)
    result = {"loss": abs(float(mean_loss / world - ref.detach())) / abs(float(ref))}
    missing = sorted(set(ref_grads) - set(got))
    if missing:
        raise AssertionError(f"no gradient for {missing[:4]}")
    result["grad"] = max(float((got[n].float() - g).norm() / g.norm().clamp(min=1e-30)) for n, g in ref_grads.items())
    expected = float((smoothing[rows][:, 1:].double() * (labels[rows][:, 1:] != -100)).sum())
    result["smoothing_sum"] = abs(float(request.stats["smoothing_sum"]) - expected) / expected
    return result


def main() -> None:
    out_file, engines = sys.argv[1], sys.argv[2:]
    backend_init = "deepspeed" if engines == ["zero3"] else "torch"
    if backend_init == "deepspeed":
        import deepspeed

        deepspeed.init_distributed(dist_backend="gloo")
    else:
        dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    results: dict[str, dict] = {}
    for engine in engines:
        for variant in VARIANTS:
            if engine in ("fsdp2_head_unit", "fsdp2_tail_group") and variant == "tied":
                continue  # a tied head shares its weight with the embedding, so it cannot be its own FSDP2 unit
            if engine == "zero3" and variant == "modules_to_save":
                continue  # DeepSpeed 0.18's ZeRO-3 hooks fail on PEFT's modules_to_save wrapper, with the model's own loss too
            for mode in ("column", "ppl"):
                if engine == "fsdp2_bf16" and (variant != "plain" or mode != "column"):
                    continue
                key = f"{engine}/{variant}/{mode}"
                try:
                    results[key] = run_case(engine, variant, mode, rank, world)
                except Exception:  # reported per case, so one failure does not hide the others
                    results[key] = {"error": traceback.format_exc()[-1500:]}
    if rank == 0:
        with open(out_file, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)
    dist.barrier()
    dist.destroy_process_group()


def exit_now() -> None:
    """Leave without interpreter teardown: engine objects still holding gloo's threads were seen to abort a
    finished rank during teardown ("terminate called without an active exception"), about once in a few runs."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
    exit_now()
