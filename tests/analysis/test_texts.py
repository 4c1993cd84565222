"""Reading texts files in every supported layout, and clear errors on bad ones."""

from __future__ import annotations

import json

import pytest

from ual_plugin.analysis import TextsError, read_texts, record_to_text, render_messages
from ual_plugin.cli import main


def _jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def test_jsonl_text(tmp_path):
    p = _jsonl(tmp_path / "t.jsonl", [{"text": "one"}, {"text": "two\nlines"}, {"text": "  "}, {"text": "three"}])
    assert read_texts(p) == ["one", "two\nlines", "three"]  # blank texts skipped
    assert read_texts(p, max_texts=2) == ["one", "two\nlines"]


def test_jsonl_messages_with_chat_template(tmp_path, tiny_tokenizer):
    msgs = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"}]
    p = _jsonl(tmp_path / "m.jsonl", [{"messages": msgs}])
    (text,) = read_texts(p, tokenizer=tiny_tokenizer)
    assert text == tiny_tokenizer.apply_chat_template(msgs, tokenize=False)
    assert "<|im_start|>assistant\nHello!<|im_end|>" in text


def test_jsonl_messages_without_template(tmp_path):
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": [{"type": "text", "text": "Yo"}]}]
    p = _jsonl(tmp_path / "m.jsonl", [{"messages": msgs}])
    assert read_texts(p) == ["user: Hi\nassistant: Yo"]
    sharegpt = {"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]}
    assert record_to_text(sharegpt) == "user: Q\nassistant: A"
    assert render_messages(msgs) == "user: Hi\nassistant: Yo"


def test_alpaca_and_prompt_completion(tmp_path):
    rows = [
        {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
        {"instruction": "Say hi.", "input": "", "output": "hi"},
        {"prompt": "2+2=", "completion": "4"},
    ]
    p = _jsonl(tmp_path / "a.jsonl", rows)
    assert read_texts(p) == ["Add the numbers.\n2 and 3\n5", "Say hi.\nhi", "2+2=4"]


def test_json_array(tmp_path):
    p = tmp_path / "a.json"
    p.write_text(json.dumps([{"text": "x"}, {"instruction": "y", "output": "z"}]), encoding="utf-8")
    assert read_texts(p) == ["x", "y\nz"]


def test_plain_text_one_per_line(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text("first text\n\n  \nsecond text\r\n{not json}\n", encoding="utf-8")
    assert read_texts(p) == ["first text", "second text", "{not json}"]


def test_unknown_suffix_is_sniffed(tmp_path):
    a = _jsonl(tmp_path / "data", [{"text": "from json"}])
    assert read_texts(a) == ["from json"]
    b = tmp_path / "notes"
    b.write_text("plain line\n", encoding="utf-8")
    assert read_texts(b) == ["plain line"]


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"text": "ok"}\n{"text": broken}\n', "line 2: invalid JSON"),
        ('{"text": "ok"}\n{"question": "q", "answer": "a"}\n', r"line 2: no text found.*'answer', 'question'"),
        ('["a", "b"]\n', "line 1: expected a JSON object"),
        ('{"text": 3}\n', "'text' must be a string"),
        ('{"messages": []}\n', "non-empty list"),
        ('{"messages": [{"content": "x"}]}\n', "neither 'role' nor 'from'"),
        ("", "no texts found"),
        ('{"text": ""}\n', "no texts found"),
    ],
)
def test_bad_jsonl(tmp_path, content, message):
    p = tmp_path / "bad.jsonl"
    p.write_text(content, encoding="utf-8")
    with pytest.raises(TextsError, match=message):
        read_texts(p)


def test_missing_and_binary_files(tmp_path):
    with pytest.raises(TextsError, match="not found"):
        read_texts(tmp_path / "nope.jsonl")
    with pytest.raises(TextsError, match="not a file"):
        read_texts(tmp_path)
    b = tmp_path / "bin.txt"
    b.write_bytes(b"\xff\xfe\x00\x81abc")
    with pytest.raises(TextsError, match="not UTF-8"):
        read_texts(b)
    with pytest.raises(TextsError, match="max_texts"):
        read_texts(b, max_texts=0)


def test_cli_reports_bad_texts_file(tmp_path, tiny_model_dir, capsys):
    p = _jsonl(tmp_path / "bad.jsonl", [{"text": "fine"}, '{"text": oops'])
    rc = main(["analyze", str(tiny_model_dir), "--texts", str(p), "--out", str(tmp_path / "out"), "--no-progress"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "ual analyze: error:" in err and "line 2: invalid JSON" in err
    assert not (tmp_path / "out").exists()


def test_reads_layouts_as_ual_score_does():
    """One layout reader: ShareGPT roles, `response` aliases and message-list prompts read as `ual score` reads them."""
    from ual_plugin.scoring.layouts import row_to_conversation

    sharegpt = {"conversations": [{"from": "human", "value": "Q"}, {"from": "chatgpt", "value": "A"},
                                  {"from": "bot", "value": "B"}]}
    assert record_to_text(sharegpt) == "user: Q\nassistant: A\nassistant: B"
    assert [m["role"] for m in row_to_conversation(sharegpt, "sharegpt")] == ["user", "assistant", "assistant"]
    assert record_to_text({"instruction": "Say hi.", "response": "hi"}) == "Say hi.\nhi"
    assert record_to_text({"prompt": "2+2=", "response": "4"}) == "2+2=4"
    conversational = {"prompt": [{"role": "user", "content": "hi"}], "completion": [{"role": "assistant", "content": "yo"}]}
    assert record_to_text(conversational) == "user: hi\nassistant: yo"
