"""``UALPlugin``: the Axolotl ``BasePlugin`` behind ``plugins: [ual_plugin.axolotl.UALPlugin]``.

Hooks used:
- ``register``: stops with a clear error on an Axolotl version or internals the plugin does not know
  (``ual_plugin.axolotl.compat``), installs the dataset patches (no-ops unless a config has ``ual: true`` in column
  mode) and warns loudly when the plugin is listed but ``ual`` is not true;
- ``get_input_args``: ``UALArgs`` joins Axolotl's config schema (options + refusals);
- ``get_training_args_mixin`` / ``get_training_args``: the ``ual_*`` options on ``trainer.args``;
- ``get_trainer_cls``: ``UALAxolotlTrainer`` when ``ual: true``;
- ``get_collator_cls_and_kwargs``: declines (None), so Axolotl picks its usual collator for the
  config (padded, V1 / V2 multipack, flattening) and the trainer wraps it;
- ``post_trainer_create``: checks the trainer really is a UAL trainer (another plugin may have
  supplied the trainer class first);
- ``on_config_validation_error`` (Axolotl 0.19+): a rejected config undoes the dataset patches.

Axolotl only logs an ``ImportError`` raised while loading a plugin and then trains plain SFT, so this
module imports nothing from Axolotl but ``BasePlugin``, and a failure to import that is a ``RuntimeError``.
"""

from __future__ import annotations

import logging
from dataclasses import fields

from ual_plugin.options import UAL_OPTIONS, UALOptions

try:
    from axolotl.integrations.base import BasePlugin
except ImportError as exc:  # Axolotl would swallow an ImportError and train without the plugin
    raise RuntimeError(
        f"ual_plugin.axolotl.UALPlugin cannot load: importing axolotl.integrations.base.BasePlugin failed ({exc}). "
        "Axolotl would skip the plugin and train plain SFT, so the run stops instead. Install a tested Axolotl "
        "(see `ual check`), or remove ual_plugin.axolotl.UALPlugin from `plugins:` to train without UAL."
    ) from exc

LOG = logging.getLogger("axolotl.integrations.ual")


class UALPlugin(BasePlugin):
    """Uncertainty-Aware Learning (per-sample label smoothing) for ``axolotl train``."""

    def register(self, cfg):
        from ual_plugin.axolotl.compat import check_axolotl
        from ual_plugin.axolotl.dataset import install_dataset_patches

        check_axolotl()
        install_dataset_patches()
        ual = cfg.get("ual") if hasattr(cfg, "get") else None
        if not ual:
            present = [k for k in UAL_OPTIONS if hasattr(cfg, "get") and cfg.get(k) is not None and k != "ual"]
            LOG.warning(
                "ual_plugin.axolotl.UALPlugin is listed in `plugins:` but `ual` is %s: UAL is OFF and this run trains "
                "plain SFT%s. Set `ual: true` to train with Uncertainty-Aware Learning.",
                repr(ual) if ual is not None else "not set",
                f" (ignoring {', '.join(present)})" if present else "",
            )

    def on_config_validation_error(self, cfg):
        from ual_plugin.axolotl.dataset import uninstall_dataset_patches

        uninstall_dataset_patches()

    def get_input_args(self):
        return "ual_plugin.axolotl.args.UALArgs"

    def get_training_args_mixin(self):
        return "ual_plugin.axolotl.args.UALTrainingArgsMixin"

    def get_training_args(self, cfg):
        if not cfg.ual:
            return None
        values = {f.name: f.default for f in fields(UALOptions)}
        values.update({name: cfg.get(name) for name in UAL_OPTIONS if cfg.get(name) is not None})
        # With this, num_items_in_batch counts the label tokens of every rank, so DDP gives the same
        # gradient as one large batch (Axolotl turns it off by default; the UAL loss compensates).
        return {**values, "ual": True, "average_tokens_across_devices": True}

    def get_trainer_cls(self, cfg):
        if not cfg.ual:
            return None
        from ual_plugin.axolotl.trainer import UALAxolotlTrainer

        return UALAxolotlTrainer

    def get_collator_cls_and_kwargs(self, cfg, is_eval=False):
        # Decline: returning a (None, None) tuple would be truthy and break Axolotl's builder.
        return None

    def post_trainer_create(self, cfg, trainer):
        if not cfg.ual:
            return
        from ual_plugin.axolotl.trainer import UALAxolotlTrainer

        if not isinstance(trainer, UALAxolotlTrainer):
            raise ValueError(
                f"ual: true, but the trainer is {type(trainer).__name__}: another plugin listed before "
                "ual_plugin.axolotl.UALPlugin supplies the trainer class, so UAL would not be trained. Move "
                "UALPlugin first in `plugins:` or remove the other plugin."
            )
        if cfg.chunked_cross_entropy:
            LOG.warning("chunked_cross_entropy has no effect with ual: true (UAL computes its own chunked loss).")


__all__ = ["UALPlugin"]
