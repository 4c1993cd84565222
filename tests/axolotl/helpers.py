"""Helpers for the Axolotl adapter tests: a tiny local Llama, small scored datasets, and a runner
that writes an Axolotl YAML and runs the real CLI in a subprocess (CPU, offline)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.ports import free_port
from ual_plugin.demo.axolotl_run import parse_metrics

REPO_ROOT = Path(__file__).resolve().parents[2]
PLUGIN = "ual_plugin.axolotl.UALPlugin"
CPU_SHIM = Path(__file__).with_name("cpu_shim")  # Axolotl on a machine without a GPU driver, see its sitecustomize

USERS = [
    "What is {a} plus {b}?",
    "Write a short poem about the sea, number {i}.",
    "Tell me a story about a dragon called id {i}.",
    "Convert {a} kilometers to meters.",
]
ANSWERS = [
    "The answer is {c}. id {i}",
    "The sea and the wind at night, waves of light. id {i}",
    "A dragon who learned to paint the sky at dawn. id {i}",
    "That is {m} meters. id {i}",
]


def score_of(i: int) -> float:
    """Scores symmetric around 60 in [45, 75]: every sample's smoothing lies within [0.75, 1.25] x alpha."""
    return 45.0 + (i * 7) % 31


def _texts(i: int) -> tuple[str, str]:
    k = i % 4
    a, b = i % 13 + 1, i % 7 + 2
    user = USERS[k].format(a=a, b=b, i=i)
    answer = (ANSWERS[k].format(c=a + b, m=a * 1000, i=i) + " ") * (1 + i % 3)
    return user, answer.strip()


def chat_rows(ids: range, score: bool = True) -> list[dict[str, Any]]:
    rows = []
    for i in ids:
        user, answer = _texts(i)
        row: dict[str, Any] = {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}
        if score:
            row["uncertainty"] = score_of(i)
        rows.append(row)
    return rows


def alpaca_rows(ids: range) -> list[dict[str, Any]]:
    rows = []
    for i in ids:
        user, answer = _texts(i)
        rows.append({"instruction": user, "input": "", "output": answer, "uncertainty": score_of(i)})
    return rows


def completion_rows(ids: range) -> list[dict[str, Any]]:
    rows = []
    for i in ids:
        user, answer = _texts(i)
        text = f"{user} {answer}" * (1 + (i % 2) * 3)  # every other row is long: split at a small sequence_len
        rows.append({"text": text, "uncertainty": score_of(i)})
    return rows


def write_jsonl(rows: list[dict[str, Any]], path: Path) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return path


def cli_env(tmp: Path) -> dict[str, str]:
    """The demo's offline environment, plus a per-test datasets cache, this checkout and the CPU shim on PYTHONPATH."""
    from ual_plugin.demo.axolotl_run import demo_env

    env = demo_env()
    env["HF_DATASETS_CACHE"] = str(tmp / "hf_datasets_cache")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), str(CPU_SHIM), env.get("PYTHONPATH", "")])
    return env


