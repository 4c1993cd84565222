"""GPU verification of ``linear_smoothed_cross_entropy`` against float32/float64 references: the checks
that the Triton CPU interpreter cannot make. The first stage of ``run_gpu_suite.sh`` (about a minute on
one H100/H200); ``kernel="auto"`` may pick triton on CUDA only after a run where every check passes.

  fp32_head_autocast  float32 head (QLoRA keeps lm_head in fp32) under bf16 autocast: every chunk GEMM
                      runs in bf16, loss and gradients match a float32 reference
  vocab_128257        Llama-3's vocabulary plus one added token (unaligned rows), both kernels
  other_device        tensors on cuda:1 while cuda:0 is current: same results as on cuda:0 (needs 2 GPUs)
  configs_64k         65536 rows through every Triton configuration: losses bit-identical with and
                      without the in-place gradient and over repeated runs (no race), close to the
                      float32 reference; time per configuration
  scaled_backward     (sum / 7000).backward() in bf16: no bias from the scale (slope vs the unscaled call)
  accumulation        weight gradient over 16 chunks: float32 accumulated inside the GEMM (the default where
                      torch offers it), float32 added chunk by chunk (the CPU path), bf16; error vs float64, time
  accumulation_at_scale  the default path at both loss-bench shapes (8192x4096x128256, 16384x4096x32000):
                      loss and gradients against float64
  sync_free_step      torch.cuda.set_sync_debug_mode("error") around one training step (forward, backward,
                      optimizer) of a model whose loss is linear_smoothed_cross_entropy, both kernels

    python benchmarks/verify_gpu.py [--write]          # CUDA; --write puts the table in RESULTS.md
    TRITON_INTERPRET=1 python benchmarks/verify_gpu.py --smoke   # tiny shapes on CPU: the script itself
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import statistics
import sys
import time
import traceback

import torch
from results_md import provenance, write_section
from torch.utils._python_dispatch import TorchDispatchMode

import ual_plugin.loss as loss_ops
from ual_plugin import linear_smoothed_cross_entropy
from ual_plugin.loss import gemm_accumulation, smoothed_cross_entropy

KERNELS = ("torch", "triton")


class Skip(Exception):
    """A check that cannot run here (e.g. one GPU only)."""


class GemmDtypes(TorchDispatchMode):
    """Records the dtypes of the matrix operands of every GEMM dispatched inside it."""

    _OPERANDS = {"mm": (0, 1), "addmm": (1, 2), "addmm_": (1, 2)}

    def __init__(self):
        super().__init__()
        self.seen: set[tuple[torch.dtype, torch.dtype]] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        idx = self._OPERANDS.get(func.overloadpacket.__name__)
        if idx:
            self.seen.add(tuple(args[i].dtype for i in idx))
        return func(*args, **(kwargs or {}))


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def inputs(n: int, h: int, v: int, device: str, dtype: torch.dtype, seed: int = 0, ignore_frac: float = 0.25):
    g = torch.Generator().manual_seed(seed)
    hidden = (torch.randn(n, h, generator=g) * 0.5).to(device, dtype).requires_grad_()
    weight = (torch.randn(v, h, generator=g) * (1 / h**0.5)).to(device, dtype).requires_grad_()
    targets = torch.randint(0, v, (n,), generator=g)
    targets[: int(n * ignore_frac)] = -100
    eps = torch.rand(n, generator=g) * 0.3
    return hidden, weight, targets.to(device), eps.to(device)


def reference(hidden, weight, targets, eps, dtype=torch.float32, reduction="mean", chunk=4096):
    """Loss and (hidden, weight) gradients on materialised logits in ``dtype``, chunk by chunk."""
    h = hidden.detach().to(dtype)
    w = weight.detach().to(dtype)
    n_valid = (targets != -100).sum().clamp(min=1)
    loss = torch.zeros((), dtype=dtype, device=h.device)
    gh = torch.zeros_like(h)
    gw = torch.zeros_like(w)
    for s in range(0, h.shape[0], chunk):
        hc = h[s : s + chunk].clone().requires_grad_()
        wc = w.clone().requires_grad_()
        part = smoothed_cross_entropy(hc @ wc.t(), targets[s : s + chunk], eps[s : s + chunk], reduction="sum")
        if reduction == "mean":
            part = part / n_valid
        a, b = torch.autograd.grad(part, [hc, wc])
        loss += part.detach().to(dtype)
        gh[s : s + chunk] = a
        gw += b
    return loss, gh, gw


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp(min=1e-30))


def slope(got: torch.Tensor, ref: torch.Tensor) -> float:
    got, ref = got.double().flatten(), ref.double().flatten()
    return float((got * ref).sum() / (ref * ref).sum())


def timed(fn, device: str, reps: int = 3) -> float:
    fn()
    times = []
    for _ in range(reps):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


# ------------------------------------------------------------------------------------------------ checks


def check_fp32_head_autocast(a) -> str:
    n, h, v = a.shape(4096, 1024, 32000)
    notes = []
    for kernel in KERNELS:
        hidden, weight, targets, eps = inputs(n, h, v, a.device, torch.float32, seed=1)
        hidden = hidden.detach().bfloat16().requires_grad_()  # bf16 activations, fp32 head
        with GemmDtypes() as gemms, torch.autocast(a.device_type, dtype=torch.bfloat16):
            out = linear_smoothed_cross_entropy(hidden, weight, targets, eps, kernel=kernel)
            gh, gw = torch.autograd.grad(out, [hidden, weight])
        assert gemms.seen == {(torch.bfloat16, torch.bfloat16)}, f"{kernel}: GEMM operand dtypes {gemms.seen}"
        assert gw.dtype == torch.float32 and gh.dtype == torch.bfloat16
        ref, rh, rw = reference(hidden, weight, targets, eps)
        assert abs(float(out) - float(ref)) < 5e-3 * abs(float(ref)), (kernel, float(out), float(ref))
        assert rel(gh, rh) < 2e-2 and rel(gw, rw) < 2e-2, (kernel, rel(gh, rh), rel(gw, rw))

        def step(kernel=kernel, hidden=hidden, weight=weight, targets=targets, eps=eps):
            with torch.autocast(a.device_type, dtype=torch.bfloat16):
                torch.autograd.grad(linear_smoothed_cross_entropy(hidden, weight, targets, eps, kernel=kernel),
                                    [hidden, weight])

        notes.append(f"{kernel}: rel. err. grad h {rel(gh, rh):.1e}, grad W {rel(gw, rw):.1e}, "
                     f"{1000 * timed(step, a.device):.1f} ms")
    return "; ".join(notes)


def check_vocab_128257(a) -> str:
    n, h, v = a.shape(2048, 1024, 128257)
    notes = []
    for kernel in KERNELS:
        hidden, weight, targets, eps = inputs(n, h, v, a.device, torch.bfloat16, seed=2)
        targets[-1] = v - 1  # the added token itself
        out = linear_smoothed_cross_entropy(hidden, weight, targets, eps, kernel=kernel)
        gh, gw = torch.autograd.grad(out, [hidden, weight])
        ref, rh, rw = reference(hidden, weight, targets, eps)
        assert abs(float(out) - float(ref)) < 5e-3 * abs(float(ref)), (kernel, float(out), float(ref))
        assert rel(gh, rh) < 3e-2 and rel(gw, rw) < 3e-2, (kernel, rel(gh, rh), rel(gw, rw))
        notes.append(f"{kernel}: loss rel. err. {abs(float(out) - float(ref)) / abs(float(ref)):.1e}, "
                     f"grad h {rel(gh, rh):.1e}, grad W {rel(gw, rw):.1e}")
    return "; ".join(notes)


def check_other_device(a) -> str:
    if not a.device.startswith("cuda") or torch.cuda.device_count() < 2:
        raise Skip("needs two GPUs")
    n, h, v = a.shape(2048, 1024, 32001)
    notes = []
    for kernel in KERNELS:
        results = []
        for dev in ("cuda:0", "cuda:1"):
            torch.cuda.set_device(0)  # cuda:0 stays current: the head lives elsewhere (device_map="auto")
            hidden, weight, targets, eps = inputs(n, h, v, dev, torch.bfloat16, seed=3)
            stats: dict = {}
            out = linear_smoothed_cross_entropy(hidden, weight, targets, eps, kernel=kernel, stats=stats)
            grads = torch.autograd.grad(out, [hidden, weight])
            torch.cuda.synchronize(dev)
            results.append([t.detach().to("cuda:0") for t in (out, *grads, stats["n_correct"])])
        for x, y in zip(*results, strict=True):
            torch.testing.assert_close(x, y, rtol=0, atol=0)
        notes.append(f"{kernel}: cuda:1 equals cuda:0 bit for bit")
    return "; ".join(notes)


def check_configs_64k(a) -> str:
    from ual_plugin.loss_triton import CONFIGS, kernel_config, logits_buffer, smoothed_ce_rows_

    rows, _, v = a.shape(65536, 1, 32001)
    g = torch.Generator(device="cpu").manual_seed(4)
    logits = logits_buffer(rows, v, torch.bfloat16, torch.device(a.device))
    for s in range(0, rows, 8192):
        logits[s : s + 8192] = (torch.randn(min(8192, rows - s), v, generator=g) * 3).to(a.device, torch.bfloat16)
    targets = torch.randint(0, v, (rows,), generator=g).to(a.device)
    eps = (torch.rand(rows, generator=g) * 0.3).to(a.device)
    ones = torch.ones(rows, device=a.device)
    ref = torch.cat([smoothed_cross_entropy(logits[s : s + 8192].float(), targets[s : s + 8192],
                                            eps[s : s + 8192], reduction="none") for s in range(0, rows, 8192)])
    work = logits_buffer(rows, v, torch.bfloat16, torch.device(a.device))
    notes = []
    for block, warps in CONFIGS:
        plain, top1 = smoothed_ce_rows_(logits, targets, eps, None, block_v=block, num_warps=warps)
        assert torch.allclose(plain, ref, rtol=1e-4, atol=1e-4), (block, warps, float((plain - ref).abs().max()))
        first = None
        for _ in range(3):
            work.copy_(logits)
            with_grad, top1_g = smoothed_ce_rows_(work, targets, eps, ones, block_v=block, num_warps=warps)
            assert torch.equal(with_grad, plain) and torch.equal(top1_g, top1), (block, warps, "grad changes losses")
            if first is None:
                first = work.clone()
            assert torch.equal(work, first), (block, warps, "gradient differs between runs")

        def run(block=block, warps=warps):
            work.copy_(logits)
            smoothed_ce_rows_(work, targets, eps, ones, block_v=block, num_warps=warps)

        copy_time = timed(lambda: work.copy_(logits), a.device)
        mark = " (table)" if (block, warps) == kernel_config(v) else ""
        notes.append(f"{block}x{warps}{mark} {1000 * (timed(run, a.device) - copy_time):.2f} ms")
    del first
    # the gradient the kernel wrote, against autograd on the same bf16 logits in float32 (first 4096 rows)
    k = min(4096, rows)
    z = logits[:k].float().requires_grad_()
    (want,) = torch.autograd.grad(smoothed_cross_entropy(z, targets[:k], eps[:k], reduction="sum"), z)
    work.copy_(logits)
    smoothed_ce_rows_(work, targets, eps, ones)
    assert rel(work[:k], want) < 1e-2, rel(work[:k], want)
    return f"V={v}, {rows} rows, fwd+grad per configuration: " + ", ".join(notes)


def check_scaled_backward(a) -> str:
    n, h, v = a.shape(8192, 2048, 32000)
    notes = []
    for kernel in KERNELS:
        hidden, weight, targets, eps = inputs(n, h, v, a.device, torch.bfloat16, seed=5)
        grads = {}
        for denom in (1, 7000):
            total = linear_smoothed_cross_entropy(hidden, weight, targets, eps, reduction="sum", kernel=kernel)
            grads[denom] = torch.autograd.grad(total / denom, [hidden, weight])
        _, rh, rw = reference(hidden, weight, targets, eps, reduction="sum")
        for name, scaled, unscaled, ref in zip("hW", grads[7000], grads[1], (rh, rw), strict=True):
            bias = slope(scaled, unscaled.double() / 7000) - 1
            assert abs(bias) < 2e-4, (kernel, name, bias)
            notes.append(f"{kernel} grad {name}: scale bias {bias:+.1e}, slope vs fp32 {slope(scaled, ref / 7000):.5f}")
    return "; ".join(notes)


@contextlib.contextmanager
def chunked_accumulation():
    """Force the chunk-by-chunk float32 accumulation (the path where torch has no wider-output GEMM)."""
    original = loss_ops._accumulate_weight_grad_
    loss_ops._accumulate_weight_grad_ = functools.partial(original, in_gemm=False)
    try:
        yield
    finally:
        loss_ops._accumulate_weight_grad_ = original


def check_accumulation(a) -> str:
    n, h, v = a.shape(8192, 1024, 32000)
    hidden, weight, targets, eps = inputs(n, h, v, a.device, torch.bfloat16, seed=6, ignore_frac=0.0)
    _, _, rw = reference(hidden, weight, targets, eps, dtype=torch.float64, chunk=1024)
    floor = rel(rw.bfloat16(), rw)
    method = gemm_accumulation(a.device_type, torch.float32, torch.bfloat16)
    notes = [f"bf16 rounding floor {floor:.1e}; float32 accumulation inside the GEMM: {method or 'not offered here'}"]
    paths = [("fp32 chunked", torch.float32, chunked_accumulation), ("bf16", torch.bfloat16, contextlib.nullcontext)]
    if method:
        paths.insert(0, ("fp32 in GEMM", torch.float32, contextlib.nullcontext))
    errors = {}
    for kernel in KERNELS:
        for label, accum, context in paths:
            def step(kernel=kernel, accum=accum, context=context):
                with context():
                    out = linear_smoothed_cross_entropy(hidden, weight, targets, eps, kernel=kernel, accum_dtype=accum,
                                                        chunk_size=n // 16)
                    return torch.autograd.grad(out, [weight])[0]

            errors[kernel, label] = rel(step(), rw)
            notes.append(f"{kernel} {label}: error {errors[kernel, label]:.1e}, {1000 * timed(step, a.device):.1f} ms")
        assert errors[kernel, "fp32 chunked"] < 3 * floor, (kernel, errors, floor)
        if method:  # the products are never rounded to bf16: at least as close as adding them chunk by chunk
            assert errors[kernel, "fp32 in GEMM"] <= 1.02 * errors[kernel, "fp32 chunked"], (kernel, errors)
    return "; ".join(notes)


def check_accumulation_at_scale(a) -> str:
    notes = []
    for n, h, v in ((8192, 4096, 128256), (16384, 4096, 32000)):
        n, h, v = a.shape(n, h, v)
        hidden, weight, targets, eps = inputs(n, h, v, a.device, torch.bfloat16, seed=8, ignore_frac=0.0)
        out = linear_smoothed_cross_entropy(hidden, weight, targets, eps)
        gh, gw = torch.autograd.grad(out, [hidden, weight])
        ref, rh, rw = reference(hidden, weight, targets, eps, dtype=torch.float64, chunk=1024)
        loss_err, floor = abs(float(out) - float(ref)) / abs(float(ref)), rel(rw.bfloat16(), rw)
        err_h, err_w = rel(gh, rh), rel(gw, rw)
        assert loss_err < 5e-3 and err_h < 3e-2 and err_w < 3 * floor, (n, v, loss_err, err_h, err_w, floor)
        notes.append(f"{n}x{h}x{v}: loss rel. err. {loss_err:.1e}, grad h {err_h:.1e}, grad W {err_w:.1e} "
                     f"(bf16 floor {floor:.1e})")
        del hidden, weight, gh, gw, rh, rw
    return "; ".join(notes)


def check_sync_free_step(a) -> str:
    n, h, v = a.shape(4096, 1024, 32000)
    notes = []
    for kernel in KERNELS:
        torch.manual_seed(7)
        body = torch.nn.Linear(h, h).to(a.device, torch.bfloat16)
        head = torch.nn.Linear(h, v, bias=False).to(a.device, torch.bfloat16)
        opt = torch.optim.SGD([*body.parameters(), *head.parameters()], lr=1e-3, momentum=0.9, foreach=True)
        x = torch.randn(n, h, device=a.device, dtype=torch.bfloat16)
        labels = torch.randint(0, v, (n,), device=a.device)
        labels[: n // 4] = -100
        smoothing = torch.rand(n, device=a.device) * 0.3

        def step(kernel=kernel, body=body, head=head, opt=opt, x=x, labels=labels, smoothing=smoothing):
            stats: dict = {}
            total = linear_smoothed_cross_entropy(torch.tanh(body(x)), head.weight, labels, smoothing,
                                                  kernel=kernel, reduction="sum", stats=stats)
            loss = total / stats["n_tokens"]
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return loss.detach()

        step()  # warm-up: compilation, allocator, optimizer state
        sync(a.device)
        on_cuda = a.device.startswith("cuda")
        if on_cuda:
            torch.cuda.set_sync_debug_mode("error")
        try:
            loss = step()
        finally:
            if on_cuda:
                torch.cuda.set_sync_debug_mode("default")
        assert torch.isfinite(loss), kernel
        notes.append(f"{kernel}: no synchronising call" if on_cuda else f"{kernel}: ran (no sync check off CUDA)")
    return "; ".join(notes)


CHECKS = {
    "fp32_head_autocast": check_fp32_head_autocast,
    "vocab_128257": check_vocab_128257,
    "other_device": check_other_device,
    "configs_64k": check_configs_64k,
    "scaled_backward": check_scaled_backward,
    "accumulation": check_accumulation,
    "accumulation_at_scale": check_accumulation_at_scale,
    "sync_free_step": check_sync_free_step,
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny shapes (runs on CPU with TRITON_INTERPRET=1)")
    p.add_argument("--only", help="comma-separated check names")
    p.add_argument("--write", action="store_true", help="write the result table into benchmarks/RESULTS.md")
    a = p.parse_args(argv)
    a.device = "cuda" if torch.cuda.is_available() else "cpu"
    a.device_type = a.device.split(":")[0]
    if a.device == "cpu" and not a.smoke:
        p.error("no CUDA device: the verify stage checks the GPU path (use --smoke to exercise the script on CPU)")
    a.shape = (lambda n, h, v: (min(n, 64), min(h, 16), min(v, 4099))) if a.smoke else (lambda *s: s)
    names = a.only.split(",") if a.only else list(CHECKS)
    lines = ["| check | result | details |", "|---|---|---|"]
    failed = 0
    for name in names:
        start = time.perf_counter()
        try:
            detail, status = CHECKS[name](a), "PASS"
        except Skip as skip:
            detail, status = str(skip), "SKIP"
        except Exception as exc:  # report every check, then fail the stage
            failed += 1
            detail, status = f"{type(exc).__name__}: {exc}".replace("\n", " ")[:600], "FAIL"
            traceback.print_exc()
        lines.append(f"| {name} | {status} | {detail} ({time.perf_counter() - start:.1f} s) |")
        print(lines[-1], flush=True)
    body = provenance(a.device) + "\n" + "\n".join(lines) + "\n\n" + (
        "**All checks passed.**" if not failed else f"**{failed} check(s) failed.**")
    print(body)
    if a.write and not a.smoke:
        write_section("gpu-verify", body)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
