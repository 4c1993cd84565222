from __future__ import annotations

import csv
import json

import pytest

from tests.scoring.conftest import write_jsonl
from ual_plugin.scoring import formats
from ual_plugin.scoring.formats import InputError, RowFormatError
from ual_plugin.scoring.layouts import detect_layout, render_sample, row_to_conversation

LAYOUT_ROWS = {
    "alpaca": {"instruction": "Add 2 and 3.", "input": "Use digits.", "output": "5", "system": "Be brief."},
    "sharegpt": {"conversations": [{"from": "human", "value": "Hi there"}, {"from": "gpt", "value": "Hello!"},
                                   {"from": "human", "value": "Tell a joke"}, {"from": "gpt", "value": "Knock knock."}]},
    "messages": {"messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": "Write a haiku"},
                              {"role": "assistant", "content": [{"type": "text", "text": "Leaves fall"}]}]},
    "prompt-completion": {"prompt": "Capital of France?", "completion": "Paris."},
    "text": {"text": "Just some pretraining-style text."},
}


@pytest.mark.parametrize("layout", list(LAYOUT_ROWS))
def test_detect_and_convert_each_layout(layout):
    row = LAYOUT_ROWS[layout]
    assert detect_layout(row) == layout
    conv = row_to_conversation(row, layout)
    text = render_sample(conv)
    if layout == "text":
        assert text == row["text"]
    else:
        assert conv[-1]["role"] == "assistant"
        assert "[User]" in text and "[Assistant]" in text
    if layout == "alpaca":
        assert conv == [{"role": "system", "content": "Be brief."},
                        {"role": "user", "content": "Add 2 and 3.\n\nUse digits."},
                        {"role": "assistant", "content": "5"}]
    if layout == "sharegpt":
        assert [m["role"] for m in conv] == ["user", "assistant", "user", "assistant"]
    if layout == "messages":
        assert conv[-1]["content"] == "Leaves fall"


