"""``ual check CONFIG`` and the example configs it validates."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytest.importorskip("axolotl")

from tests.axolotl.helpers import REPO_ROOT, cli_env  # noqa: E402
from ual_plugin.axolotl.check import ACTIVE, INACTIVE, INVALID  # noqa: E402
from ual_plugin.cli import main as ual_main  # noqa: E402

pytestmark = pytest.mark.axolotl

PLUGIN = "ual_plugin.axolotl.UALPlugin"
EXAMPLES = sorted((REPO_ROOT / "example_configs").glob("*.yml"))


def write(tmp_path: Path, cfg: dict, name: str = "cfg.yml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def check(path: Path, capsys) -> tuple[int, str]:
    status = ual_main(["check", str(path)])
    return status, capsys.readouterr().out


def test_active_config(workspace, tmp_path, capsys):
    status, out = check(write(tmp_path, workspace.base_config("check", ual_alpha=0.2)), capsys)
    assert status == ACTIVE, out
    assert "UAL will be active: mode=column, alpha=0.2, v_max=0.99, uncertainty field='uncertainty'" in out


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({}, "mean smoothing: 0.2 per sample (ual_alpha_per=sample); per label token: set by the row lengths"),
        ({"ual_alpha_per": "token"}, "mean smoothing: 0.2 per label token (ual_alpha_per=token); per sample: set by"),
        ({"ual_mode": "uniform"}, "mean smoothing: 0.2 per sample and 0.2 per label token"),
    ],
    ids=["sample", "token", "uniform"],
)
def test_both_means_are_reported(workspace, tmp_path, capsys, extra, expected):
    status, out = check(write(tmp_path, workspace.base_config("check", ual_alpha=0.2, **extra)), capsys)
    assert status == ACTIVE, out
    assert expected in out


def test_bad_alpha_per_is_invalid(workspace, tmp_path, capsys):
    status, out = check(write(tmp_path, workspace.base_config("check", ual_alpha_per="row")), capsys)
    assert status == INVALID
    assert "ual_alpha_per" in out


def test_ual_without_plugin_line_is_the_trap(workspace, tmp_path, capsys):
    cfg = workspace.base_config("check")
    del cfg["plugins"]
    status, out = check(write(tmp_path, cfg), capsys)
    assert status == INACTIVE
    assert "does not list ual_plugin.axolotl.UALPlugin" in out and "PLAIN SFT" in out and "NOT be active" in out


def test_misspelled_plugin_is_named(workspace, tmp_path, capsys):
    cfg = workspace.base_config("check", plugins=["ual_plugin.UALPlugin"])
    status, out = check(write(tmp_path, cfg), capsys)
    assert status == INACTIVE and "ual_plugin.UALPlugin is not the plugin's name" in out


def test_module_colon_class_form_is_what_this_axolotl_makes_of_it(workspace, tmp_path, capsys):
    """`ual_plugin.axolotl:UALPlugin`: Axolotl 0.21 loads it (UAL active); older releases cannot (plain SFT)."""
    from packaging.version import Version

    from ual_plugin.axolotl.compat import installed_axolotl_version

    cfg = workspace.base_config("check", plugins=["ual_plugin.axolotl:UALPlugin"])
    status, out = check(write(tmp_path, cfg), capsys)
    if Version(installed_axolotl_version()) >= Version("0.21.0"):
        assert status == ACTIVE, out
    else:
        assert status == INACTIVE and "ual_plugin.axolotl:UALPlugin cannot be loaded" in out, out


def test_plugin_listed_but_ual_off(workspace, tmp_path, capsys):
    cfg = workspace.base_config("check", ual=False)
    status, out = check(write(tmp_path, cfg), capsys)
    assert status == INACTIVE and "UAL is OFF" in out


def test_unknown_ual_option(workspace, tmp_path, capsys):
    cfg = workspace.base_config("check", ual_alhpa=0.3)
    status, out = check(write(tmp_path, cfg), capsys)
    assert status == INVALID and "ual_alhpa" in out


def test_refused_option_is_reported(workspace, tmp_path, capsys):
    cfg = workspace.base_config("check", cut_cross_entropy=True)
    status, out = check(write(tmp_path, cfg), capsys)
    assert status == INVALID and "cut_cross_entropy" in out and "ual: true cannot be combined" in out


CCE_PLUGIN = "axolotl.integrations.cut_cross_entropy.CutCrossEntropyPlugin"
LIGER_PLUGIN = "axolotl.integrations.liger.LigerPlugin"
LOSS_REPLACERS = [
    ({"use_dft": True}, "use_dft"),
    ({"plugins": [PLUGIN, CCE_PLUGIN]}, CCE_PLUGIN),  # as in Axolotl's CCE example configs: CCE on by default
    ({"plugins": [PLUGIN, LIGER_PLUGIN], "liger_cross_entropy": True}, "liger_cross_entropy"),
    ({"plugins": [PLUGIN, LIGER_PLUGIN], "liger_fused_linear_cross_entropy": True}, "liger_fused_linear_cross_entropy"),
    ({"context_parallel": {"size": 2}}, "context_parallel.size: 2"),
]


@pytest.mark.parametrize("validate", [True, False], ids=["validated", "no-validate"])
@pytest.mark.parametrize("changes, name", LOSS_REPLACERS, ids=[r[1].split(".")[-1] for r in LOSS_REPLACERS])
def test_loss_replacers_are_invalid_with_their_name(workspace, tmp_path, capsys, changes, name, validate):
    """The same refusal with Axolotl's validation and from the YAML alone."""
    path = write(tmp_path, workspace.base_config("check", **changes))
    status = ual_main(["check", str(path)] if validate else ["check", "--no-validate", str(path)])
    out = capsys.readouterr().out
    assert status == INVALID, out
    assert "ual: true cannot be combined with" in out and name in out


