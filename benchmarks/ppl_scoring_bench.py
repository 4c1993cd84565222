"""``--scorer ppl`` per batch: the previous full-logits path vs the chunked head, rows/s and peak memory.

    .venv/bin/python benchmarks/ppl_scoring_bench.py            # both vocabularies, prints a markdown table

A tiny random Llama (hidden 64, 2 layers) with a 32k or 128k vocabulary, batches of 8 rows of 256
tokens on CPU. Rows/s: the two variants interleaved in one process, median of the per-pair ratios.
Peak memory: each variant in a fresh process (``MALLOC_MMAP_THRESHOLD_``), VmHWM - VmRSS around one batch.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

VOCABS = (32_000, 128_256)
BATCH, LENGTH, PAIRS = 8, 256, 5


def _model(vocab: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=LENGTH)
    return LlamaForCausalLM(cfg).eval()


def _batch(vocab: int):
    import random

    from ual_plugin.scoring.ppl_scorer import Encoded

    rng = random.Random(0)
    return [Encoded([rng.randrange(vocab) for _ in range(LENGTH)], [t >= LENGTH // 2 for t in range(LENGTH)])
            for _ in range(BATCH)]


def logits_perplexities(model, batch, pad_id: int) -> list[float]:
    """The scorer before the chunked head: the model's full [B, T, V] logits, then the NLL per sample."""
    import torch

    from ual_plugin.loss import token_nll_and_margin
    from ual_plugin.ppl import per_sample_ppl

    width = max(len(e.ids) for e in batch)
    ids = torch.tensor([e.ids + [pad_id] * (width - len(e.ids)) for e in batch])
    attn = torch.tensor([[1] * len(e.ids) + [0] * (width - len(e.ids)) for e in batch])
    nlls, segments, masks = [], [], []
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=attn).logits
        for b, e in enumerate(batch):
            targets = torch.tensor([t if keep else -100 for t, keep in zip(e.ids[1:], e.targets[1:], strict=True)])
            nll, _, valid = token_nll_and_margin(logits[b, : len(e.ids) - 1], targets)
            nlls.append(nll)
            masks.append(valid)
            segments.append(torch.full_like(targets, b))
        ppl, _ = per_sample_ppl(torch.cat(nlls), torch.cat(segments), torch.cat(masks))
    return [float(x) for x in ppl.double()]


def _variant(name: str):
    from ual_plugin.scoring.ppl_scorer import response_perplexities

    return logits_perplexities if name == "logits" else response_perplexities


def _peak(name: str, vocab: int) -> None:
    """In a fresh process: peak extra resident memory (MiB) of one batch, printed as JSON."""
    model, batch, fn = _model(vocab), _batch(vocab), _variant(name)
    fn(model, batch, 0)  # warm-up
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")

    def status(key: str) -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(key))

    rss = status("VmRSS:")
    fn(model, batch, 0)
    print(json.dumps({"peak_mib": (status("VmHWM:") - rss) / 1024}))


def _speed(vocab: int) -> tuple[float, float, float]:
    """(rows/s logits, rows/s chunked, max relative difference of the perplexities)."""
    model, batch = _model(vocab), _batch(vocab)
    a, b = _variant("logits"), _variant("chunked")
    ref, got = a(model, batch, 0), b(model, batch, 0)
    diff = max(abs(x - y) / x for x, y in zip(ref, got, strict=True))
    times: dict[str, list[float]] = {"logits": [], "chunked": []}
    for _ in range(PAIRS):
        for name, fn in (("logits", a), ("chunked", b)):
            t0 = time.perf_counter()
            fn(model, batch, 0)
            times[name].append(time.perf_counter() - t0)
    ratio = statistics.median(c / lg for c, lg in zip(times["chunked"], times["logits"], strict=True))
    base = BATCH / statistics.median(times["logits"])
    return base, base / ratio, diff


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--peak":
        _peak(sys.argv[2], int(sys.argv[3]))
        return
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="1048576", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    print(f"batch {BATCH} x {LENGTH} tokens (half of them response tokens), hidden 64, 2 layers, CPU\n")
    print("| vocab | logits rows/s | chunked rows/s | speed ratio | logits peak MiB | chunked peak MiB | max rel. diff |")
    print("|---|---|---|---|---|---|---|")
    for vocab in VOCABS:
        peaks = {}
        for name in ("logits", "chunked"):
            out = subprocess.run([sys.executable, __file__, "--peak", name, str(vocab)], env=env, check=True,
                                 capture_output=True, text=True).stdout
            peaks[name] = json.loads(out.strip().splitlines()[-1])["peak_mib"]
        base, chunked, diff = _speed(vocab)
        print(f"| {vocab:,} | {base:.1f} | {chunked:.1f} | {chunked / base:.2f}x | {peaks['logits']:.0f} | "
              f"{peaks['chunked']:.0f} | {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