def test_prompt_completion_conversational_lists():
    row = {"prompt": [{"role": "user", "content": "hi"}], "completion": [{"role": "assistant", "content": "yo"}]}
    assert row_to_conversation(row, "prompt-completion") == [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    # a prompt that merely starts with "[" is text, not a message list
    assert row_to_conversation({"prompt": "[1, 2] sorted?", "completion": "[1, 2]"}, "prompt-completion") == [
        {"role": "user", "content": "[1, 2] sorted?"}, {"role": "assistant", "content": "[1, 2]"}]
    # `response` stands for `output` / `completion`, as `ual analyze` reads it
    assert detect_layout(["instruction", "response"]) == "alpaca"


def test_bad_row_message_names_row_line_and_layout(tmp_path):
    rows = [LAYOUT_ROWS["alpaca"], {"instruction": "no output here"}, LAYOUT_ROWS["alpaca"]]
    path = tmp_path / "d.jsonl"
    with open(path, "w") as f:
        f.write(json.dumps(rows[0]) + "\n\n")  # a blank line: row 1 is on line 3
        f.write(json.dumps(rows[1]) + "\n" + json.dumps(rows[2]) + "\n")
    data = formats.load_data(path)
    layout = formats.resolve_layout(data, None)
    with pytest.raises(RowFormatError) as err:
        formats.conversations(data, layout)
    msg = str(err.value)
    assert "row 1 (line 3 of d.jsonl)" in msg and "alpaca layout" in msg and "missing `output`" in msg
    assert "row 0" not in msg and "row 2" not in msg


def test_wrong_format_override_says_so(tmp_path):
    data = formats.load_data([LAYOUT_ROWS["alpaca"]] * 2)
    with pytest.raises(RowFormatError, match=r"sharegpt layout.*\n.*|Is --format right\?"):
        formats.conversations(data, formats.resolve_layout(data, "sharegpt"))
    with pytest.raises(InputError, match="unknown --format"):
        formats.resolve_layout(data, "alpacca")


def test_unknown_columns_and_bad_files(tmp_path):
    with pytest.raises(InputError, match="cannot tell the row layout"):
        formats.resolve_layout(formats.load_data([{"foo": 1}]), None)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{not json}\n')
    with pytest.raises(InputError, match="line 2 of bad.jsonl"):
        formats.load_data(bad)
    with pytest.raises(InputError, match="does not exist"):
        formats.load_data(tmp_path / "nope.jsonl")
    with pytest.raises(InputError, match="not one written by datasets' save_to_disk"):
        formats.load_data(tmp_path)
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(InputError, match="unknown input type"):
        formats.load_data(tmp_path / "x.txt")


def test_middle_truncation():
    def cut(text, n):
        return render_sample([{"role": "text", "content": text}], n)

    out = cut("A" * 100 + "B" * 100, 60)
    assert out.startswith("A" * 40) and out.endswith("B" * 20) and "140 characters omitted" in out
    assert out.count("A") == 40 and out.count("B") == 20
    assert cut("short", 60) == "short"


def _rows():
    return [{"instruction": f"q{i}", "input": "", "output": f"a{i}", "meta": {"k": i}, "tags": ["x", str(i)]}
            for i in range(4)]


@pytest.mark.parametrize("out_name", ["o.jsonl", "o.json", "o.csv", "o.parquet", "o_folder"])
def test_output_roundtrip_keeps_rows_order_and_columns(tmp_path, out_name):
    data = formats.load_data(write_jsonl(tmp_path / "in.jsonl", _rows()))
    values = [1.5, None, 0.0, 99.0]
    out = tmp_path / out_name
    formats.write_output(out, formats.with_scores(data, values, "uncertainty"))
    back = formats.load_data(out)
    assert back.columns[:3] == ["instruction", "input", "output"]
    assert back.columns[-1] == "uncertainty"
    assert [r["instruction"] for r in back.rows] == ["q0", "q1", "q2", "q3"]
    got = [r["uncertainty"] for r in back.rows]
    if out_name.endswith(".csv"):  # nested values as JSON text
        assert got == values
        assert json.loads(back.rows[2]["meta"]) == {"k": 2}
    else:
        assert got == values
        assert back.rows[3]["meta"] == {"k": 3} and back.rows[3]["tags"] == ["x", "3"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left behind


def test_inputs_csv_parquet_folder_json(tmp_path):
    import datasets

    rows = [{"prompt": f"p{i}", "completion": f"c{i}", "n": i} for i in range(3)]
    with open(tmp_path / "d.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["prompt", "completion", "n"])
        w.writeheader()
        w.writerows(rows)
    (tmp_path / "d.json").write_text(json.dumps({"train": rows}))
    ds = datasets.Dataset.from_list(rows)
    ds.to_parquet(str(tmp_path / "d.parquet"))
    ds.save_to_disk(str(tmp_path / "folder"))
    datasets.DatasetDict({"train": ds, "test": ds.select([0])}).save_to_disk(str(tmp_path / "dd"))
    for name in ("d.csv", "d.json", "d.parquet", "folder"):
        data = formats.load_data(tmp_path / name)
        assert formats.resolve_layout(data, None) == "prompt-completion", name
        assert [r["prompt"] for r in data.rows] == ["p0", "p1", "p2"], name
    with pytest.raises(InputError, match="--split"):
        formats.load_data(tmp_path / "dd")
    assert len(formats.load_data(tmp_path / "dd", split="test").rows) == 1
    # parquet -> parquet keeps the integer column's Arrow type
    data = formats.load_data(tmp_path / "d.parquet")
    formats.write_output(tmp_path / "o.parquet", formats.with_scores(data, [1.0, 2.0, None], "uncertainty"))
    import pyarrow.parquet as pq

    t = pq.read_table(tmp_path / "o.parquet")
    assert str(t.schema.field("n").type) == "int64" and str(t.schema.field("uncertainty").type) == "double"


def test_existing_score_column_is_replaced_in_place(tmp_path):
    rows = [{"text": "a", "uncertainty": 5.0, "z": 1}]
    data = formats.load_data(rows)
    out = formats.with_scores(data, [7.0], "uncertainty")
    assert out.column_names == ["text", "uncertainty", "z"] and out[0]["uncertainty"] == 7.0
    assert rows[0]["uncertainty"] == 5.0  # the caller's rows are not mutated


def test_json_file_holding_one_named_list(tmp_path):
    (tmp_path / "d.json").write_text(json.dumps({"data": [{"text": "a"}, {"text": "b"}]}))
    assert [r["text"] for r in formats.load_data(tmp_path / "d.json").rows] == ["a", "b"]
