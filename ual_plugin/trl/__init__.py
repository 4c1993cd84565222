"""TRL adapter: ``UALSFTTrainer`` / ``UALSFTConfig``, drop-ins for ``SFTTrainer`` / ``SFTConfig``."""

from ual_plugin.trl.collator import UALCollator
from ual_plugin.trl.config import UALSFTConfig
from ual_plugin.trl.trainer import UALSFTTrainer

__all__ = ["UALCollator", "UALSFTConfig", "UALSFTTrainer"]
