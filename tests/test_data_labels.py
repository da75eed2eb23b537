"""Labels from people's files: one class per number however it is spelt, numeric order,
NaN and bad bytes refused with the row, ``data.label_names`` fixing the class order."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fedpeft.config import load_config
from fedpeft.data import checks, load_dataset
from fedpeft.data.labels import label_order, normalize_label
from fedpeft.data.sources import read_table
from fedpeft.errors import FedpeftError


def _jsonl(path: Path, labels: list[object]) -> Path:
    # json.dumps writes float('nan') as the bare token NaN, which Python's json reads back
    path.write_text(
        "".join(json.dumps({"text": f"t{i}", "label": y}) + "\n" for i, y in enumerate(labels))
    )
    return path


def _custom(train: Path, *extra: str):  # type: ignore[no-untyped-def]
    cfg = load_config(
        overrides=["data.dataset='custom'", f"data.train_file={str(train)!r}", *extra]
    )
    return load_dataset(cfg.data, 0)


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [(1, "1"), (1.0, "1"), ("1.0", "1"), (" 01 ", "1"), ("1e1", "10"), (-0.0, "0"),
     (2.5, "2.5"), ("2.50", "2.5"), ("pos", "pos"), (True, "true"), ("", None), (None, None)],
)  # fmt: skip
def test_one_spelling_per_class(raw: object, canonical: str | None) -> None:
    assert normalize_label(raw, "here") == canonical


@pytest.mark.parametrize("raw", [float("nan"), float("inf"), "NaN", "nan", "-inf", "Infinity"])
def test_nan_and_infinite_labels_are_refused(raw: object) -> None:
    with pytest.raises(FedpeftError, match="not a class"):
        normalize_label(raw, "data file x, row 3")


@pytest.mark.parametrize("raw", ["1e400", "-1e999", " 9e9999 "])
def test_a_number_past_float_range_is_refused(raw: str) -> None:
    with pytest.raises(FedpeftError, match="row 3: the label .* is too large a number"):
        normalize_label(raw, "data file x, row 3")


def test_numbers_sort_as_numbers_and_words_as_words() -> None:
    numbers = ["10", "2", "-1", "2.5", "0"]
    assert label_order(numbers) == ["-1", "0", "2", "2.5", "10"]
    # the independent reference: sort by the numeric value
    assert label_order(numbers) == sorted(numbers, key=float)
    assert label_order(["b", "10", "a", "2"]) == ["10", "2", "a", "b"]  # mixed: as strings


def test_1_and_1_0_are_one_class_and_10_comes_after_2(tmp_path: Path) -> None:
    ds = _custom(_jsonl(tmp_path / "t.jsonl", [1, 1.0, "1.0", 2, "10", 10.0, "2"] * 3))
    assert ds.label_names == ["1", "2", "10"]
    everything = np.concatenate([ds.train.labels, ds.eval.labels])
    assert sorted(np.bincount(everything).tolist()) == [6, 6, 9]


def test_a_nan_label_is_refused_with_its_row(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "t.jsonl", ["a", "b", float("nan"), "a"])
    assert "NaN" in path.read_text()
    with pytest.raises(FedpeftError, match=r"row 3: the label is nan, not a class"):
        read_table(path, "text", "label")
    csv = tmp_path / "t.csv"
    csv.write_text("text,label\nx,a\ny,nan\n")
    with pytest.raises(FedpeftError, match=r"row 2: the label is 'nan'"):
        read_table(csv, "text", "label")


def test_a_list_label_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FedpeftError, match=r"row 2: the label is a list"):
        read_table(_jsonl(tmp_path / "t.jsonl", ["a", ["b"]]), "text", "label")


def test_non_utf8_bytes_are_refused_with_their_line(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_bytes(b"text,label\nfine,a\ncaf\xe9,b\n")
    with pytest.raises(FedpeftError, match=r"line 3: byte 0xe9 is not UTF-8"):
        read_table(path, "text", "label")


def test_a_byte_order_mark_is_not_part_of_the_first_column(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_bytes("\ufefftext,label\nx,a\ny,b\n".encode())
    assert read_table(path, "text", "label") == (["x", "y"], ["a", "b"])


def test_label_names_fix_the_class_order_and_refuse_strangers(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "t.jsonl", ["neg", "pos", "neg", "pos"] * 3)
    ds = _custom(path, "data.label_names=['pos','neg','neutral']")
    assert ds.label_names == ["pos", "neg", "neutral"]  # classes absent from a file stay
    assert set(np.concatenate([ds.train.labels, ds.eval.labels]).tolist()) == {0, 1}
    with pytest.raises(FedpeftError, match=r"labels \['pos'\] that are not among the classes"):
        _custom(path, "data.label_names=['neg','other']")
    with pytest.raises(FedpeftError, match="name a class twice"):
        _custom(path, "data.label_names=['1','1.0']")
    with pytest.raises(FedpeftError, match="applies to `data.dataset = 'custom'` only"):
        load_config(overrides=["data.label_names=['a','b']"])


def test_label_names_may_be_numbers_as_the_labels_are(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "t.jsonl", [0, 1, 2, 1.0] * 3)
    ds = _custom(path, "data.label_names=[2, 1.0, 0]")
    assert ds.label_names == ["2", "1", "0"]
    everything = np.concatenate([ds.train.labels, ds.eval.labels])
    assert np.bincount(everything).tolist() == [3, 6, 3]  # 2 → 0, 1 and 1.0 → 1, 0 → 2
    with pytest.raises(FedpeftError, match="`data.label_names.0`"):
        _custom(path, "data.label_names=[true, false]")


def test_a_column_of_scores_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Every distinct value is a class: a score or id column gives as many classes as rows."""
    scores = _jsonl(tmp_path / "s.jsonl", [round(0.01 * i, 2) for i in range(40)])
    with caplog.at_level("WARNING", logger="fedpeft.data.registry"):
        assert len(_custom(scores).label_names) == 40
    assert "40 distinct labels in 40 rows" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="fedpeft.data.registry"):
        _custom(_jsonl(tmp_path / "c.jsonl", list(range(12)) * 3))  # 12 classes, 3 rows each
    assert "distinct labels" not in caplog.text


