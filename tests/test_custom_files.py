"""Bring-your-own data files as people write them: each mistake refused with one sentence
that names the file, the row and the fix."""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import pytest

from fedpeft.config import load_config
from fedpeft.data.sources import read_table
from fedpeft.errors import FedpeftError


def test_a_folder_is_named_as_a_folder(tmp_path: Path) -> None:
    with pytest.raises(FedpeftError, match="is a folder; point `data.train_file`"):
        read_table(tmp_path, "text", "label")


def _csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "row", "cells"),
    [
        ("text,label\ngood,1\ngreat, really great,1\n", 2, 3),  # would be class 'really great'
        ("text,label\ngood,1\ngreat\n", 2, 1),
        ('text,label\ngood,1\n"great,1\nbad,0\n', 2, 1),  # an unclosed quote eats the rest
    ],
)
def test_a_row_that_does_not_fit_the_header_is_refused(
    tmp_path: Path, text: str, row: int, cells: int
) -> None:
    with pytest.raises(
        FedpeftError, match=rf"row {row} has {cells} cell\(s\) where the header has 2; put texts"
    ):
        read_table(_csv(tmp_path / "t.csv", text), "text", "label")


def test_quoted_commas_line_breaks_and_empty_trailing_cells_are_fine(tmp_path: Path) -> None:
    path = _csv(tmp_path / "t.csv", 'text,label,\n"a, b\nc",1,\n"say ""hi""",0\r\n')
    assert read_table(path, "text", "label") == (["a, b\nc", 'say "hi"'], ["1", "0"])
    tsv = _csv(tmp_path / "t.tsv", "label\ttext\tnote\n1\ta, b\n0\tc\n")  # unused cells short
    assert read_table(tsv, "text", "label") == (["a, b", "c"], ["1", "0"])


def test_blank_lines_and_rows_of_empty_cells_are_skipped(tmp_path: Path) -> None:
    """A line of spaces, or a spreadsheet's empty row (",,"), holds no row: skipped as a
    blank line is, not refused as a row whose cells do not fit the header."""
    path = _csv(tmp_path / "t.csv", "text,label,note\na,1,x\n   \n,,\r\n\nb,0,\n  ,  ,\n")
    assert read_table(path, "text", "label") == (["a", "b"], ["1", "0"])
    tsv = _csv(tmp_path / "t.tsv", "text\tlabel\n \t\na\t1\nb\t0\n")
    assert read_table(tsv, "text", "label") == (["a", "b"], ["1", "0"])


def test_a_json_column_is_there_when_any_row_holds_it(tmp_path: Path) -> None:
    """JSON rows need not all hold every key: a first row without the text is an empty
    text, as a later one is, and a first row without the label is that row's missing label
    (not a file without the column)."""
    text = '{"label": 1}\n{"text": "b", "label": 0}\n{"text": "c", "label": 1}\n'
    assert read_table(_csv(tmp_path / "t.jsonl", text), "text", "label") == (
        ["", "b", "c"],
        ["1", "0", "1"],
    )
    text = '{"text": "a"}\n{"text": "b", "label": 0}\n'
    with pytest.raises(FedpeftError, match="row 1 has no label in `label`; fill it in"):
        read_table(_csv(tmp_path / "t.jsonl", text), "text", "label")
    with pytest.raises(FedpeftError, match=r"no column `txt` \(found: `text`, `label`\)"):
        read_table(_csv(tmp_path / "t.jsonl", text), "txt", "label")


def test_a_column_named_twice_is_refused(tmp_path: Path) -> None:
    path = _csv(tmp_path / "t.csv", "text,label,label\na,1,0\nb,0,1\n")
    with pytest.raises(FedpeftError, match="has 2 columns named `label`; rename all but one"):
        read_table(path, "text", "label")
    assert read_table(path, "text", "text") == (["a", "b"], ["a", "b"])  # `label` unused


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("t.csv", "text,label\na,1\nb,\n", "row 2 has no label in `label`; fill it in"),
        ("t.jsonl", '{"text": "a", "label": 1}\n{"text": "b"}\n', "row 2 has no label in"),
        ("t.csv", "text,label\na,\nb,1\nc,\nd,\n", "row 1 has no label in `label`, nor do 2"),
    ],
)
def test_a_missing_cell_is_named(tmp_path: Path, name: str, text: str, message: str) -> None:
    with pytest.raises(FedpeftError, match=message):
        read_table(_csv(tmp_path / name, text), "text", "label")


def test_the_columns_found_are_quoted(tmp_path: Path) -> None:
    path = _csv(tmp_path / "t.csv", "text, label\na,1\n")  # the space is part of the name
    with pytest.raises(FedpeftError, match=r"no column `label` \(found: `text`, ` label`\)"):
        read_table(path, "text", "label")


def test_a_number_too_long_to_read_is_a_json_error(tmp_path: Path) -> None:
    path = _csv(tmp_path / "t.jsonl", '{"text": "a", "label": ' + "9" * 5000 + "}\n")
    with pytest.raises(FedpeftError, match="line 1: not valid JSON"):
        read_table(path, "text", "label")


def test_a_json_file_may_hold_one_array_of_objects(tmp_path: Path) -> None:
    rows = [{"text": "a", "label": 1}, {"text": "b", "label": "0"}]
    path = _csv(tmp_path / "t.json", json.dumps(rows, indent=2))
    assert read_table(path, "text", "label") == (["a", "b"], ["1", "0"])
    _csv(path, json.dumps([*rows, 3]))
    with pytest.raises(FedpeftError, match="row 3: expected a JSON object"):
        read_table(path, "text", "label")
    _csv(path, json.dumps(rows)[:-1])
    with pytest.raises(FedpeftError, match="is not valid JSON"):
        read_table(path, "text", "label")


