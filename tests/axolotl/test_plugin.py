"""The plugin cannot fail silently: real Axolotl runs with a name missing at plugin load, with a newer
Axolotl release (its metadata) and the opt-in, and a rejected config that undoes the dataset patches."""

from __future__ import annotations

import os

import pytest

pytest.importorskip("axolotl")

from tests.axolotl.helpers import CPU_SHIM, REPO_ROOT, run_cli  # noqa: E402
from ual_plugin.axolotl.compat import ALLOW_UNTESTED_ENV  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.axolotl]


def _assert_ual_trained(run):
    assert run.returncode == 0, run.tail()
    assert "UAL active: mode=column, alpha=0.1" in run.output, run.tail()
    values = [m["ual_smoothing"] for m in run.train_logs]
    assert len(values) == 3 and all(0.05 <= v <= 0.15 for v in values), (values, run.tail())


def test_get_logger_missing_at_plugin_load_still_trains_ual(workspace):
    """The plugin module no longer imports Axolotl's logging helper, so Axolotl cannot skip it for that."""
    ws = workspace
    run = run_cli(ws, ws.base_config("no-get-logger", **ws.lora()), "no-get-logger",
                  launcher="without:axolotl.utils.logging.get_logger")
    assert "Failed to load plugin" not in run.output, run.tail()
    _assert_ual_trained(run)


def test_base_plugin_missing_at_plugin_load_stops_the_run(workspace):
    """Axolotl swallows an ImportError from a plugin and trains plain SFT; the plugin raises RuntimeError."""
    ws = workspace
    run = run_cli(ws, ws.base_config("no-base-plugin", **ws.lora()), "no-base-plugin",
                  launcher="without:axolotl.integrations.base.BasePlugin")
    assert run.returncode != 0, run.tail()
    assert "RuntimeError: ual_plugin.axolotl.UALPlugin cannot load: importing axolotl.integrations.base.BasePlugin" \
        in run.output, run.tail()
    assert run.train_logs == [], run.tail()


@pytest.fixture(scope="module")
def newer_axolotl(workspace):
    """A path entry whose metadata says Axolotl 0.22.0, past the tested range (the code stays the installed
    release's)."""
    path = workspace.root / "axolotl-0.22.0-metadata"
    info = path / "axolotl-0.22.0.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: axolotl\nVersion: 0.22.0\n", encoding="utf-8")
    return {"PYTHONPATH": os.pathsep.join([str(path), str(REPO_ROOT), str(CPU_SHIM)])}


def test_newer_axolotl_with_the_opt_in_and_intact_internals_trains_ual(workspace, newer_axolotl):
    ws = workspace
    run = run_cli(ws, ws.base_config("newer-opt-in", **ws.lora()), "newer-opt-in",
                  extra_env={**newer_axolotl, ALLOW_UNTESTED_ENV: "1"})
    _assert_ual_trained(run)


def test_newer_axolotl_without_the_opt_in_stops(workspace, newer_axolotl):
    ws = workspace
    run = run_cli(ws, ws.base_config("newer-default", **ws.lora()), "newer-default", launcher="module",
                  extra_env=newer_axolotl)
    assert run.returncode != 0, run.tail()
    assert "tested with Axolotl 0.17.0 to 0.21.0, but Axolotl 0.22.0 is installed" in run.output, run.tail()
    assert run.train_logs == [], run.tail()


CCE_PLUGIN = "axolotl.integrations.cut_cross_entropy.CutCrossEntropyPlugin"


@pytest.mark.parametrize("changes, refused", [
    ({"use_dft": True}, "`use_dft: True` (DFT (dynamic fine-tuning) replaces the loss)"),
    ({"plugins": [CCE_PLUGIN, "ual_plugin.axolotl.UALPlugin"]}, f"`plugins: [{CCE_PLUGIN}]` (Cut Cross-Entropy"),
], ids=["use_dft", "cce-plugin"])
def test_loss_replacer_stops_axolotl_train_before_training(workspace, changes, refused):
    """As `axolotl train` runs it: the refusal comes from UAL's config validation, before any model loads."""
    ws = workspace
    name = f"refused-{sorted(changes)[0]}"
    run = run_cli(ws, ws.base_config(name, **changes, **ws.lora()), name)
    assert run.returncode != 0, run.tail()
    assert "ual: true cannot be combined with" in run.output and refused in run.output, run.tail()
    assert "Starting trainer" not in run.output and run.train_logs == [], run.tail()


def test_rejected_config_undoes_the_dataset_patches(workspace):
    """Axolotl 0.19+ calls on_config_validation_error when validation fails after the plugins registered."""
    from axolotl.integrations.base import BasePlugin

    if not hasattr(BasePlugin, "on_config_validation_error"):
        pytest.skip("this Axolotl has no on_config_validation_error hook (added in 0.19)")
    import axolotl.utils.data.sft as sft
    from axolotl.cli.config import load_cfg

    ws = workspace
    load_cfg(str(ws.write_config(ws.base_config("accepted"), "accepted")))
    assert hasattr(sft.generate_dataset_hash_from_config, "__ual_original__")  # register() installed them
    path = ws.write_config(ws.base_config("rejected", ual_alpha=5.0), "rejected")
    with pytest.raises(Exception, match="ual_alpha"):
        load_cfg(str(path))
    assert not hasattr(sft.generate_dataset_hash_from_config, "__ual_original__")
    assert not hasattr(sft.get_dataset_wrapper, "__ual_original__")
