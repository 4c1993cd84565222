"""End to end: `ual analyze` on tiny local models (plain folders and a PEFT adapter)."""

from __future__ import annotations

import json

import pytest

from ual_plugin.analysis import analyze
from ual_plugin.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(path):
    data = path.read_bytes()
    return data[:8] == PNG_MAGIC and len(data) > 1000


def _run(tmp_path, models, texts, out_name="out", extra=()):
    out = tmp_path / out_name
    argv = ["analyze", *map(str, models), "--texts", str(texts), "--out", str(out), "--no-progress",
            "--pairs", "30", "--top-tokens", "12", *extra]
    assert main(argv) == 0
    return out, json.loads((out / "silhouette.json").read_text())


def _settings(out):
    return json.loads((out / "settings.json").read_text())


def test_cli_two_models_writes_json_and_pngs(tmp_path, tiny_model_dir, perturbed_model_dir, texts_jsonl, capsys):
    out, data = _run(tmp_path, [tiny_model_dir, perturbed_model_dir], texts_jsonl, extra=["--names", "base", "noisy"])
    assert set(data) == {"base", "noisy"}  # one entry per model, nothing else
    for name in ("base", "noisy"):
        entry = data[name]
        assert set(entry) == {"mean", "std", "n_pairs", "pairs"}
        assert entry["n_pairs"] == len(entry["pairs"]) == 30
        assert all(set(p) == {"tokens", "silhouette"} and len(p["tokens"]) == 2 for p in entry["pairs"])
        assert all(-1.0 <= p["silhouette"] <= 1.0 for p in entry["pairs"])
        values = [p["silhouette"] for p in entry["pairs"]]
        assert entry["mean"] == pytest.approx(sum(values) / len(values))
        assert entry["std"] >= 0
    assert [p["tokens"] for p in data["base"]["pairs"]] == [p["tokens"] for p in data["noisy"]["pairs"]]
    assert data["base"]["pairs"] != data["noisy"]["pairs"]  # different weights, different numbers
    cfg = _settings(out)
    assert cfg["seed"] == 0 and cfg["pairs"] == 30 and cfg["top_tokens"] == 12 and cfg["n_pairs"] == 30
    assert len(cfg["tokens"]) == 12 and all(isinstance(t["text"], str) for t in cfg["tokens"])
    assert cfg["models"] == {"base": str(tiny_model_dir), "noisy": str(perturbed_model_dir)}
    ids = {t["id"] for t in cfg["tokens"]}
    assert all(set(p["tokens"]) <= ids for p in data["base"]["pairs"])
    assert _is_png(out / "silhouette.png")
    assert sorted(p.name for p in out.glob("pca_*.png")) == ["pca_1.png", "pca_2.png", "pca_3.png"]
    assert all(_is_png(p) for p in out.glob("pca_*.png"))
    printed = capsys.readouterr().out
    assert "model" in printed and "mean" in printed and "n_pairs" in printed
    assert "base" in printed and "noisy" in printed


def test_same_seed_same_numbers_different_seed_different_pairs(tmp_path, tiny_model_dir, texts_jsonl):
    _, a = _run(tmp_path, [tiny_model_dir], texts_jsonl, "a", ["--seed", "3", "--plots", "0"])
    _, b = _run(tmp_path, [tiny_model_dir], texts_jsonl, "b", ["--seed", "3", "--plots", "0"])
    _, c = _run(tmp_path, [tiny_model_dir], texts_jsonl, "c", ["--seed", "4", "--plots", "0"])
    key = str(tiny_model_dir)
    assert a[key] == b[key]
    assert [p["tokens"] for p in a[key]["pairs"]] != [p["tokens"] for p in c[key]["pairs"]]
    assert not list((tmp_path / "a").glob("pca_*.png"))


def test_peft_adapter_folder_is_accepted(tmp_path, tiny_model_dir, lora_adapter_dir, texts_jsonl):
    res = analyze([tiny_model_dir, lora_adapter_dir], texts_jsonl, tmp_path / "out", names=["base", "lora"],
                  pairs=20, top_tokens=10, plots=1, progress=False)
    assert [m.name for m in res.models] == ["base", "lora"]
    lora = res["lora"]
    assert lora.n_pairs == 20 and -1 <= lora.mean <= 1
    assert lora.values != res["base"].values  # the adapter is applied
    assert _is_png(tmp_path / "out" / "pca_1.png")
    # an explicit --base gives the same numbers
    out = tmp_path / "with-base"
    assert main(["analyze", str(lora_adapter_dir), "--base", str(tiny_model_dir), "--texts", str(texts_jsonl),
                 "--out", str(out), "--pairs", "20", "--top-tokens", "10", "--plots", "0", "--no-progress"]) == 0
    data = json.loads((out / "silhouette.json").read_text())
    assert [p["silhouette"] for p in data[str(lora_adapter_dir)]["pairs"]] == pytest.approx(lora.values)


def test_fewer_pairs_than_requested_uses_all(tmp_path, tiny_model_dir, analysis_texts):
    with pytest.warns(UserWarning, match="only 6 distinct pairs"):
        res = analyze([tiny_model_dir], analysis_texts, None, pairs=100, top_tokens=4, progress=False)
    assert res.models[0].n_pairs == 6 and res.config["n_pairs"] == 6 and res.config["pairs"] == 100


def test_cli_prints_warnings_and_min_count(tmp_path, tiny_model_dir, texts_jsonl, capsys):
    argv = ["analyze", str(tiny_model_dir), "--texts", str(texts_jsonl), "--out", str(tmp_path / "o"),
            "--top-tokens", "3", "--plots", "1", "--no-progress"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "ual analyze: warning: only 3 distinct pairs exist among 3 tokens (100 requested)" in captured.err
    assert "3 pairs of 3 tokens" in captured.out
    with pytest.raises(Exception, match="min_count must be >= 2"):
        analyze([tiny_model_dir], texts_jsonl, None, min_count=1, progress=False)


def test_a_model_may_be_named_config(tmp_path, tiny_model_dir, texts_jsonl):
    out, data = _run(tmp_path, [tiny_model_dir], texts_jsonl, extra=["--names", "config", "--plots", "0"])
    assert set(data) == {"config"} and data["config"]["n_pairs"] == 30
    assert _settings(out)["models"] == {"config": str(tiny_model_dir)}


def test_cli_errors_are_clear(tmp_path, tiny_model_dir, texts_jsonl, capsys):
    base = ["--texts", str(texts_jsonl), "--out", str(tmp_path / "o"), "--no-progress"]
    assert main(["analyze", str(tmp_path / "missing"), *base]) == 2
    assert "model folder not found" in capsys.readouterr().err
    assert main(["analyze", str(tiny_model_dir), str(tiny_model_dir), *base]) == 2
    assert "used twice" in capsys.readouterr().err
    assert main(["analyze", str(tiny_model_dir), "--names", "a", "b", *base]) == 2
    assert "2 name(s) given for 1 model(s)" in capsys.readouterr().err
