"""End-to-end: the real ``axolotl train`` CLI on CPU with the tiny model (slow, but part of the default run).

"Near alpha": every training score lies in [45, 75], symmetric around 60, so every sample's smoothing
(and hence any token-weighted mean of them, which is what `ual_smoothing` logs) lies within about
[0.75, 1.25] x ual_alpha; the tests accept [0.5, 1.5] x ual_alpha. Exact per-token values are
checked in-process in test_pipeline.py.
"""

from __future__ import annotations

import pytest

pytest.importorskip("axolotl")

from packaging.version import Version  # noqa: E402

from tests.axolotl.helpers import PLUGIN, run_cli, weight_delta_rel  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.axolotl]


def assert_trained_with_ual(run, alpha: float, steps: int | None = None, mode: str = "column") -> list[float]:
    assert run.returncode == 0, run.tail()
    assert f"UAL active: mode={mode}, alpha={alpha}" in run.output, run.tail()
    logs = run.train_logs
    if steps is not None:
        assert len(logs) == steps, run.tail()
    values = [m["ual_smoothing"] for m in logs]
    assert values and all(0.5 * alpha <= v <= 1.5 * alpha for v in values), (values, run.tail())
    return values


@pytest.fixture(scope="module")
def padded_run(workspace):
    """chat_template, padded batches, LoRA, two datasets merged, a val_set_size split evaluated at the end."""
    ws = workspace
    cfg = ws.base_config(
        "chat-padded",
        datasets=[
            {"path": str(ws.data / "chat.jsonl"), "type": "chat_template", "ds_type": "json"},
            {"path": str(ws.data / "chat2.jsonl"), "type": "chat_template", "ds_type": "json"},
        ],
        dataset_prepared_path=str(ws.root / "prepared" / "shared-chat"),
        val_set_size=0.2,
        eval_steps=3,
        **ws.lora(),
    )
    return run_cli(ws, cfg, "chat-padded")


def test_chat_template_padded(padded_run):
    assert_trained_with_ual(padded_run, 0.1, steps=3)
    assert "fitted on 51 training samples" in padded_run.output  # 48 + 16 rows, 20% held out
    evals = padded_run.eval_logs
    assert evals and all(0.05 <= m["eval_ual_smoothing"] <= 0.15 for m in evals), padded_run.tail()


def test_qlora_reuses_cache_with_new_alpha(workspace, padded_run):
    """QLoRA (4-bit base on CPU) with the same datasets and dataset_prepared_path as the padded run but
    another ual_alpha: the prepared dataset is reused and the smoothing follows the new alpha."""
    ws = workspace
    assert padded_run.returncode == 0
    cfg = dict(padded_run.cfg)
    cfg.update(
        adapter="qlora",
        load_in_4bit=True,
        ual_alpha=0.3,
        output_dir=str(ws.root / "runs" / "qlora"),
    )
    run = run_cli(ws, cfg, "qlora")
    assert_trained_with_ual(run, 0.3, steps=3)
    assert "Loading prepared dataset from disk" in run.output, run.tail()
    assert "4-bit" in run.output, run.tail()  # the banner names the quantised base model


def test_chat_template_packed_full_finetune(workspace):
    ws = workspace
    cfg = ws.base_config(
        "chat-packed",
        sample_packing=True,
        pad_to_sequence_len=True,
        eval_sample_packing=False,
        gradient_accumulation_steps=2,
        max_steps=2,
    )
    run = run_cli(ws, cfg, "chat-packed")
    assert_trained_with_ual(run, 0.1, steps=2)
    assert "collator=V2BatchSamplerDataCollatorForSeq2Seq" in run.output, run.tail()


def test_alpaca_and_completion(workspace):
    """alpaca and completion data (each with its score column) merged into one run."""
    ws = workspace
    cfg = ws.base_config(
        "alpaca",
        datasets=[
            {"path": str(ws.data / "alpaca.jsonl"), "type": "alpaca", "ds_type": "json"},
            {"path": str(ws.data / "completion.jsonl"), "type": "completion", "ds_type": "json"},
        ],
        ual_alpha=0.2,
        sequence_len=256,
        **ws.lora(),
    )
    run = run_cli(ws, cfg, "alpaca")
    assert_trained_with_ual(run, 0.2, steps=3)


