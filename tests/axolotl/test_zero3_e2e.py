"""`axolotl train` with DeepSpeed ZeRO-3 on 2 CPU processes (DeepSpeed's CPU accelerator, gloo).

The real CLI runs through with UAL active and the weights updated. Gradient exactness under ZeRO-3
is checked where the sample split is controlled: tests/test_sharded_engines.py.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("axolotl")

from tests.axolotl.helpers import cli_env  # noqa: E402
from tests.axolotl.test_e2e import PLUGIN, _sgd_config  # noqa: E402
from tests.ports import free_port  # noqa: E402

pytestmark = [pytest.mark.axolotl, pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed is not installed")]


def test_zero3_two_cpu_processes_train_with_ual(workspace):
    ws = workspace
    ds_config = ws.root / "zero3.json"
    ds_config.write_text(json.dumps({
        "zero_optimization": {"stage": 3, "stage3_gather_16bit_weights_on_model_save": True},
        "zero_allow_untested_optimizer": True,
        "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto"}))
    cfg = _sgd_config(ws, "sgd-zero3", 2, 1, plugins=[PLUGIN, "tests.axolotl.cpu_ddp.CPUDeviceMap"],
                      deepspeed=str(ds_config))
    cfg["dataset_prepared_path"] = str(ws.root / "prepared" / "sgd-zero3")
    path = ws.write_config(cfg, "sgd-zero3")
    accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
    env = {**cli_env(ws.root), "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [accelerate, "launch", "--use_deepspeed", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
         "-m", "axolotl.cli.train", str(path)],
        cwd=ws.root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    tail = "\n".join(proc.stdout.splitlines()[-60:])
    assert proc.returncode == 0, tail
    assert "UAL active" in proc.stdout and "ual_smoothing" in proc.stdout, tail
    from safetensors.torch import load_file

    before = load_file(str(ws.model / "model.safetensors"))
    after = load_file(str(ws.root / "runs" / "sgd-zero3" / "model.safetensors"))
    assert before.keys() == after.keys()
    assert all(bool(after[k].isfinite().all()) for k in after)
    assert not (after["lm_head.weight"] - before["lm_head.weight"]).eq(0).all()  # the head, gathered, trained
