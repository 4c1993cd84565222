"""The plugin's options inside Axolotl's real config validation: values, refusals, the ual-off warning."""

from __future__ import annotations

import json
import logging

import pytest

pytest.importorskip("axolotl")

from ual_plugin.axolotl.options import PLUGIN_ALIASES, ual_conflicts  # noqa: E402

pytestmark = pytest.mark.axolotl

PLUGIN = "ual_plugin.axolotl.UALPlugin"
CCE_PLUGIN = "axolotl.integrations.cut_cross_entropy.CutCrossEntropyPlugin"
LIGER_PLUGIN = "axolotl.integrations.liger.LigerPlugin"


def validate(raw: dict):
    from axolotl.cli.config import gpu_capabilities, prepare_plugins
    from axolotl.utils.config import validate_config
    from axolotl.utils.dict import DictDefault

    cfg = DictDefault(raw)
    prepare_plugins(cfg)
    caps, env_caps = gpu_capabilities()
    return validate_config(cfg, capabilities=caps, env_capabilities=env_caps)


@pytest.fixture
def base(workspace):
    return workspace.base_config("args")


def test_defaults_and_values_survive_validation(base):
    cfg = validate({**base, "ual_alpha": 0.3})
    assert cfg.ual is True and cfg.ual_alpha == 0.3 and cfg.ual_v_max == 0.99
    assert cfg.ual_mode == "column" and cfg.ual_uncertainty_field == "uncertainty"


def forget_ual_plugin() -> None:
    """Remove UAL from Axolotl's plugin-manager singleton, as in a fresh process.

    ``validate_config`` merges the args of every plugin registered in the process (Axolotl 0.20+), so
    after an earlier test registered UAL its ``ual`` key would survive a config without the plugin line.
    """
    from axolotl.integrations.base import PluginManager

    plugins = PluginManager.get_instance().plugins
    for name in [n for n in plugins if n in PLUGIN_ALIASES]:
        del plugins[name]


def test_without_the_plugin_line_ual_is_silently_dropped(base):
    """The trap this project guards against (see `ual check`): Axolotl drops the unknown key."""
    validate(base)  # UAL registered in this process first, as earlier tests do
    forget_ual_plugin()
    raw = {k: v for k, v in base.items() if k != "plugins"}
    cfg = validate(raw)
    assert cfg.get("ual") is None


@pytest.mark.parametrize(
    "changes, names",
    [
        ({"ual_alpha": 1.5}, ["ual_alpha"]),
        ({"ual_alpha": 0.5, "ual_v_max": 0.4}, ["ual_alpha", "ual_v_max"]),
        ({"ual_alpha": 0.0}, ["ual_alpha"]),
        ({"ual_v_max": 1.5}, ["ual_v_max"]),
        ({"ual_mode": "perplexity"}, ["ual_mode"]),
        ({"ual_uncertainty_field": ""}, ["ual_uncertainty_field"]),
    ],
)
def test_bad_values_name_the_option(base, changes, names):
    with pytest.raises(Exception) as info:
        validate({**base, **changes})
    for name in names:
        assert name in str(info.value)


def _ds_config(tmp_path, stage: int) -> str:
    path = tmp_path / f"zero{stage}.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": stage}, "train_micro_batch_size_per_gpu": "auto"}))
    return str(path)


REFUSALS = [
    ({"cut_cross_entropy": True}, "cut_cross_entropy"),
    ({"plugins": [PLUGIN, "axolotl.integrations.liger.LigerPlugin"], "liger_fused_linear_cross_entropy": True},
     "liger_fused_linear_cross_entropy"),
    ({"use_eaft": True}, "use_eaft"),
    ({"use_dft": True}, "use_dft"),
    ({"plugins": [PLUGIN, "axolotl.integrations.liger.LigerPlugin"], "liger_cross_entropy": True},
     "liger_cross_entropy"),
    ({"plugins": [PLUGIN, CCE_PLUGIN]}, CCE_PLUGIN),
    ({"context_parallel": {"size": 2}}, "context_parallel.size: 2"),
    ({"plugins": [PLUGIN, "axolotl.integrations.kd.KDPlugin"], "kd_trainer": True}, "kd_trainer"),
    ({"rl": "dpo"}, "rl: dpo"),
    ({"rl": "grpo"}, "rl: grpo"),
    ({"reward_model": True}, "reward_model"),
    ({"process_reward_model": True}, "process_reward_model"),
    ({"trainer_cls": "my.Trainer"}, "trainer_cls"),
    ({"adapter": "lora", "lora_target_modules": ["q_proj", "lm_head"]}, "lora_target_modules"),
]


@pytest.mark.parametrize("changes, name", REFUSALS, ids=[r[1] for r in REFUSALS])
def test_loss_replacing_options_are_refused(base, changes, name):
    with pytest.raises(Exception) as info:
        validate({**base, **changes})
    msg = str(info.value)
    assert "ual: true cannot be combined with" in msg and name in msg


def test_sharded_engines_are_accepted(base, tmp_path):
    """The loss runs inside the model's forward, so FSDP and ZeRO-3 are supported, not refused."""
    fsdp = {"fsdp_version": 2, "fsdp_config": {"auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
                                               "transformer_layer_cls_to_wrap": "LlamaDecoderLayer",
                                               "reshard_after_forward": True}}
    for changes in (fsdp, {"deepspeed": _ds_config(tmp_path, 3)}, {"deepspeed": _ds_config(tmp_path, 2)}):
        assert not ual_conflicts({**base, **changes})
        assert validate({**base, **changes}).ual is True