def test_a_parquet_file_is_read_by_its_columns(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"id": [7, 8], "text": ["a", None], "label": [1, 0]}), path)
    assert read_table(path, "text", "label") == (["a", ""], ["1", "0"])  # as a CSV's ""
    pq.write_table(pa.table({"text": ["a", "b"], "label": [1.0, 0.0]}), path)
    assert read_table(path, "text", "label") == (["a", "b"], ["1", "0"])
    pq.write_table(pa.table({"text": [b"a", b"b"], "label": [1, 0]}), path)
    with pytest.raises(FedpeftError, match="row 1: the text is a bytes, not a string"):
        read_table(path, "text", "label")
    path.write_bytes(b"not parquet")
    with pytest.raises(FedpeftError, match="is not a readable Parquet file"):
        read_table(path, "text", "label")


def test_the_text_and_label_columns_must_differ() -> None:
    custom = ["data.dataset='custom'", "data.train_file='t.csv'"]
    with pytest.raises(FedpeftError, match="`data.label_column` are both 'label'; the model"):
        load_config(overrides=[*custom, "data.text_column='label'"])
    assert load_config(overrides=["data.text_column='label'"]).data.dataset == "sst2"  # unused


def test_a_json_file_holding_one_object_says_so(tmp_path: Path) -> None:
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"data": [{"text": "a", "label": 0}]}, indent=2))
    with pytest.raises(FedpeftError, match="holds one JSON object \\(keys `data`\\), not rows"):
        read_table(wrapped, "text", "label")
    lines = tmp_path / "lines.json"  # one object a line is JSONL, whatever the suffix
    lines.write_text('{"text": "a", "label": 0}\n{"text": "b", "label": 1}\n')
    assert read_table(lines, "text", "label") == (["a", "b"], ["0", "1"])


@pytest.mark.parametrize("indent", [None, 2])  # SQuAD's own files are one line
def test_a_squad_file_given_as_rows_names_the_squad_dataset(tmp_path: Path, indent: int) -> None:
    article = {"title": "t", "paragraphs": [{"context": "c", "qas": []}]}
    squad = tmp_path / "squad.json"
    squad.write_text(json.dumps({"version": "1.1", "data": [article]}, indent=indent))
    with pytest.raises(FedpeftError, match="looks like SQuAD .* with `data.dataset = 'squad'`"):
        read_table(squad, "text", "label")


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("t.csv", 'text,label\n"",1\n  ,0\nc,1\n'),
        ("t.jsonl", '{"text": NaN, "label": 1}\n{"text": null, "label": 0}\n'
                    '{"text": "c", "label": 1}\n'),
    ],
)  # fmt: skip
def test_a_missing_text_is_empty_and_counted_once_in_every_format(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, name: str, text: str
) -> None:
    path = _csv(tmp_path / name, text)
    with caplog.at_level("WARNING"):
        assert read_table(path, "text", "label") == (["", "", "c"], ["1", "0", "1"])  # no "nan"
    assert _warnings(caplog) == [
        f"2 rows of data file {path} have no text; they train as empty inputs"
    ]


def test_an_unclosed_quote_that_swallowed_rows_is_named(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    body = "".join(f"text {i},{i % 2}\n" for i in range(8))
    path = _csv(tmp_path / "t.csv", f'text,label\na,0\n"b,1\n{body}c" d,1\n')
    with caplog.at_level("WARNING"):
        texts, _ = read_table(path, "text", "label")
    assert len(texts) == 2
    assert _warnings(caplog) == [
        f"data file {path}, row 2: its text holds 10 lines, 9 of which look like rows of the "
        "file (they end in a ',' and a label); a quote is probably not closed, so those rows "
        'were read as one text: close the quote, or double a quote inside a text ("")'
    ]
    caplog.clear()
    letter = "Dear team,\nit came broken, 1\nstar at most,\nthanks, and more, 0\n\nBest,\nAl"
    fine = _csv(tmp_path / "f.csv", f'text,label\n"{letter}",1\nb,0\n')
    with caplog.at_level("WARNING"):
        assert read_table(fine, "text", "label")[0][0] == letter
    assert _warnings(caplog) == []  # 2 of 7 lines ending like a row: a text, not rows


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("t.csv", b"text;label\na;1\n", "looks ';'-separated .* save it with commas as"),
        ("t.csv", b"text\tlabel\na\t1\n", "looks tab-separated .* name it .tsv, or save"),
        ("t.tsv", b"text;label\na;1\n", "looks ';'-separated .* save it with tabs as"),
        ("t.csv.gz", gzip.compress(b"text,label\na,1\n"), r"is compressed \(.gz\); decompress"),
        ("t.zip", b"PK", r"is compressed \(.zip\); decompress it"),
        ("t.csv", "text,label\na,1\n".encode("utf-16"), "is UTF-16 .*; re-save it as UTF-8"),
        ("t.tsv", "text\tlabel\n".encode("utf-16-be").join([b"\xfe\xff", b""]), "is UTF-16"),
    ],
)  # fmt: skip
def test_a_file_in_another_shape_says_what_to_do(
    tmp_path: Path, name: str, data: bytes, message: str
) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(FedpeftError, match=message):
        read_table(path, "text", "label")


def test_a_one_column_file_of_another_separator_keeps_the_column_message(tmp_path: Path) -> None:
    path = _csv(tmp_path / "t.csv", "review\na\n")
    with pytest.raises(FedpeftError, match=r"no column `text` \(found: `review`\)"):
        read_table(path, "text", "label")
