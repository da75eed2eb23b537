"""``fedpeft run`` on a person's own images, end to end through the CLI: a folder of class
subfolders and a table of paths, each trained for real on a tiny image model; and every
broken layout refused with exit code 2 and one sentence naming the file and the fix."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from fedpeft.cli.main import app
from tests.images_on_disk import picture, write_folder, write_table

TINY = [
    "model.name='tiny-vit'",
    "data.dataset='custom'",
    "data.num_clients=3",
    "data.min_partition_size=1",
    "run.rounds=2",
    "run.threads=1",
    "run.autocast='off'",
]


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDPEFT_CACHE_DIR", str(tmp_path / "cache"))


def _run(tmp_path: Path, *sets: str) -> tuple[int, str]:
    args = [
        x
        for s in (*TINY, f"run.output_dir={str(tmp_path / 'runs')!r}", *sets)
        for x in ("--set", s)
    ]
    result = CliRunner().invoke(app, ["run", *args])
    return result.exit_code, " ".join(result.output.split())


def _run_dir(tmp_path: Path) -> Path:
    (run,) = (tmp_path / "runs").iterdir()
    return run


@pytest.mark.parametrize(
    ("model", "method"),
    [("tiny-vit", "lora"), ("tiny-clip", "prompt")],  # CLIP: the folder names are its prompts
)
def test_a_folder_of_class_subfolders_trains_end_to_end(
    tmp_path: Path, model: str, method: str
) -> None:
    write_folder(tmp_path / "train", 12)
    n_eval = write_folder(tmp_path / "eval", 4, seed=1)
    code, out = _run(
        tmp_path,
        f"model.name={model!r}",
        f"peft.method={method!r}",
        f"data.train_file={str(tmp_path / 'train')!r}",
        f"data.eval_file={str(tmp_path / 'eval')!r}",
    )
    assert code == 0, out
    run = _run_dir(tmp_path)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["rounds_completed"] == 2
    assert json.loads((run / "partitions.json").read_text())["label_names"] == [
        "cat",
        "dog",
        "fish",
    ]
    classes = json.loads((run / "classes.json").read_text())
    assert classes["label_names"] == ["cat", "dog", "fish"]
    assert classes["support"] == [4, 4, 4] and sum(classes["support"]) == n_eval
    assert "fish" in (run / "report.md").read_text()  # the per-class table names the classes
    assert (run / "adapter").is_dir()


def test_a_table_of_image_paths_trains_end_to_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fedpeft.runtime.local.simulator as simulator
    import fedpeft.server.task as task_module

    built: list[object] = []
    build = task_module.build_task

    def counted(*args: Any, **kwargs: Any) -> Any:
        built.append(args)
        return build(*args, **kwargs)

    monkeypatch.setattr(simulator, "build_task", counted)
    monkeypatch.setattr(task_module, "build_task", counted)  # the report's import finds it
    table = write_table(tmp_path / "data", "photos.csv", 10)  # 30 rows: 3 held out
    code, out = _run(
        tmp_path,
        "model.name='tiny-efficientnet'",
        "data.partition='iid'",
        f"data.train_file={str(table)!r}",
    )
    assert code == 0, out
    run = _run_dir(tmp_path)
    classes = json.loads((run / "classes.json").read_text())
    assert classes["label_names"] == ["cat", "dog", "fish"] and sum(classes["support"]) == 3
    clients = json.loads((run / "partitions.json").read_text())["clients"]
    assert sum(c["num_examples"] for c in clients.values()) == 27
    assert len(built) == 1  # the run's data and model were loaded once, the report included


def _empty(root: Path) -> Path:
    (root / "train").mkdir()
    return root / "train"


def _no_images(root: Path) -> Path:
    write_folder(root / "train", 2)
    (root / "train" / "owl").mkdir()
    (root / "train" / "owl" / "readme.txt").write_text("to do")
    return root / "train"


def _corrupt(root: Path) -> Path:
    write_folder(root / "train", 2)
    (root / "train" / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))
    return root / "train"


def _truncated(root: Path) -> Path:
    write_folder(root / "train", 2)
    picture("cat", (60, 60), 3).save(root / "whole.jpg", quality=95)
    data = (root / "whole.jpg").read_bytes()
    (root / "train" / "cat" / "cut.jpg").write_bytes(data[: len(data) // 2])
    return root / "train"


def _text_named_as_image(root: Path) -> Path:
    write_folder(root / "train", 2)
    (root / "train" / "fish" / "notes.jpg").write_text("a text file with an image's name")
    return root / "train"


def _one_class(root: Path) -> Path:
    write_folder(root / "train", 3, classes=("cat",))
    return root / "train"


def _loop(root: Path) -> Path:
    write_folder(root / "train", 2)
    (root / "train" / "dog" / "again").symlink_to(root / "train", target_is_directory=True)
    return root / "train"


def _self_link(root: Path) -> Path:
    write_folder(root / "train", 2)
    (root / "train" / "cat" / "me.jpg").symlink_to(root / "train" / "cat" / "me.jpg")
    return root / "train"


def _two_spellings(root: Path) -> Path:
    write_folder(root / "train", 1, classes=("1", "01", "2"))
    return root / "train"


def _missing_path(root: Path) -> Path:
    table = write_table(root, "t.csv", 2)
    table.write_text(table.read_text() + "pics/gone.png,cat\n")
    return table


def _text_table(root: Path) -> Path:
    (root / "t.csv").write_text("text,label\ngood,pos\nbad,neg\n")
    return root / "t.csv"


def _nowhere(root: Path) -> Path:
    return root / "no" / "such" / "folder"


def _archive(root: Path) -> Path:
    (root / "photos.zip").write_bytes(b"PK\x05\x06" + bytes(18))  # an empty zip
    return root / "photos.zip"


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (_empty, "holds no class subfolders; put each class's images in"),
        (_no_images, "owl holds no images (.jpg"),
        (_corrupt, "image file(s) cannot be decoded (/"),
        (_truncated, "cut.jpg: OSError: image file is truncated"),
        (_text_named_as_image, "notes.jpg: not an image PIL can read"),
        (_one_class, "has 1 class folder(s); need 2 or more"),
        (_loop, "again leads back to a folder above it (a symlink loop)"),
        (_self_link, "me.jpg is neither a file nor a folder"),
        (_two_spellings, "class folders '01' and '1' both name class '1'"),
        (_missing_path, "1 image path(s) in `image` name no file (row 7: 'pics/gone.png')"),
        (_text_table, "has no column `image` (found: `text`, `label`); set `data.image_column`"),
        (_nowhere, "does not exist; point `data.train_file`/`eval_file` at a folder"),
        (_archive, "photos.zip is neither a folder of class subfolders nor a table"),
    ],
)
def test_a_broken_layout_is_one_sentence_and_exit_code_2(
    tmp_path: Path, make: Callable[[Path], Path], expected: str
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    code, out = _run(tmp_path, f"data.train_file={str(make(data))!r}")
    assert code == 2, out
    assert expected in out
    assert "Traceback" not in out and out.count("error:") == 1
    assert not (tmp_path / "runs").exists()  # refused before a run folder is written


def test_a_text_model_given_an_image_folder_is_refused(tmp_path: Path) -> None:
    write_folder(tmp_path / "train", 2)
    code, out = _run(
        tmp_path, "model.name='tiny-bert'", f"data.train_file={str(tmp_path / 'train')!r}"
    )
    assert code == 2 and "is a folder (images, one subfolder a class), but model" in out, out
    assert "takes text" in out and out.count("error:") == 1


def test_the_image_and_label_columns_must_differ(tmp_path: Path) -> None:
    table = write_table(tmp_path, "t.csv", 2)
    code, out = _run(tmp_path, f"data.train_file={str(table)!r}", "data.image_column='label'")
    assert code == 2 and "`data.image_column` and `data.label_column` are both 'label'" in out