def test_ppl_mode_without_scores(workspace):
    ws = workspace
    cfg = ws.base_config(
        "ppl",
        datasets=[{"path": str(ws.data / "chat_noscore.jsonl"), "type": "chat_template", "ds_type": "json"}],
        ual_mode="ppl",
        ual_alpha=0.2,
        sample_packing=True,
        pad_to_sequence_len=True,
        max_steps=2,
        **ws.lora(),
    )
    run = run_cli(ws, cfg, "ppl")
    assert_trained_with_ual(run, 0.2, steps=2, mode="ppl")
    assert all(m["ual_ppl_running_mean"] > 1 for m in run.train_logs), run.tail()


def test_dataset_weight_subsamples_rows_with_their_scores(workspace):
    """Axolotl 0.20+'s per-dataset `weight` subsamples a dataset before tokenising: the kept rows carry their own
    scores and the map is fitted on them."""
    from packaging.version import Version

    from ual_plugin.axolotl.compat import installed_axolotl_version

    if Version(installed_axolotl_version()) < Version("0.20.0"):
        pytest.skip("dataset `weight` arrived in Axolotl 0.20")
    ws = workspace
    cfg = ws.base_config(
        "weighted",
        datasets=[{"path": str(ws.data / "chat.jsonl"), "type": "chat_template", "ds_type": "json", "weight": 0.5}],
        max_steps=2,
        **ws.lora(),
    )
    run = run_cli(ws, cfg, "weighted")
    assert_trained_with_ual(run, 0.1, steps=2)
    assert "48 -> 24 samples" in run.output and "fitted on 24 training samples" in run.output, run.tail()


def test_cut_cross_entropy_plugin_kept_off_trains_ual(workspace):
    """Axolotl's CCE plugin listed with `cut_cross_entropy: false`: its patch stays off and UAL owns the loss."""
    ws = workspace
    cfg = ws.base_config("cce-off", plugins=[PLUGIN, "axolotl.integrations.cut_cross_entropy.CutCrossEntropyPlugin"],
                         cut_cross_entropy=False, max_steps=2, **ws.lora())
    run = run_cli(ws, cfg, "cce-off")
    assert_trained_with_ual(run, 0.1, steps=2)
    assert "Applying Cut Cross Entropy" not in run.output, run.tail()


def test_missing_or_bad_field_stops_before_training(workspace):
    ws = workspace
    cfg = ws.base_config(
        "bad-field", datasets=[{"path": str(ws.data / "chat_bad.jsonl"), "type": "chat_template", "ds_type": "json"}]
    )
    run = run_cli(ws, cfg, "bad-field", launcher="module")
    assert run.returncode != 0
    assert "5 of 40 rows" in run.output and "chat_bad.jsonl" in run.output and "'uncertainty'" in run.output
    assert "row 0: missing" in run.output and "negative" in run.output and "not a number" in run.output
    assert "Starting trainer" not in run.output and not run.train_logs


# ----------------------------------------------------------------------------- GA and DDP equivalence

def _sgd_config(ws, name: str, micro_batch: int, accumulation: int, **extra):
    """One plain SGD step (update = -lr * gradient) on the first 4 samples, in order."""
    return ws.base_config(
        name,
        dataset_prepared_path=str(ws.root / "prepared" / "sgd"),
        micro_batch_size=micro_batch,
        gradient_accumulation_steps=accumulation,
        max_steps=1,
        optimizer="sgd",
        learning_rate=1.0,  # large, so the update stands well above float32 rounding of the weights
        weight_decay=0.0,
        max_grad_norm=0,
        warmup_steps=0,
        curriculum_sampling=True,
        ual_alpha=0.3,
        **extra,
    )


@pytest.fixture(scope="module")
def one_batch_of_4(workspace):
    run = run_cli(workspace, _sgd_config(workspace, "sgd-4x1", 4, 1), "sgd-4x1", launcher="module")
    assert run.returncode == 0, run.tail()
    return run


