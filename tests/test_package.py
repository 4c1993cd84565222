"""The package's public surface: light top-level import, public names, the `ual` command."""

from __future__ import annotations

import subprocess
import sys

import ual_plugin


def test_import_does_not_pull_in_frameworks():
    code = (
        "import sys, ual_plugin, ual_plugin.scoring, ual_plugin.analysis;"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'trl', 'axolotl', 'openai', 'datasets'});"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_public_names():
    for name in ("smoothing_from_uncertainty", "smoothed_cross_entropy", "linear_smoothed_cross_entropy", "ual_loss"):
        assert callable(getattr(ual_plugin, name))
    assert "ual_loss" in ual_plugin.__all__


def test_cli_lists_every_subcommand():
    out = subprocess.run([sys.executable, "-m", "ual_plugin.cli", "--help"], capture_output=True, text=True, check=True)
    for sub in ("score", "stats", "analyze", "demo", "check"):
        assert sub in out.stdout
    bad = subprocess.run([sys.executable, "-m", "ual_plugin.cli"], capture_output=True, text=True)
    assert bad.returncode == 2
