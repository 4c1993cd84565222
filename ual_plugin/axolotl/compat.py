"""Which Axolotl versions the plugin knows, checked at start-up.

The plugin replaces a few of Axolotl's dataset-loading functions (one of them private) and relies on its
trainer builder's hooks; with a version whose internals it has not been checked against it could train
without UAL and say nothing. So ``UALPlugin.register`` stops such a run with a clear error instead.
"""

from __future__ import annotations

import importlib
import importlib.metadata

from packaging.version import InvalidVersion, Version

# Releases the plugin is tested with (a local build of one of them, e.g. ``0.19.0+cu130``, counts too).
SUPPORTED_AXOLOTL_VERSIONS: tuple[str, ...] = ("0.19.0",)

# The Axolotl functions the plugin wraps (see ``ual_plugin.axolotl.dataset.install_dataset_patches``).
PATCHED_FUNCTIONS: tuple[tuple[str, str], ...] = (
    ("axolotl.utils.data.sft", "get_dataset_wrapper"),
    ("axolotl.utils.data.sft", "_load_and_process_single_dataset"),
    ("axolotl.utils.data.sft", "generate_dataset_hash_from_config"),
    ("axolotl.utils.data.wrappers", "wrap_dataset_for_tokenized_prompt"),
)


class UnsupportedAxolotlError(RuntimeError):
    """Axolotl's version or internals are not ones the plugin knows; training would not be UAL.

    A ``RuntimeError`` on purpose: Axolotl only logs an ``ImportError`` from a plugin and trains on.
    """


def installed_axolotl_version() -> str | None:
    """The installed Axolotl distribution's version, or None when it is not installed."""
    try:
        return importlib.metadata.version("axolotl")
    except importlib.metadata.PackageNotFoundError:
        return None


def is_supported(version: str) -> bool:
    """True when ``version`` is a supported release (or a local build of one)."""
    try:
        public = Version(version).public
    except InvalidVersion:
        return False
    return any(Version(public) == Version(v) for v in SUPPORTED_AXOLOTL_VERSIONS)


def missing_internals() -> list[str]:
    """The dotted names of the patched Axolotl functions that this Axolotl does not have."""
    missing = []
    for module_name, attr in PATCHED_FUNCTIONS:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            missing.append(f"{module_name} (module)")
            continue
        if not callable(getattr(module, attr, None)):
            missing.append(f"{module_name}.{attr}")
    return missing


def check_axolotl(version: str | None = None) -> str:
    """Raise ``UnsupportedAxolotlError`` unless Axolotl (``version``, default: the installed one) is
    supported and has every function the plugin patches; return the version."""
    version = installed_axolotl_version() if version is None else version
    supported = ", ".join(SUPPORTED_AXOLOTL_VERSIONS)
    fix = (f"Install a supported Axolotl (pip install 'axolotl=={SUPPORTED_AXOLOTL_VERSIONS[-1]}'), or remove "
           "ual_plugin.axolotl.UALPlugin from `plugins:` to train without UAL.")
    if version is None:
        raise UnsupportedAxolotlError(f"ual_plugin.axolotl.UALPlugin needs Axolotl ({supported}); it is not installed.")
    if not is_supported(version):
        raise UnsupportedAxolotlError(
            f"ual_plugin.axolotl.UALPlugin supports Axolotl {supported}, but Axolotl {version} is installed. The "
            f"plugin hooks into Axolotl internals that it has only been checked against in {supported}, so it stops "
            f"here rather than risk training without UAL. {fix}"
        )
    missing = missing_internals()
    if missing:
        raise UnsupportedAxolotlError(
            f"Axolotl {version} lacks functions ual_plugin.axolotl.UALPlugin patches: {', '.join(missing)}. {fix}"
        )
    return version


__all__ = [
    "PATCHED_FUNCTIONS",
    "SUPPORTED_AXOLOTL_VERSIONS",
    "UnsupportedAxolotlError",
    "check_axolotl",
    "installed_axolotl_version",
    "is_supported",
    "missing_internals",
]
