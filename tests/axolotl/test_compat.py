"""Axolotl versions: a version or build the plugin does not know stops the run at start-up."""

from __future__ import annotations

import pytest

pytest.importorskip("axolotl")

from ual_plugin.axolotl import compat  # noqa: E402
from ual_plugin.axolotl.compat import (  # noqa: E402
    SUPPORTED_AXOLOTL_VERSIONS,
    UnsupportedAxolotlError,
    check_axolotl,
    is_supported,
    missing_internals,
)

pytestmark = pytest.mark.axolotl

PLUGIN = "ual_plugin.axolotl.UALPlugin"


def test_installed_axolotl_is_supported_and_has_every_patched_function():
    assert missing_internals() == []
    assert check_axolotl() in SUPPORTED_AXOLOTL_VERSIONS


@pytest.mark.parametrize("version,ok", [
    ("0.19.0", True), ("0.19.0+cu130", True),
    ("0.18.0", False), ("0.19.1", False), ("0.20.0", False), ("0.19.0rc1", False), ("0.19.0.dev3", False),
    ("not-a-version", False),
])
def test_only_known_releases_are_supported(version, ok):
    assert is_supported(version) is ok


def test_unknown_version_error_names_both_versions_and_the_fix():
    with pytest.raises(UnsupportedAxolotlError) as info:
        check_axolotl("0.18.0")
    message = str(info.value)
    assert "Axolotl 0.18.0 is installed" in message
    assert all(v in message for v in SUPPORTED_AXOLOTL_VERSIONS)
    assert "pip install 'axolotl==" in message and "remove ual_plugin.axolotl.UALPlugin" in message


def test_missing_internal_is_named(monkeypatch):
    import axolotl.utils.data.sft as sft

    monkeypatch.delattr(sft, "_load_and_process_single_dataset")
    assert missing_internals() == ["axolotl.utils.data.sft._load_and_process_single_dataset"]
    with pytest.raises(UnsupportedAxolotlError, match="_load_and_process_single_dataset"):
        check_axolotl()


def test_axolotl_start_up_stops_on_an_unknown_version(monkeypatch):
    """Axolotl's own plugin loading lets the error through (it only swallows ImportError)."""
    from axolotl.cli.config import prepare_plugins
    from axolotl.utils.dict import DictDefault

    monkeypatch.setattr(compat, "installed_axolotl_version", lambda: "0.18.0")
    cfg = DictDefault({"base_model": "unused", "plugins": [PLUGIN], "ual": True})
    with pytest.raises(UnsupportedAxolotlError, match="supports Axolotl 0.19.0, but Axolotl 0.18.0"):
        prepare_plugins(cfg)
