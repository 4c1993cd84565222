"""``torch_compile: true`` through the real ``axolotl train``: compiled decoder blocks, the eager update exactly."""

from __future__ import annotations

import pytest

pytest.importorskip("axolotl")

from tests.axolotl.helpers import run_cli, weight_delta_rel  # noqa: E402
from tests.axolotl.test_e2e import _sgd_config  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.axolotl]


def test_torch_compile_gives_the_eager_update(workspace):
    """One SGD step with torch_compile (aot_eager: it traces forward and backward as inductor does, without the C++
    build) equals the eager step to 1e-5, and the log says the blocks were compiled."""
    ws = workspace
    eager = run_cli(ws, _sgd_config(ws, "sgd-eager", 4, 1), "sgd-eager", launcher="module")
    assert eager.returncode == 0, eager.tail()
    compiled = run_cli(ws, _sgd_config(ws, "sgd-compiled", 4, 1, torch_compile=True,
                                       torch_compile_backend="aot_eager"), "sgd-compiled", launcher="module")
    assert compiled.returncode == 0, compiled.tail()
    assert "compiles the model's 2 decoder blocks" in compiled.output, compiled.tail()
    assert weight_delta_rel(ws.model, ws.root / "runs" / "sgd-eager", ws.root / "runs" / "sgd-compiled") < 1e-5
