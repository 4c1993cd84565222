"""The offline scorer: response-only perplexity under a tiny local Llama."""

from __future__ import annotations

import math

import pytest

from tests.scoring.conftest import read_jsonl, write_jsonl
from ual_plugin.cli import main
from ual_plugin.scoring.formats import sidecar_path

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

TEXTS = ["What is two plus two? Four.", "Write a poem about rain.", "The rain falls softly on the roof."]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from ual_plugin.demo.tiny import build_tiny_llama
    from ual_plugin.scoring.ppl_scorer import load_model

    path = build_tiny_llama(tmp_path_factory.mktemp("tiny"), texts=TEXTS)
    model, tok = load_model(str(path), "cpu")
    return str(path), model, tok


CONV = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is two plus two?"},
        {"role": "assistant", "content": "Four."}]


def test_response_mask_covers_exactly_the_assistant_turn(tiny):
    from ual_plugin.scoring.ppl_scorer import encode_conversation

    _, _, tok = tiny
    enc = encode_conversation(tok, CONV, 512)
    assert tok.decode(enc.ids) == tok.apply_chat_template(CONV, tokenize=False)
    response = tok.decode([i for i, t in zip(enc.ids, enc.targets, strict=True) if t])
    assert response == "Four.<|im_end|>\n"
    prompt = tok.decode([i for i, t in zip(enc.ids, enc.targets, strict=True) if not t])
    assert prompt == tok.apply_chat_template(CONV[:2], tokenize=False, add_generation_prompt=True)


def test_multi_turn_counts_every_assistant_turn_only(tiny):
    from ual_plugin.scoring.ppl_scorer import encode_conversation

    _, _, tok = tiny
    conv = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Poem?"}, {"role": "assistant", "content": "Rain falls."}]
    enc = encode_conversation(tok, conv, 512)
    response = tok.decode([i for i, t in zip(enc.ids, enc.targets, strict=True) if t])
    assert response == "Hello.<|im_end|>\nRain falls.<|im_end|>\n"
    # text layout: everything but the first token is a target
    text = encode_conversation(tok, [{"role": "text", "content": TEXTS[2]}], 512)
    assert text.targets[0] is False and all(text.targets[1:])


def test_perplexity_matches_hf_shifted_loss_and_is_padding_invariant(tiny):
    from ual_plugin.scoring.ppl_scorer import encode_conversation, response_perplexities

    _, model, tok = tiny
    convs = [CONV,
             [{"role": "user", "content": "Write a poem about rain."},
              {"role": "assistant", "content": "The rain falls softly on the roof, and the night is long."}],
             [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]]
    encs = [encode_conversation(tok, c, 512) for c in convs]
    batched = response_perplexities(model, encs, tok.pad_token_id)
    for enc, got in zip(encs, batched, strict=True):
        ids = torch.tensor([enc.ids])
        labels = torch.tensor([[i if t else -100 for i, t in zip(enc.ids, enc.targets, strict=True)]])
        with torch.no_grad():
            ref = math.exp(model(input_ids=ids, labels=labels).loss.item())  # HF shifts labels itself
        assert got == pytest.approx(ref, rel=1e-4)
        alone = response_perplexities(model, [enc], tok.pad_token_id)[0]
        assert got == pytest.approx(alone, rel=1e-4)
    # the prompt is context, not target: changing only the prompt keeps the target count
    other = encode_conversation(tok, [{"role": "user", "content": "A much longer question " * 5}, CONV[2]], 512)
    assert sum(other.targets) == sum(encs[0].targets)


def test_cli_ppl_scorer_end_to_end_and_resume(tiny, tmp_path, capsys):
    path = tiny[0]
    rows = [{"messages": [{"role": "user", "content": f"Question {i}?"},
                          {"role": "assistant", "content": TEXTS[i % 3]}], "id": i} for i in range(5)]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    args = ["score", str(src), "-o", str(out), "--scorer", "ppl", "--model", path, "--batch-size", "2",
            "--no-progress"]
    assert main(args) == 0
    scored = read_jsonl(out)
    values = [r["uncertainty"] for r in scored]
    assert [r["id"] for r in scored] == list(range(5))
    assert all(v is not None and math.isfinite(v) and v > 1.0 for v in values)
    # row 0 checked against the independent HF computation (labels = response tokens, HF shifts)
    from ual_plugin.scoring.ppl_scorer import encode_conversation

    _, model, tok = tiny
    enc = encode_conversation(tok, rows[0]["messages"], 2048)
    labels = torch.tensor([[i if t else -100 for i, t in zip(enc.ids, enc.targets, strict=True)]])
    with torch.no_grad():
        ref = math.exp(model(input_ids=torch.tensor([enc.ids]), labels=labels).loss.item())
    assert values[0] == pytest.approx(ref, rel=1e-4)
    assert "wrote" in capsys.readouterr().out
    cache_lines = sidecar_path(out).read_text().splitlines()
    assert len(cache_lines) == 5 and all(f'"scorer":"ppl:{path}"' in x for x in cache_lines)
    assert main(args) == 0  # resume: nothing recomputed
    assert "(5 from the cache)" in capsys.readouterr().out
    assert len(sidecar_path(out).read_text().splitlines()) == 5


def test_ppl_row_whose_response_is_truncated_away_fails_clearly(tiny, tmp_path, capsys):
    path, _, _ = tiny
    rows = [{"prompt": "short", "completion": "ok"}, {"prompt": "word " * 200, "completion": "late answer"}]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    code = main(["score", str(src), "-o", str(out), "--scorer", "ppl", "--model", path, "--max-length", "64",
                 "--no-progress"])
    text = capsys.readouterr().out
    assert code == 1 and "no response tokens within --max-length 64" in text
    values = [r["uncertainty"] for r in read_jsonl(out)]
    assert values[0] > 1 and values[1] is None
    assert main(["score", str(src), "-o", str(out), "--scorer", "ppl", "--no-progress"]) == 2  # no --model