def _csv_rows(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("text,label\n" + "".join(f"{t},{y}\n" for t, y in rows))
    return path


def _said(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]


def test_labels_that_differ_only_in_case_stay_apart_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    labels = ["Pos", "pos", "POS", "neg", "True", "true"]
    path = _csv_rows(tmp_path / "t.csv", [(f"t{i}", labels[i % 6]) for i in range(60)])
    with caplog.at_level("WARNING"):
        assert len(_custom(path).label_names) == 6  # not merged
        _custom(path)  # the same data again (a run's per-class report): not said again
    case = [m for m in _said(caplog) if "differ only in case" in m]
    assert case == [
        f"data file {path} has labels that differ only in case, kept as separate classes: "
        "'POS' / 'Pos' / 'pos'; 'True' / 'true'; if they are one class, spell them the same "
        "in the file"
    ]
    caplog.clear()
    checks.forget_said()  # else the same sentence would be held back, whatever the rule
    with caplog.at_level("WARNING"):
        _custom(path, f"data.label_names={sorted(set(labels))}")
    assert not [m for m in _said(caplog) if "differ only in case" in m]


def test_two_spellings_of_one_number_are_named_but_json_numbers_are_not(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spelt = ["1.1", "1.10", "01", "1", "2"]
    path = _csv_rows(tmp_path / "t.csv", [(f"t{i}", spelt[i % 5]) for i in range(20)])
    with caplog.at_level("WARNING"):
        assert read_table(path, "text", "label")[1][:5] == ["1.1", "1.1", "1", "1", "2"]
    assert _said(caplog) == [
        f"data file {path} spells one class in several ways, read as numbers: '1.10' and "
        "'1.1' are one class, '1.1'; '01' and '1' are one class, '1'; if they are different "
        "classes, spell them as words (e.g. 'v1.10')"
    ]
    caplog.clear()
    with caplog.at_level("WARNING"):
        read_table(_jsonl(tmp_path / "n.jsonl", [1, 1.0, "1", 0]), "text", "label")
    assert _said(caplog) == []  # 1 and 1.0 are one number: the documented rule


def test_repeated_rows_and_evaluation_texts_seen_in_training_are_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rows = [(f"t{i}", str(i % 2)) for i in range(40)]
    train = _csv_rows(tmp_path / "train.csv", rows + rows[:10])
    evaluation = _csv_rows(tmp_path / "eval.csv", rows[:5] + [("new", "0")] * 15)
    with caplog.at_level("WARNING"):
        ds = _custom(train, f"data.eval_file={str(evaluation)!r}")
    assert len(ds.train) == 50  # nothing dropped
    assert _said(caplog) == [
        f"10 of the 50 rows of data file {train} repeat an earlier row (same text and label); "
        "they weigh those examples more: drop the copies if they are copies",
        f"5 of the 20 evaluation texts (data file {evaluation}) also appear in the training "
        "data: the accuracy is inflated; drop them from one of the two",
    ]


def test_the_held_out_tenth_is_drawn_over_rows_and_its_leaks_are_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The tenth is the same seeded draw of rows as every earlier run's (a resumed run sees
    its own split); repeated texts that fall on both sides are counted in one warning."""
    rows = [(f"t{i}", str(i % 2)) for i in range(300)]
    held = np.random.default_rng(0).permutation(600)[:60]  # `_custom` loads with seed 0
    path = _csv_rows(tmp_path / "t.csv", rows + rows[:200] + rows[:100])
    with caplog.at_level("WARNING"):
        ds = _custom(path)
    texts = [t for t, _ in rows + rows[:200] + rows[:100]]
    assert ds.eval.texts == [texts[i] for i in sorted(held)]
    shared = sum(1 for t in ds.eval.texts if t in set(ds.train.texts))
    assert shared > 0 and (
        f"{shared} of the 60 evaluation texts (the tenth held out of {path}) also appear in "
        "the training data" in caplog.text
    )


def test_classes_without_training_examples_and_a_tiny_eval_set_are_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    train = _csv_rows(tmp_path / "train.csv", [(f"t{i}", "ab"[i % 2]) for i in range(40)])
    evaluation = _csv_rows(tmp_path / "eval.csv", [(f"e{i}", "abc"[i % 3]) for i in range(9)])
    with caplog.at_level("WARNING"):
        _custom(train, f"data.eval_file={str(evaluation)!r}", "data.label_names=['a','b','c','d']")
    assert _said(caplog)[:2] == [
        f"2 of the 4 classes of {train} have no training example after the train/eval "
        "split and `data.train_size`: 'c', 'd'; the model cannot learn them: add examples "
        "or raise `data.train_size`",
        f"the evaluation set of {evaluation} has 9 examples: accuracy on 9 examples moves in "
        "steps of 1/9; give more (`data.eval_file`, `data.eval_size`)",
    ]  # the eval file's name, not the train file's (which it once said)
    caplog.clear()
    five = _csv_rows(tmp_path / "five.csv", [(f"f{i}", "ab"[i % 2]) for i in range(5)])
    with caplog.at_level("WARNING"):
        _custom(five)
    assert f"{five} has 1 example: accuracy on 1 example moves in steps of 1/1" in caplog.text


def test_a_file_trained_on_in_part_is_said(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The default `data.train_size` (2,000) draws from a user's larger file: said once;
    a file the size covers says nothing."""
    path = _csv_rows(tmp_path / "t.csv", [(f"t{i}", "ab"[i % 2]) for i in range(100)])
    with caplog.at_level("WARNING"):
        assert len(_custom(path, "data.train_size=30").train) == 30
    assert [m for m in _said(caplog) if "seeded" in m] == [
        f"training on a seeded 30 of the 90 training examples of {path} (`data.train_size`); "
        "set it to 90 (or more) to train on all of them"
    ]
    caplog.clear()
    with caplog.at_level("WARNING"):
        _custom(path, "data.train_size=90")
    assert not [m for m in _said(caplog) if "seeded" in m]
