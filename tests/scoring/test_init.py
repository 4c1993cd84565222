"""What importing the scoring package costs: no torch, openai or datasets until a scorer runs."""

from __future__ import annotations

import subprocess
import sys

from tests.scoring.conftest import REPO

HEAVY = "{'torch', 'openai', 'datasets', 'transformers'}"


def _heavy_after(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code + f"; print(sorted({HEAVY} & set(sys.modules)))"],
                         capture_output=True, text=True, check=True, cwd=REPO)
    return out.stdout.strip()


def test_scoring_modules_import_no_heavy_library():
    """Every module the `ual score` CLI loads before a run, under a bare parent package."""
    code = ("import sys, types, pathlib; pkg = types.ModuleType('ual_plugin'); "
            "pkg.__path__ = [str(pathlib.Path('ual_plugin').resolve())]; sys.modules['ual_plugin'] = pkg; "
            "import ual_plugin.scoring, ual_plugin.scoring.cli, ual_plugin.scoring.core, ual_plugin.scoring.stats, "
            "ual_plugin.analysis.texts; ual_plugin.scoring.score")
    assert _heavy_after(code) == "[]"


def test_import_ual_plugin_scoring_pulls_in_no_torch():
    assert _heavy_after("import sys, ual_plugin.scoring") == "[]"
