"""The internals probe: it passes on the installed Axolotl (patched or not) and names each kind of change."""

from __future__ import annotations

import pytest

pytest.importorskip("axolotl")

from ual_plugin.axolotl import probe  # noqa: E402
from ual_plugin.axolotl.dataset import install_dataset_patches, uninstall_dataset_patches  # noqa: E402

pytestmark = pytest.mark.axolotl


@pytest.fixture
def sft():
    import axolotl.utils.data.sft as module

    uninstall_dataset_patches()
    yield module
    uninstall_dataset_patches()


def test_probe_passes_before_and_after_the_patches(sft):
    assert probe.internals_problems() == []
    install_dataset_patches()
    assert sft.generate_dataset_hash_from_config.__ual_original__ is not None
    assert probe.internals_problems() == []


def test_missing_function_is_named(sft, monkeypatch):
    monkeypatch.delattr(sft, "_load_and_process_single_dataset")
    problems = probe.wrapped_problems()
    assert "axolotl.utils.data.sft._load_and_process_single_dataset is missing" in problems


def test_caller_that_no_longer_looks_the_hash_up_through_sft_is_named(sft, monkeypatch):
    """The silent case: prepared data cached under a key without the scores' state."""
    def _load_tokenized_prepared_datasets(tokenizer, cfg, split="train", processor=None):
        return None

    monkeypatch.setattr(sft, "_load_tokenized_prepared_datasets", _load_tokenized_prepared_datasets)
    assert probe.wrapped_problems() == [
        "axolotl.utils.data.sft._load_tokenized_prepared_datasets no longer calls generate_dataset_hash_from_config "
        "through axolotl.utils.data.sft"
    ]


def test_caller_reaching_the_hash_through_another_name_is_a_bypass(sft, monkeypatch):
    namespace = vars(sft)
    monkeypatch.setitem(namespace, "_dataset_hash", sft.generate_dataset_hash_from_config)
    exec("def _cache_key(cfg):\n    return _dataset_hash(cfg, cfg.datasets, 'tok')\n", namespace)  # noqa: S102
    monkeypatch.setitem(namespace, "_cache_key", namespace["_cache_key"])
    problems = probe.wrapped_problems()
    assert problems == ["axolotl.utils.data.sft._cache_key calls axolotl.utils.data.sft.generate_dataset_hash_from_config "
                        "around the plugin's patch"]


def test_changed_hook_signature_is_named(monkeypatch):
    from axolotl.integrations.base import BasePlugin

    monkeypatch.setattr(BasePlugin, "get_trainer_cls", lambda self, cfg, model: None)
    assert probe.hook_problems() == ["BasePlugin.get_trainer_cls takes (self, cfg, model), checked: (self, cfg)"]
