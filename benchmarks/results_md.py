"""Shared by the benchmarks: describe the machine and write a result table into RESULTS.md.

Each benchmark owns one marked section of ``RESULTS.md`` (``<!-- bench:KEY -->`` ... ``<!-- /bench:KEY -->``);
``--write`` replaces that section's body with the new table, so reruns never leave stale numbers
beside fresh ones.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import re
import shlex
import sys
from pathlib import Path

import torch

RESULTS = Path(__file__).with_name("RESULTS.md")
_PACKAGES = ("torch", "transformers", "trl", "peft", "axolotl", "liger-kernel", "cut-cross-entropy",
             "bitsandbytes", "triton")


def device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU threads"


def versions() -> str:
    found = []
    for name in _PACKAGES:
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return ", ".join([f"Python {platform.python_version()}"] + found)


def provenance(device: str) -> str:
    """Command, device, versions and date, as the first lines of a results block."""
    cmd = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0])] + sys.argv[1:])
    return (f"Command: `{cmd}`  \nDevice: {device_name(device)}  \nVersions: {versions()}  \n"
            f"Measured: {datetime.date.today().isoformat()}\n")


def write_section(key: str, body: str, path: Path = RESULTS) -> None:
    """Replace the body of section ``key`` in ``path`` (append the section when it is missing)."""
    start, end = f"<!-- bench:{key} -->", f"<!-- /bench:{key} -->"
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    block = f"{start}\n{body.strip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + f"\n\n{block}\n"
    path.write_text(text)
