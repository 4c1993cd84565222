"""Fixtures for the Axolotl adapter tests (helpers live in tests/axolotl/helpers.py)."""

from __future__ import annotations

import os

import pytest

# Offline and quiet, before anything imports huggingface_hub / axolotl in this process.
for _key, _value in {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "AXOLOTL_DO_NOT_TRACK": "1",
    "WANDB_DISABLED": "true",
    "WANDB_MODE": "disabled",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(_key, _value)

from tests.axolotl.cpu_shim.sitecustomize import install as install_cpu_shim  # noqa: E402
from tests.axolotl.helpers import Workspace, make_workspace  # noqa: E402

install_cpu_shim()


@pytest.fixture(scope="session")
def workspace(tmp_path_factory) -> Workspace:
    return make_workspace(tmp_path_factory.mktemp("ual_axolotl"))