@pytest.mark.parametrize("changes", [
    {"plugins": [PLUGIN, CCE_PLUGIN], "cut_cross_entropy": False},
    {"plugins": [PLUGIN, LIGER_PLUGIN], "liger_rope": True, "liger_rms_norm": True, "liger_glu_activation": True},
], ids=["cce-off", "liger-non-loss-kernels"])
def test_plugins_that_leave_the_loss_to_ual_are_active(workspace, tmp_path, capsys, changes):
    status, out = check(write(tmp_path, workspace.base_config("check", **changes)), capsys)
    assert status == ACTIVE, out


def test_missing_file(tmp_path, capsys):
    status, out = check(tmp_path / "nope.yml", capsys)
    assert status == INVALID and "no such file" in out


def test_no_validate_mode_needs_no_axolotl_import(workspace, tmp_path, capsys):
    cfg = workspace.base_config("check")
    status = ual_main(["check", "--no-validate", str(write(tmp_path, cfg))])
    assert status == ACTIVE, capsys.readouterr().out


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_configs_validate_and_activate_ual(path, capsys):
    """Every example config passes Axolotl's own validation with UAL active, and tells the user what to
    change for a real model on one GPU."""
    text = path.read_text(encoding="utf-8")
    status, out = check(path, capsys)
    assert status == ACTIVE, out
    cfg = yaml.safe_load(text)
    assert cfg["plugins"] == ["ual_plugin.axolotl.UALPlugin"] and cfg["ual"] is True
    assert "Llama-3-8B" in text and "Mistral-7B" in text and "GPU" in text
    expected_mode = "ppl" if path.name == "ppl-mode.yml" else "column"
    assert f"mode={expected_mode}" in out


def test_example_config_set_covers_the_documented_setups():
    names = {p.name for p in EXAMPLES}
    assert {"lora.yml", "qlora.yml", "sample-packing.yml", "ppl-mode.yml", "full-finetune.yml", "fsdp2.yml",
            "zero3.yml"} <= names
    by_name = {p.name: yaml.safe_load(p.read_text()) for p in EXAMPLES}
    assert by_name["qlora.yml"]["adapter"] == "qlora" and by_name["qlora.yml"]["load_in_4bit"] is True
    assert by_name["sample-packing.yml"]["sample_packing"] is True
    assert by_name["ppl-mode.yml"]["ual_mode"] == "ppl"
    assert "adapter" not in by_name["full-finetune.yml"]
    assert by_name["fsdp2.yml"]["fsdp_version"] == 2 and by_name["fsdp2.yml"]["fsdp_config"]
    zero3 = REPO_ROOT / by_name["zero3.yml"]["deepspeed"]
    assert json.loads(zero3.read_text())["zero_optimization"]["stage"] == 3


@pytest.mark.slow
def test_ual_check_console_script_flags_the_trap(workspace, tmp_path):
    """The installed `ual` command, as a user runs it."""
    cfg = workspace.base_config("check")
    del cfg["plugins"]
    path = write(tmp_path, cfg)
    ual = Path(sys.executable).parent / "ual"
    proc = subprocess.run([str(ual), "check", str(path)], env=cli_env(tmp_path), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == INACTIVE, proc.stdout + proc.stderr
    assert "PLAIN SFT" in proc.stdout


def test_axolotl_fp8_probe_failing_without_cuda_still_validates(workspace, tmp_path, capsys, monkeypatch):
    """Axolotl 0.17 / 0.18's fp8 probe asserts on a torch built without CUDA: the config is still validated (fp8
    taken as unsupported), with a note that `axolotl train` cannot start on such a machine."""
    from axolotl.cli import config as axolotl_config

    def cuda_probe():
        raise AssertionError("Torch not compiled with CUDA enabled")

    monkeypatch.setattr(axolotl_config, "compute_supports_fp8", cuda_probe)
    status, out = check(write(tmp_path, workspace.base_config("check")), capsys)
    assert status == ACTIVE, out
    assert "fp8 probe fails on a torch built without CUDA" in out
    assert axolotl_config.compute_supports_fp8 is cuda_probe  # put back as it was
