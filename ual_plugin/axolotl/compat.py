"""Which Axolotl versions the plugin runs on, checked at start-up.

The plugin replaces a few of Axolotl's dataset-loading functions (one of them private) and overrides
its plugin hooks; on internals it has not been checked against it could train without UAL and say
nothing. So ``UALPlugin.register`` runs ``check_axolotl``: a tested release passes, an older one
stops, a newer one stops unless ``UAL_ALLOW_UNTESTED_AXOLOTL=1`` is set, and then only when the
internals probe (``ual_plugin.axolotl.probe``) finds every wrapped function and hook as checked.
"""

from __future__ import annotations

import importlib.metadata
import os

from packaging.version import InvalidVersion, Version

from ual_plugin.axolotl.probe import PATCHED_FUNCTIONS, internals_problems

# Releases the plugin is tested with (a local build of one of them, e.g. ``0.21.0+cu130``, counts too).
# 0.20.0 and 0.21.0 need Python 3.12.
SUPPORTED_AXOLOTL_VERSIONS: tuple[str, ...] = ("0.17.0", "0.18.0", "0.19.0", "0.20.0", "0.21.0")
TESTED_RANGE = f"{SUPPORTED_AXOLOTL_VERSIONS[0]} to {SUPPORTED_AXOLOTL_VERSIONS[-1]}"
ALLOW_UNTESTED_ENV = "UAL_ALLOW_UNTESTED_AXOLOTL"
_TRUE, _FALSE = ("1", "true", "yes"), ("", "0", "false", "no")


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
    """True when ``version`` is a tested release (or a local build of one)."""
    try:
        public = Version(version).public
    except InvalidVersion:
        return False
    return any(Version(public) == Version(v) for v in SUPPORTED_AXOLOTL_VERSIONS)


def is_newer(version: str) -> bool:
    """True when ``version`` is later than every tested release (pre-releases of a later one count)."""
    try:
        return Version(Version(version).public) > Version(SUPPORTED_AXOLOTL_VERSIONS[-1])
    except InvalidVersion:
        return False


def untested_allowed() -> bool:
    """Whether ``UAL_ALLOW_UNTESTED_AXOLOTL`` opts in to an Axolotl newer than the tested range."""
    value = os.environ.get(ALLOW_UNTESTED_ENV, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise UnsupportedAxolotlError(
        f"{ALLOW_UNTESTED_ENV}={os.environ[ALLOW_UNTESTED_ENV]!r} is not understood: use 1 to run an Axolotl newer "
        f"than {TESTED_RANGE} after the internals probe, or unset it."
    )


def missing_internals() -> list[str]:
    """What the internals probe finds changed in this Axolotl (empty when everything is as checked)."""
    return internals_problems()


def check_axolotl(version: str | None = None) -> str:
    """Raise ``UnsupportedAxolotlError`` unless Axolotl (default: the installed one) may run with UAL; return it."""
    version = installed_axolotl_version() if version is None else version
    pin = f"pip install 'axolotl>={SUPPORTED_AXOLOTL_VERSIONS[0]},<={SUPPORTED_AXOLOTL_VERSIONS[-1]}'"
    fix = f"Install a tested Axolotl ({pin}), or remove ual_plugin.axolotl.UALPlugin from `plugins:` to train without UAL."
    if version is None:
        raise UnsupportedAxolotlError(f"ual_plugin.axolotl.UALPlugin needs Axolotl {TESTED_RANGE}; it is not installed.")
    if not is_supported(version):
        if not is_newer(version):
            raise UnsupportedAxolotlError(
                f"ual_plugin.axolotl.UALPlugin is tested with Axolotl {TESTED_RANGE}, but Axolotl {version} is installed, "
                f"which is older or not a release. {fix}"
            )
        if not untested_allowed():
            raise UnsupportedAxolotlError(
                f"ual_plugin.axolotl.UALPlugin is tested with Axolotl {TESTED_RANGE}, but Axolotl {version} is installed. "
                f"The plugin hooks into Axolotl internals that it has only been checked against in those releases, so it "
                f"stops here rather than risk training without UAL. {fix} To try this Axolotl anyway, set "
                f"{ALLOW_UNTESTED_ENV}=1: the plugin then checks the internals it relies on and stops if any changed."
            )
    problems = missing_internals()
    if problems:
        raise UnsupportedAxolotlError(
            f"Axolotl {version} differs from what ual_plugin.axolotl.UALPlugin relies on, so UAL could be bypassed "
            f"without notice: {'; '.join(problems)}. {fix}"
        )
    return version


__all__ = [
    "ALLOW_UNTESTED_ENV",
    "PATCHED_FUNCTIONS",
    "SUPPORTED_AXOLOTL_VERSIONS",
    "TESTED_RANGE",
    "UnsupportedAxolotlError",
    "check_axolotl",
    "installed_axolotl_version",
    "is_newer",
    "is_supported",
    "missing_internals",
    "untested_allowed",
]
