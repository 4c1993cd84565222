"""The demo's figure is written as a PNG for any number of seeds, with or without loss curves."""

from __future__ import annotations

import pytest

pytest.importorskip("matplotlib")

from ual_plugin.demo.evaluate import METRICS  # noqa: E402
from ual_plugin.demo.figure import plot_results  # noqa: E402
from ual_plugin.demo.report import headline  # noqa: E402

LABELS = {"sft": "SFT", "uniform": "uniform LS", "ual": "UAL"}
PNG = b"\x89PNG\r\n\x1a\n"


def fake(seeds: int) -> tuple[dict, dict]:
    results = {arm: {s: {key: (0.5 - 0.05 * i if higher else 1.0 + 0.1 * i + 0.01 * s) for key, _, _, higher in METRICS}
                     for s in range(seeds)} for i, arm in enumerate(LABELS)}
    curves = {arm: {s: [(5, 6.0), (10, 3.0 + i), (15, 2.0 + i)] for s in range(seeds)} for i, arm in enumerate(LABELS)}
    return results, curves


@pytest.mark.parametrize("seeds", [1, 3])
def test_figure_is_written(tmp_path, seeds):
    results, curves = fake(seeds)
    path = plot_results(results, curves, LABELS, tmp_path / "fig.png", headline=headline(results, LABELS))
    assert path == tmp_path / "fig.png"
    data = path.read_bytes()
    assert data[:8] == PNG and len(data) > 10_000


def test_figure_without_logged_losses(tmp_path):
    results, _ = fake(2)
    empty = {arm: {s: [] for s in range(2)} for arm in LABELS}
    assert plot_results(results, empty, LABELS, tmp_path / "fig.png").read_bytes()[:8] == PNG
