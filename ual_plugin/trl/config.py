"""``UALSFTConfig``: ``SFTConfig`` plus the ``ual_*`` options (same names as in Axolotl YAML)."""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import SFTConfig

from ual_plugin.mapping import DEFAULT_ALPHA, DEFAULT_V_MAX, _check_alpha

UAL_MODES = ("column", "ppl")
UAL_LOSS_BACKENDS = ("auto", "chunked", "trl_fused")


def check_ual_options(alpha: float, v_max: float, mode: str) -> None:
    """Raise ValueError naming the option when the UAL options cannot work."""
    if mode not in UAL_MODES:
        raise ValueError(f"ual_mode must be one of {UAL_MODES}; got {mode!r}")
    _check_alpha(alpha, v_max)


@dataclass
class UALSFTConfig(SFTConfig):
    """Configuration for ``UALSFTTrainer``: every ``SFTConfig`` option, plus per-sample smoothing."""

    ual: bool = field(
        default=True,
        metadata={"help": "Train with Uncertainty-Aware Learning (per-sample label smoothing). False = plain SFT."},
    )
    ual_alpha: float = field(
        default=DEFAULT_ALPHA,
        metadata={"help": "Mean smoothing value over the training set (paper: 0.1 for Deita, 0.3 for LIMA)."},
    )
    ual_v_max: float = field(
        default=DEFAULT_V_MAX, metadata={"help": "Largest smoothing value any sample may get."}
    )
    ual_mode: str = field(
        default="column",
        metadata={
            "help": "'column': smoothing from the dataset's uncertainty column (see `ual score`); "
            "'ppl': from each sample's own perplexity during training, no column needed.",
            "choices": list(UAL_MODES),
        },
    )
    ual_uncertainty_field: str = field(
        default="uncertainty", metadata={"help": "Dataset column holding each sample's uncertainty score."}
    )

    ual_loss_backend: str = field(
        default="auto",
        metadata={
            "help": "'chunked': UAL's own chunked LM-head loss (no [tokens, vocab] logits; fastest on CPU); "
            "'trl_fused': TRL >= 1.16's fused log-prob head plus UAL's linear correction term (Triton on GPU; "
            "not with logit soft-capping); 'auto': trl_fused on CUDA where available, else chunked.",
            "choices": list(UAL_LOSS_BACKENDS),
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.ual:
            return
        check_ual_options(self.ual_alpha, self.ual_v_max, self.ual_mode)
        if self.ual_loss_backend not in UAL_LOSS_BACKENDS:
            raise ValueError(f"ual_loss_backend must be one of {UAL_LOSS_BACKENDS}; got {self.ual_loss_backend!r}")
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