def test_context_parallelism_is_refused_with_the_reason(base):
    problems = ual_conflicts({**base, "context_parallel_size": 2})
    assert len(problems) == 1 and "per sample" in problems[0]


def test_nested_context_parallel_block_is_read_directly(base):
    """Axolotl 0.21's `context_parallel: {size}` block, read as written (not through Axolotl's copy of it)."""
    problems = ual_conflicts({**base, "context_parallel": {"size": 4, "backend": "ring"}})
    assert len(problems) == 1 and problems[0].startswith("`context_parallel.size: 4`") and "per sample" in problems[0]
    assert not ual_conflicts({**base, "context_parallel": {"size": 1}})


@pytest.mark.parametrize("changes, name", [
    ({"diffusion_lm": {}}, "diffusion_lm"),
    ({"diffusion": {"mask_token_id": 5}}, "diffusion"),
    ({"plugins": [PLUGIN, "axolotl.integrations.diffusion.DiffusionPlugin"]}, "DiffusionPlugin"),
    ({"adapter": "mixlora"}, "adapter: mixlora"),
    ({"plugins": [PLUGIN, CCE_PLUGIN], "cut_cross_entropy": True}, "cut_cross_entropy: True"),
], ids=["diffusion_lm", "diffusion", "diffusion-plugin", "mixlora", "cce-on"])
def test_newer_loss_replacers_are_named(base, changes, name):
    """Axolotl 0.20 / 0.21's diffusion training and MixLoRA bring their own objective (read from the YAML, so
    `ual check --no-validate` names them on any Axolotl)."""
    problems = ual_conflicts({**base, **changes})
    assert len(problems) == 1 and name in problems[0], problems


def test_cut_cross_entropy_plugin_with_cce_off_leaves_the_loss_to_ual(base):
    """Axolotl's CCE plugin patches the model only when `cut_cross_entropy` is true (its default): with
    `cut_cross_entropy: false` written out, UAL owns the loss."""
    cfg = validate({**base, "plugins": [PLUGIN, CCE_PLUGIN], "cut_cross_entropy": False})
    assert cfg.ual is True and cfg.cut_cross_entropy is False


def test_cut_cross_entropy_plugin_alone_is_refused_naming_the_fix(base):
    """The plugin as Axolotl's CCE example configs list it, with no `cut_cross_entropy` key."""
    with pytest.raises(Exception) as info:
        validate({**base, "plugins": [CCE_PLUGIN, PLUGIN]})
    msg = str(info.value)
    assert "ual: true cannot be combined with" in msg and CCE_PLUGIN in msg and "cut_cross_entropy: false" in msg


LIGER_KERNELS = {"liger_rope": True, "liger_rms_norm": True, "liger_glu_activation": True, "liger_layer_norm": True}


def test_liger_kernels_that_keep_the_loss_are_accepted(base):
    """Liger's RMSNorm, RoPE, GLU and LayerNorm kernels leave the loss to the model, so they run with UAL."""
    assert not ual_conflicts({**base, "plugins": [PLUGIN, LIGER_PLUGIN], **LIGER_KERNELS})
    cfg = validate({**base, "plugins": [PLUGIN, LIGER_PLUGIN], **LIGER_KERNELS})
    assert cfg.ual is True and all(cfg[k] is True for k in LIGER_KERNELS)


def test_liger_loss_kernels_are_refused_by_name_alongside_the_others(base):
    raw = {**base, "plugins": [PLUGIN, LIGER_PLUGIN], **LIGER_KERNELS, "liger_cross_entropy": True,
           "liger_fused_linear_cross_entropy": True}
    problems = ual_conflicts(raw)
    assert [p.split(":")[0] for p in problems] == ["`liger_fused_linear_cross_entropy", "`liger_cross_entropy"]


def test_column_mode_refuses_streaming_but_ppl_accepts(base):
    assert any("streaming" in p for p in ual_conflicts({**base, "streaming": True}))
    assert not ual_conflicts({**base, "streaming": True, "ual_mode": "ppl"})


def test_conflicts_are_ignored_when_ual_is_off(base):
    cfg = validate({**base, "ual": False, "use_eaft": True})
    assert not cfg.ual


def test_listed_plugin_with_ual_off_warns(base):
    from ual_plugin.axolotl.plugin import UALPlugin

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("axolotl.integrations.ual")
    logger.addHandler(handler)
    try:
        UALPlugin().register({k: v for k, v in base.items() if k != "ual"})
    finally:
        logger.removeHandler(handler)
    assert any("UAL is OFF" in r.getMessage() for r in records)


def test_plugin_hooks(base):
    from axolotl.utils.dict import DictDefault

    from ual_plugin.axolotl.plugin import UALPlugin
    from ual_plugin.axolotl.trainer import UALAxolotlTrainer

    plugin = UALPlugin()
    on = DictDefault(validate(base))
    off = DictDefault(validate({**base, "ual": False}))
    assert plugin.get_trainer_cls(on) is UALAxolotlTrainer and plugin.get_trainer_cls(off) is None
    assert plugin.get_collator_cls_and_kwargs(on) is None  # declines: Axolotl picks its collator, we wrap it
    args = plugin.get_training_args(on)
    assert args["ual"] is True and args["ual_alpha"] == 0.1 and args["average_tokens_across_devices"] is True
    assert plugin.get_training_args(off) is None
