"""Test-only Axolotl plugin: prints the class names of the trained model's modules, once the trainer exists,
so a test can see which kernels another plugin swapped in. Not part of the product."""

from __future__ import annotations

from axolotl.integrations.base import BasePlugin

PREFIX = "report_modules: "


class ReportModules(BasePlugin):
    def post_trainer_create(self, cfg, trainer):
        names = sorted({type(m).__name__ for m in trainer.model.modules()})
        print(PREFIX + ", ".join(names), flush=True)
