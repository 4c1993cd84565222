"""Axolotl versions: tested releases run, older ones stop, newer ones stop unless the opt-in is set and
the internals probe passes."""

from __future__ import annotations

import pytest

pytest.importorskip("axolotl")

from ual_plugin.axolotl import compat  # noqa: E402
from ual_plugin.axolotl.compat import (  # noqa: E402
    ALLOW_UNTESTED_ENV,
    SUPPORTED_AXOLOTL_VERSIONS,
    TESTED_RANGE,
    UnsupportedAxolotlError,
    check_axolotl,
    is_newer,
    is_supported,
)

pytestmark = pytest.mark.axolotl

PLUGIN = "ual_plugin.axolotl.UALPlugin"
NEWER = "0.22.0"  # past the tested range


def test_installed_axolotl_is_a_tested_release_and_passes_the_probe():
    assert is_supported(check_axolotl())
    assert compat.missing_internals() == []


def test_the_tested_range_is_0_17_to_0_21():
    assert SUPPORTED_AXOLOTL_VERSIONS == ("0.17.0", "0.18.0", "0.19.0", "0.20.0", "0.21.0")
    assert TESTED_RANGE == "0.17.0 to 0.21.0"


@pytest.mark.parametrize("version,ok", [
    ("0.17.0", True), ("0.18.0", True), ("0.19.0", True), ("0.20.0", True), ("0.21.0", True),
    ("0.21.0+cu130", True), ("0.16.1", False), ("0.19.1", False), ("0.21.1", False), ("0.22.0", False),
    ("0.21.0rc1", False), ("0.21.0.dev3", False), ("not-a-version", False),
])
def test_only_tested_releases_are_supported(version, ok):
    assert is_supported(version) is ok


@pytest.mark.parametrize("version,newer", [
    ("0.22.0", True), ("0.21.1", True), ("0.22.0rc1", True), ("0.21.0", False), ("0.19.1", False),
    ("0.16.1", False), ("x", False),
])
def test_newer_than_the_tested_range(version, newer):
    assert is_newer(version) is newer


def test_newer_axolotl_stops_by_default_naming_the_range_and_the_opt_in(monkeypatch):
    monkeypatch.delenv(ALLOW_UNTESTED_ENV, raising=False)
    with pytest.raises(UnsupportedAxolotlError) as info:
        check_axolotl(NEWER)
    message = str(info.value)
    assert f"tested with Axolotl 0.17.0 to 0.21.0, but Axolotl {NEWER} is installed" in message
    assert f"{ALLOW_UNTESTED_ENV}=1" in message and "remove ual_plugin.axolotl.UALPlugin" in message


def test_opt_in_runs_a_newer_axolotl_whose_internals_are_intact(monkeypatch):
    monkeypatch.setenv(ALLOW_UNTESTED_ENV, "1")
    assert check_axolotl(NEWER) == NEWER


def test_opt_in_does_not_cover_an_older_axolotl(monkeypatch):
    monkeypatch.setenv(ALLOW_UNTESTED_ENV, "1")
    with pytest.raises(UnsupportedAxolotlError, match="Axolotl 0.16.1 is installed, which is older"):
        check_axolotl("0.16.1")


def test_opt_in_value_that_is_not_understood_stops(monkeypatch):
    monkeypatch.setenv(ALLOW_UNTESTED_ENV, "maybe")
    with pytest.raises(UnsupportedAxolotlError, match="UAL_ALLOW_UNTESTED_AXOLOTL='maybe' is not understood"):
        check_axolotl(NEWER)


def test_opt_in_stops_when_a_wrapped_signature_changed(monkeypatch):
    """Through Axolotl's own plugin loading: a newer Axolotl whose get_dataset_wrapper lost a parameter."""
    import axolotl.utils.data.sft as sft
    from axolotl.cli.config import prepare_plugins
    from axolotl.utils.dict import DictDefault

    from ual_plugin.axolotl.dataset import uninstall_dataset_patches

    uninstall_dataset_patches()

    def get_dataset_wrapper(dataset_config, tokenizer, cfg, dataset, processor=None):
        raise AssertionError("never called")

    monkeypatch.setattr(sft, "get_dataset_wrapper", get_dataset_wrapper)
    monkeypatch.setattr(compat, "installed_axolotl_version", lambda: NEWER)
    monkeypatch.setenv(ALLOW_UNTESTED_ENV, "1")
    cfg = DictDefault({"base_model": "unused", "plugins": [PLUGIN], "ual": True})
    with pytest.raises(UnsupportedAxolotlError) as info:
        prepare_plugins(cfg)
    message = str(info.value)
    assert f"Axolotl {NEWER} differs" in message
    assert "axolotl.utils.data.sft.get_dataset_wrapper takes (dataset_config, tokenizer, cfg, dataset, processor)" in message
    assert sft.get_dataset_wrapper is get_dataset_wrapper  # stopped before patching


def test_axolotl_start_up_stops_on_a_newer_version(monkeypatch):
    """Axolotl's own plugin loading lets the error through (it only swallows ImportError)."""
    from axolotl.cli.config import prepare_plugins
    from axolotl.utils.dict import DictDefault

    monkeypatch.delenv(ALLOW_UNTESTED_ENV, raising=False)
    monkeypatch.setattr(compat, "installed_axolotl_version", lambda: NEWER)
    cfg = DictDefault({"base_model": "unused", "plugins": [PLUGIN], "ual": True})
    with pytest.raises(UnsupportedAxolotlError, match=f"tested with Axolotl 0.17.0 to 0.21.0, but Axolotl {NEWER}"):
        prepare_plugins(cfg)