class Workspace:
    def __init__(self, root: Path):
        self.root = root
        self.model = root / "model"
        self.data = root / "data"

    def base_config(self, name: str, **overrides: Any) -> dict[str, Any]:
        """A CPU-friendly Axolotl config for the tiny model, UAL on, one chat_template dataset."""
        cfg: dict[str, Any] = {
            "base_model": str(self.model),
            "plugins": [PLUGIN],
            "ual": True,
            "ual_alpha": 0.1,
            "datasets": [{"path": str(self.data / "chat.jsonl"), "type": "chat_template", "ds_type": "json"}],
            "chat_template": "tokenizer_default",
            "dataset_prepared_path": str(self.root / "prepared" / name),
            "output_dir": str(self.root / "runs" / name),
            "sequence_len": 128,
            "micro_batch_size": 2,
            "gradient_accumulation_steps": 1,
            "max_steps": 3,
            "learning_rate": 1e-3,
            "optimizer": "adamw_torch",
            "lr_scheduler": "constant",
            "logging_steps": 1,
            "val_set_size": 0,
            "bf16": False,
            "fp16": False,
            "tf32": False,
            "attn_implementation": "sdpa",
            "lora_mlp_kernel": False,
            "lora_qkv_kernel": False,
            "lora_o_kernel": False,
            "lora_embedding_kernel": False,
            "save_strategy": "no",
            "dataset_num_proc": 1,
            "dataloader_num_workers": 0,
            "seed": 7,
        }
        cfg.update(overrides)
        return cfg

    def lora(self) -> dict[str, Any]:
        return {"adapter": "lora", "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "lora_target_linear": True}

    def write_config(self, cfg: dict[str, Any], name: str) -> Path:
        path = self.root / "configs" / f"{name}.yml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
        return path


def make_workspace(root: Path) -> Workspace:
    from ual_plugin.demo.tiny import build_tiny_llama

    ws = Workspace(root)
    ws.data.mkdir()
    write_jsonl(chat_rows(range(0, 48)), ws.data / "chat.jsonl")
    write_jsonl(chat_rows(range(100, 116)), ws.data / "chat2.jsonl")
    write_jsonl(chat_rows(range(200, 216), score=False), ws.data / "chat_noscore.jsonl")
    write_jsonl(alpaca_rows(range(300, 332)), ws.data / "alpaca.jsonl")
    write_jsonl(completion_rows(range(400, 416)), ws.data / "completion.jsonl")
    bad = chat_rows(range(500, 540))
    for j in (0, 7, 13):
        bad[j].pop("uncertainty")
    bad[21]["uncertainty"] = -3
    bad[22]["uncertainty"] = "high"
    write_jsonl(bad, ws.data / "chat_bad.jsonl")
    texts = [m["content"] for r in chat_rows(range(0, 48)) for m in r["messages"]]
    build_tiny_llama(ws.model, texts=texts)
    # a pre-tokenised dataset (input_ids / attention_mask / labels) plus the score column
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ws.model)
    pretok = []
    for i in range(600, 616):
        user, answer = _texts(i)
        prompt = tok(f"{user}\n", add_special_tokens=False)["input_ids"]
        reply = tok(f"{answer}<|im_end|>", add_special_tokens=False)["input_ids"]
        ids = prompt + reply
        pretok.append(
            {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": [-100] * len(prompt) + reply,
             "uncertainty": score_of(i)}
        )
    write_jsonl(pretok, ws.data / "pretok.jsonl")
    return ws




class RunResult:
    def __init__(self, proc: subprocess.CompletedProcess, config: Path, cfg: dict[str, Any]):
        self.returncode = proc.returncode
        self.output = proc.stdout
        self.config = config
        self.cfg = cfg
        self.metrics = parse_metrics(proc.stdout)

    @property
    def train_logs(self) -> list[dict[str, Any]]:
        return [m for m in self.metrics if "loss" in m]

    @property
    def eval_logs(self) -> list[dict[str, Any]]:
        return [m for m in self.metrics if "eval_loss" in m]

    def tail(self, n: int = 60) -> str:
        return "\n".join(self.output.splitlines()[-n:])


def run_cli(ws: Workspace, cfg: dict[str, Any], name: str, launcher: str = "axolotl",
            timeout: int = 420, extra_env: dict[str, str] | None = None) -> RunResult:
    """Write ``cfg`` and run it: ``axolotl train`` (the real CLI, accelerate launch underneath),
    ``python -m axolotl.cli.train`` ("module"), two DDP processes on CPU ("ddp2"), or ``axolotl train``
    ``python -m axolotl.cli.train`` with one Axolotl name removed first ("without:axolotl.module.name",
    see train_without.py)."""
    path = ws.write_config(cfg, name)
    if launcher == "axolotl":
        cmd = [os.path.join(os.path.dirname(sys.executable), "axolotl"), "train", str(path)]
    elif launcher == "module":
        cmd = [sys.executable, "-m", "axolotl.cli.train", str(path)]
    elif launcher == "ddp2":
        cmd = [
            os.path.join(os.path.dirname(sys.executable), "accelerate"), "launch", "--multi_gpu",
            "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(free_port()), "-m", "axolotl.cli.train", str(path),
        ]
    elif launcher.startswith("without:"):
        script = Path(__file__).with_name("train_without.py")
        cmd = [sys.executable, str(script), launcher.split(":", 1)[1], str(path)]
    else:
        raise ValueError(launcher)
    env = cli_env(ws.root)
    env.update(extra_env or {})
    proc = subprocess.run(
        cmd, cwd=ws.root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout
    )
    return RunResult(proc, path, cfg)


def weight_delta_rel(model_dir: Path, out_a: Path, out_b: Path) -> float:
    """||delta_a - delta_b|| / ||delta_a|| over all weights, delta = trained - initial."""
    from safetensors.torch import load_file

    w0 = load_file(str(model_dir / "model.safetensors"))
    a = load_file(str(out_a / "model.safetensors"))
    b = load_file(str(out_b / "model.safetensors"))
    num = den = 0.0
    for k, w in w0.items():
        da = a[k].double() - w.double()
        db = b[k].double() - w.double()
        num += float(((da - db) ** 2).sum())
        den += float((da**2).sum())
    assert den > 0, "the reference run did not change the weights"
    return (num / den) ** 0.5