def test_gradient_accumulation_matches_one_large_batch(workspace, one_batch_of_4):
    ws = workspace
    run = run_cli(ws, _sgd_config(ws, "sgd-2x2", 2, 2), "sgd-2x2", launcher="module")
    assert run.returncode == 0, run.tail()
    rel = weight_delta_rel(ws.model, ws.root / "runs" / "sgd-4x1", ws.root / "runs" / "sgd-2x2")
    assert rel < 1e-5, rel
    assert run.train_logs[0]["ual_smoothing"] == pytest.approx(one_batch_of_4.train_logs[0]["ual_smoothing"], rel=1e-3)


def _liger_version() -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version("liger-kernel")
    except importlib.metadata.PackageNotFoundError:
        return None


LIGER = _liger_version()


@pytest.mark.skipif(LIGER is None, reason="liger-kernel is not installed")
@pytest.mark.skipif(LIGER is not None and Version(LIGER) >= Version("0.8.4"),  # what Axolotl 0.21 pins
                    reason=f"Liger {LIGER}'s SwiGLU kernel does not run under Triton's CPU interpreter ('float' object "
                           "has no attribute 'to'); the test runs with Liger 0.7.0 (Axolotl 0.17) and 0.8.1 (Axolotl 0.19)")
def test_liger_swiglu_kernel_beside_the_ual_loss(workspace, one_batch_of_4):
    """`liger_glu_activation: true` (Axolotl's Liger plugin): Liger's SwiGLU kernel replaces the MLP, the loss stays
    UAL's, and the update equals the run without Liger to 1e-4 (fp32; Liger's Triton kernel runs under Triton's
    CPU interpreter). Liger's RMSNorm kernel does not run under that interpreter, so it is not exercised here."""
    from tests.axolotl.report_modules import PREFIX

    ws = workspace
    plugins = [PLUGIN, "axolotl.integrations.liger.LigerPlugin", "tests.axolotl.report_modules.ReportModules"]
    cfg = _sgd_config(ws, "sgd-liger", 4, 1, plugins=plugins, liger_glu_activation=True)
    run = run_cli(ws, cfg, "sgd-liger", launcher="module", extra_env={"TRITON_INTERPRET": "1"})
    assert run.returncode == 0, run.tail()
    modules = next(line for line in run.output.splitlines() if line.startswith(PREFIX))
    assert "LigerSwiGLUMLP" in modules and "LlamaMLP" not in modules, modules
    assert "UAL active: mode=column, alpha=0.3" in run.output, run.tail()
    rel = weight_delta_rel(ws.model, ws.root / "runs" / "sgd-4x1", ws.root / "runs" / "sgd-liger")
    assert rel < 1e-4, rel


def test_ddp_two_cpu_processes_match_one_large_batch(workspace, one_batch_of_4):
    """DDP on CPU (gloo), 2 processes x micro-batch 2 = the same update as one process with a batch of 4.

    Axolotl 0.19 puts the model on `{"": LOCAL_RANK}` (a CUDA index) whenever WORLD_SIZE > 1, which
    fails without a GPU; the test-only plugin tests.axolotl.cpu_ddp.CPUDeviceMap points it at the CPU.
    """
    ws = workspace
    cfg = _sgd_config(ws, "sgd-ddp", 2, 1, plugins=[PLUGIN, "tests.axolotl.cpu_ddp.CPUDeviceMap"])
    cfg["dataset_prepared_path"] = str(ws.root / "prepared" / "sgd-ddp")
    run = run_cli(ws, cfg, "sgd-ddp", launcher="ddp2", extra_env={"ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.tail()
    assert '"world_size": 2' in run.output, run.tail()
    assert len(run.train_logs) == 1 and "ual_smoothing" in run.train_logs[0], run.tail()
    rel = weight_delta_rel(ws.model, ws.root / "runs" / "sgd-4x1", ws.root / "runs" / "sgd-ddp")
    assert rel < 1e-5, rel

