"""``bf16: true`` through the real ``axolotl train`` on CPU.

Axolotl (0.17 to 0.21) accepts ``bf16: true`` without a bf16 GPU with only a warning ("bf16 requested,
but AMP is not supported on this GPU. ... Training will fail"), loads the model in bf16, and then
transformers' ``TrainingArguments`` stops the run: "Your setup doesn't support bf16/gpu. You need to
assign use_cpu if you want to train the model on CPU." Axolotl has no ``use_cpu`` option, so on CPU
bf16 trains only with the test-only plugin ``tests.axolotl.cpu_bf16.UseCPU``, which sets it; accelerate
then runs the forward under CPU bf16 autocast (the plugin prints whether autocast was on when the LM head
ran). Both are tested here, so this note stays true.
"""

from __future__ import annotations

import pytest

pytest.importorskip("axolotl")

import torch  # noqa: E402

from tests.axolotl.cpu_bf16 import PROBE  # noqa: E402
from tests.axolotl.helpers import PLUGIN, run_cli  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.axolotl,
              pytest.mark.skipif(torch.cuda.is_available(), reason="about bf16 on a machine without a GPU")]

USE_CPU = "tests.axolotl.cpu_bf16.UseCPU"
TRANSFORMERS_REFUSAL = "Your setup doesn't support bf16/gpu. You need to assign use_cpu if you want to train the model on CPU."


def _bf16_config(ws, name: str, plugins: list[str], **extra):
    """One full fine-tuning step on the first samples in order, bf16, the same for every run (no LoRA: its
    random initialisation would make the first gradients differ between runs)."""
    cfg = ws.base_config(name, bf16=True, max_steps=1, curriculum_sampling=True, plugins=plugins,
                         dataset_prepared_path=str(ws.root / "prepared" / name), **extra)
    if PLUGIN not in plugins:
        cfg = {k: v for k, v in cfg.items() if not k.startswith("ual")}
    return cfg


def test_bf16_on_cpu_stops_in_transformers_as_axolotl_leaves_it(workspace):
    ws = workspace
    run = run_cli(ws, _bf16_config(ws, "bf16-refused", [PLUGIN]), "bf16-refused")
    assert run.returncode != 0, run.tail()
    assert TRANSFORMERS_REFUSAL in run.output, run.tail()
    assert run.train_logs == [], run.tail()


def test_bf16_autocast_on_cpu_trains_ual_and_matches_stock_at_tiny_smoothing(workspace):
    """UAL (uniform, alpha 1e-4) and plain Axolotl, both under CPU bf16 autocast: the same first-step loss and
    gradient norm within bf16 rounding."""
    ws = workspace
    stock = run_cli(ws, _bf16_config(ws, "bf16-stock", [USE_CPU]), "bf16-stock")
    ual = run_cli(ws, _bf16_config(ws, "bf16-ual", [PLUGIN, USE_CPU], ual_mode="uniform", ual_alpha=1e-4),
                  "bf16-ual")
    for run in (stock, ual):
        assert run.returncode == 0, run.tail()
        assert '"torch_dtype": "torch.bfloat16"' in run.output, run.tail()  # Axolotl's printed config
        assert f"{PROBE}: True, dtype torch.bfloat16" in run.output, run.tail()
        assert len(run.train_logs) == 1, run.tail()
    assert "UAL active: mode=uniform, alpha=0.0001" in ual.output, ual.tail()
    assert "UAL active" not in stock.output
    assert ual.train_logs[0]["ual_smoothing"] == pytest.approx(1e-4, rel=1e-2)
    s, u = stock.train_logs[0], ual.train_logs[0]
    assert u["loss"] == pytest.approx(s["loss"], rel=1e-2), (s, u)
    assert u["grad_norm"] == pytest.approx(s["grad_norm"], rel=1e-2), (s, u)
