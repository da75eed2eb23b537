"""``fedpeft predict`` on a run over a built-in dataset (SST-2, tiny-llama classifier: a
decoder reads the last token, so a trailing space changes its prediction): new texts are
cleaned as the dataset's loader cleaned the run's, and the dataset's own files, with
integer labels, are scored against the run's class names."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from fedpeft.data import data_dirs
from fedpeft.runtime.local import run_local
from tests.conftest import tiny_config
from tests.predict_cli import csv_rows, predict_cli

LLAMA = [
    "model.name='tiny-llama'",
    "model.task='classify'",
    "run.rounds=1",
    "data.train_size=32",
    "data.eval_size=872",
]


def _dev() -> Path:
    for folder in data_dirs():
        if (folder / "sst2" / "dev.tsv").is_file():
            return folder / "sst2" / "dev.tsv"
    pytest.skip("SST-2 is not in a local data folder")


@pytest.fixture(scope="module")
def sst2_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1 round of tiny-llama on 32 SST-2 examples, evaluated on the whole dev file."""
    _dev()
    return run_local(tiny_config(tmp_path_factory.mktemp("sst2"), *LLAMA)).run_dir


def _predict(*args: str | Path) -> tuple[int, str]:
    code, _, output = predict_cli(*args)
    return code, output


def _sentences(n: int) -> list[str]:
    with _dev().open(newline="") as f:
        return [r["sentence"] for r in csv.DictReader(f, delimiter="\t")][:n]


def test_texts_are_cleaned_as_the_datasets_loader_cleaned_the_runs(
    sst2_run: Path, tmp_path: Path
) -> None:
    """SST-2's dev sentences end with a space, which its loader strips: predicting them as
    the file has them gives what predicting them stripped gives."""
    raw = _sentences(40)
    assert all(s.endswith(" ") for s in raw)
    preds = {}
    for name, texts in {"raw": raw, "stripped": [s.strip() for s in raw]}.items():
        given, out = tmp_path / f"{name}.csv", tmp_path / f"{name}-preds.csv"
        with given.open("w", newline="") as f:
            csv.writer(f).writerows([["text"], *([t] for t in texts)])
        code, output = _predict(sst2_run, "--file", given, "--out", out)
        assert code == 0, output
        preds[name] = [(r["predicted"], r["probability"]) for r in csv_rows(out)]
    assert preds["raw"] == preds["stripped"]


def test_the_datasets_own_file_with_class_ids_gives_the_runs_final_figures(
    sst2_run: Path, tmp_path: Path
) -> None:
    """SST-2's dev.tsv (`sentence`, `label` 0/1: class ids, the run's classes being
    `negative`/`positive`) is scored, and gives the run's final accuracy over all of it."""
    summary = json.loads((sst2_run / "summary.json").read_text())
    out = tmp_path / "preds.csv"
    code, output = _predict(sst2_run, "--file", _dev(), "--text-column", "sentence", "--out", out)
    assert code == 0, output
    assert f"accuracy {summary['final_accuracy']:.4f}" in output and "872 labelled" in output
    assert "872 labelled rows, read as class ids 0 … 1)" in output  # said, not silent
    labels = [r["label"] for r in csv_rows(out)]
    ok = [r["predicted"] == ["negative", "positive"][int(r["label"])] for r in csv_rows(out)]
    assert set(labels) == {"0", "1"} and sum(ok) / len(ok) == summary["final_accuracy"]
    code, output = _predict(
        sst2_run, "--file", _dev(), "--text-column", "sentence", "--label-column", ""
    )
    assert code == 0 and "accuracy" not in output, output
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\ngood,1\nbad,2\n")
    code, output = _predict(sst2_run, "--file", bad)
    assert code == 2 and "nor, all whole numbers, its class ids 0 … 1" in output, output
    code, output = _predict(sst2_run, "--file", bad, "--label-column", "gold")
    assert code == 2 and "has no column `gold`" in output, output


def test_class_names_other_than_the_exported_heads_are_refused(
    sst2_run: Path, tmp_path: Path
) -> None:
    run = Path(shutil.copytree(sst2_run, tmp_path / "run"))
    partitions = json.loads((run / "partitions.json").read_text())
    partitions["label_names"] = ["positive", "negative"]
    (run / "partitions.json").write_text(json.dumps(partitions))
    code, output = _predict(run, "--text", "fine")
    assert code == 2 and "but adapter/config.json's id2label gives ['negative'" in output, output
