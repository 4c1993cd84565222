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
            conflicts += self._ual_keep_liger_off_the_loss()
        if getattr(self, "loss_type", "nll") == "dft":
            conflicts.append("loss_type='dft'")
        if getattr(self, "label_smoothing_factor", 0.0):
            conflicts.append(f"label_smoothing_factor={self.label_smoothing_factor} (UAL sets smoothing per sample)")
        if conflicts:
            raise ValueError(
                "ual=True replaces the training loss, which conflicts with: " + "; ".join(conflicts)
                + ". Remove these options or set ual=False."
            )

    def _ual_keep_liger_off_the_loss(self) -> list[str]:
        """``use_liger_kernel=True``: Liger's other kernels (RMSNorm, SwiGLU, RoPE, ...) stay on; its loss kernels,
        which have no per-sample smoothing, are turned off, or named as a conflict when asked for explicitly."""
        kernels = dict(self.liger_kernel_config or {})
        asked = [k for k in LIGER_LOSS_KERNELS if kernels.get(k)]
        if asked:
            return [f"liger_kernel_config={{{', '.join(repr(k) + ': True' for k in asked)}}} (Liger's loss has no "
                    "per-sample smoothing; leave it out and Liger's other kernels still run)"]
        self.liger_kernel_config = {**kernels, **dict.fromkeys(LIGER_LOSS_KERNELS, False)}
        return []


LIGER_LOSS_KERNELS = ("fused_linear_cross_entropy", "cross_entropy")
"""Liger's kernels that replace the loss; UAL computes its own."""
