"""``UALSFTConfig``: ``SFTConfig`` plus the ``ual_*`` options (same names as in Axolotl YAML)."""

from __future__ import annotations

from dataclasses import dataclass

from trl import SFTConfig

from ual_plugin.options import UALOptions, check_ual_options, options_of


@dataclass
class UALSFTConfig(SFTConfig, UALOptions):
    """Configuration for ``UALSFTTrainer``: every ``SFTConfig`` option, plus per-sample smoothing."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.ual:
            return
        check_ual_options(options_of(self))
        conflicts = []
        if getattr(self, "use_liger_kernel", False):
            conflicts.append("use_liger_kernel=True (Liger's fused loss has no per-sample smoothing)")
        if getattr(self, "loss_type", "nll") == "dft":
            conflicts.append("loss_type='dft'")
        if getattr(self, "label_smoothing_factor", 0.0):
            conflicts.append(f"label_smoothing_factor={self.label_smoothing_factor} (UAL sets smoothing per sample)")
        if conflicts:
            raise ValueError(
                "ual=True replaces the training loss, which conflicts with: " + "; ".join(conflicts)
                + ". Remove these options or set ual=False."
            )
