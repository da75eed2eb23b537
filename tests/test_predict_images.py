"""``fedpeft predict`` on images, through the CLI: a tiny real image run (tiny-vit + LoRA on a
folder of class subfolders, PNG and JPEG of many sizes, ambiguous gray images among the eval
ones) predicts its own eval folder with the run's final accuracy, macro-F1 and confusion
matrix exactly — which the fresh, untrained model does not. The table layout, single
``--image`` files and a folder of loose images give the same predictions for the same
files; chunked decoding gives the same logits as one pass; a Fashion-MNIST run predicts its
eval images exported as grayscale PNGs with its final figures. Broken inputs and the wrong
modality end with exit code 2 and one sentence."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fedpeft.config import load_config
from fedpeft.data.sources import find_local
from fedpeft.runtime.local import run_local
from fedpeft.server.classes import class_report
from tests.images_on_disk import picture, write_folder
from tests.predict_cli import csv_rows, predict_cli, refused

NAMES = ["cat", "dog", "fish"]
TINY = [
    "model.name='tiny-vit'",
    "data.num_clients=3",
    "data.min_partition_size=1",
    "run.rounds=2",
    "run.threads=1",
    "run.autocast='off'",
]


@pytest.fixture(scope="module", autouse=True)
def _own_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FEDPEFT_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``train/<class>/`` (12 a class) and ``eval/<class>/`` (4 a class, and 2 gray images
    a class that match none, so the figures depend on the exact model and pixels)."""
    root = tmp_path_factory.mktemp("pictures")
    write_folder(root / "train", 12)
    write_folder(root / "eval", 4, seed=1)
    for k, cls in enumerate(NAMES):
        for i in range(2):
            picture("owl", (20 + 9 * i, 40 - 7 * k), 500 + 10 * k + i).save(
                root / "eval" / cls / f"gray-{i}.png"
            )
    return root


@pytest.fixture(scope="module")
def run(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 2-round tiny-vit + LoRA run on the custom folders."""
    out = tmp_path_factory.mktemp("image-run")
    cfg = load_config(
        overrides=[
            *TINY,
            "data.dataset='custom'",
            f"data.train_file={str(data / 'train')!r}",
            f"data.eval_file={str(data / 'eval')!r}",
            f"run.output_dir={str(out / 'runs')!r}",
        ]
    )
    return run_local(cfg).run_dir


def _folder_rows(run: Path, folder: Path, tmp_path: Path, *args: str) -> list[dict[str, str]]:
    out = tmp_path / "folder.csv"
    code, _, output = predict_cli(run, "--file", folder, "--out", out, *args)
    assert code == 0, output
    return csv_rows(out)


def test_predicting_the_eval_folder_gives_the_runs_final_figures(
    run: Path, data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "preds.csv"
    code, _, output = predict_cli(run, "--file", data / "eval", "--out", out)
    assert code == 0, output
    rows = csv_rows(out)
    assert list(rows[0]) == ["image", "label", "predicted", "probability"]
    files = sorted((data / "eval").glob("*/*"))  # the class folders' files in name order
    assert [r["image"] for r in rows] == [str(f) for f in files]
    assert [r["label"] for r in rows] == [f.parent.name for f in files]
    labels = np.asarray([NAMES.index(r["label"]) for r in rows])
    preds = np.asarray([NAMES.index(r["predicted"]) for r in rows])
    summary = json.loads((run / "summary.json").read_text())
    classes = json.loads((run / "classes.json").read_text())
    assert float((labels == preds).mean()) == summary["final_accuracy"]
    assert 0 < summary["final_accuracy"] < 1  # the gray images: not every image is easy
    assert class_report(labels, preds, NAMES).confusion == classes["confusion"]
    assert f"accuracy {summary['final_accuracy']:.4f}" in output
    assert f"macro-F1 {summary['final_macro_f1']:.4f}" in output
    assert "against the class folders (18 images)" in output

    assert "· round 2 · 18 images" in output
    assert [r["probability"] for r in rows] == _runs_own_probabilities(run)
    # the comparison tells the final state from another: the fresh model predicts otherwise
    assert (
        class_report(labels, _fresh_predictions(run, files), NAMES).confusion
        != (classes["confusion"])
    )


def test_the_exported_vit_head_names_its_classes(run: Path) -> None:
    """An image classifier's adapter folder holds its classes' names, as a text head's does
    (it held transformers' LABEL_0… before), so predict can check partitions.json by it."""
    head = json.loads((run / "adapter" / "config.json").read_text())
    assert [head["id2label"][str(i)] for i in range(len(NAMES))] == NAMES


def _runs_own_probabilities(run: Path) -> list[str]:
    """The top probability of each of the run's eval examples, as the run's own data
    (``build_data``: its loader, decoding and eval split) gives them to its final model, in
    the batches of its evaluation, as the CSV spells them."""
    from fedpeft.server.evaluate import predict_logits
    from fedpeft.server.task import build_data
    from fedpeft.server.trained import final_model, open_finished

    finished = open_finished(run)
    final = final_model(finished, build_data(finished.cfg))
    task = final.task
    logits = predict_logits(final.model, task.data.eval, task.eval_batch_size, task.device)
    return [f"{p:.6f}" for p in torch.softmax(logits, dim=-1).max(dim=-1).values.tolist()]


def _fresh_predictions(run: Path, files: list[Path]) -> np.ndarray:
    """The classes the run's model predicts with its adapter as initialised (no state
    loaded): what a predictor that loaded the wrong state would give."""
    from fedpeft.data.custom_images import decode_images
    from fedpeft.server.evaluate import predict_logits
    from fedpeft.server.task import build_task
    from fedpeft.server.trained import image_data, image_form, open_finished

    finished = open_finished(run)
    side, channels = image_form(finished)
    task = build_task(finished.cfg, image_data(finished, decode_images(files, side, channels)))
    logits = predict_logits(task.model, task.data.eval, task.eval_batch_size, task.device)
    return logits.argmax(-1).numpy()


def test_a_table_of_paths_gives_the_folders_predictions(
    run: Path, data: Path, tmp_path: Path
) -> None:
    want = _folder_rows(run, data / "eval", tmp_path, "--top-k", "3")
    table = data / "eval-table.jsonl"  # relative paths: from the table's folder
    lines = [{"photo": str(Path(r["image"]).relative_to(data)), "label": r["label"]} for r in want]
    lines[-1]["label"] = ""  # an unlabelled row is predicted, not scored
    table.write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = tmp_path / "table.csv"
    code, _, output = predict_cli(
        run, "--file", table, "--image-column", "photo", "--top-k", "3", "--out", out
    )
    assert code == 0, output
    rows = csv_rows(out)
    assert list(rows[0]) == [
        "photo", "label", "predicted", "probability",
        "predicted_2", "probability_2", "predicted_3", "probability_3",
    ]  # fmt: skip
    assert [r["photo"] for r in rows] == [x["photo"] for x in lines]  # as the table spells them
    drop = ("image", "photo", "label")
    assert [{k: v for k, v in r.items() if k not in drop} for r in rows] == [
        {k: v for k, v in r.items() if k not in drop} for r in want
    ]
    assert "(17 labelled rows)" in output
    for r in rows:  # top-k: every class once, most likely first
        assert sorted([r["predicted"], r["predicted_2"], r["predicted_3"]]) == NAMES
        probs = [float(r[k]) for k in ("probability", "probability_2", "probability_3")]
        assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1, abs=1e-5)
    (data / "t.csv").write_text("image\n" + "\n".join(x["photo"] for x in lines) + "\n")
    code, _, output = predict_cli(run, "--file", data / "t.csv")  # the run's column, no labels
    assert code == 0 and "the first 10 of 18 rows" in output and "accuracy" not in output


def test_single_images_print_a_line_each(run: Path, data: Path, tmp_path: Path) -> None:
    want = {r["image"]: r for r in _folder_rows(run, data / "eval", tmp_path, "--top-k", "2")}
    given = [str(data / "eval" / "dog" / "1.png"), str(data / "eval" / "fish" / "gray-0.png")]
    code, stdout, output = predict_cli(
        run, "--image", given[0], "--image", given[1], "--top-k", "2"
    )
    assert code == 0, output
    lines = [line.split("\t") for line in stdout.splitlines()]
    assert [cells[0] for cells in lines] == given  # path, class, probability, class, probability
    for cells in lines:
        r = want[cells[0]]
        assert cells[1::2] == [r["predicted"], r["predicted_2"]]
        assert [float(p) for p in cells[2::2]] == pytest.approx(
            [float(r["probability"]), float(r["probability_2"])], abs=1e-4
        )


def test_a_folder_of_loose_images_is_predicted_unscored(
    run: Path, data: Path, tmp_path: Path
) -> None:
    want = {
        Path(r["image"]).relative_to(data / "eval"): r
        for r in _folder_rows(run, data / "eval", tmp_path)
    }
    loose = tmp_path / "loose"
    loose.mkdir()
    for rel in want:
        shutil.copy(data / "eval" / rel, loose / f"{rel.parent}-{rel.name}")
    (loose / "notes.txt").write_text("not an image")  # skipped with a warning
    (loose / ".DS_Store").write_bytes(b"\0")  # hidden: left out
    out = tmp_path / "loose.csv"
    code, _, output = predict_cli(run, "--file", loose, "--out", out)
    assert code == 0, output
    assert "skipped 1 file(s) that are not images by their suffix (notes.txt)" in output
    assert "accuracy" not in output
    rows = csv_rows(out)
    assert list(rows[0]) == ["image", "predicted", "probability"]
    got = {Path(r["image"]).name: (r["predicted"], r["probability"]) for r in rows}
    assert got == {
        f"{k.parent}-{k.name}": (r["predicted"], r["probability"]) for k, r in want.items()
    }


def test_a_file_name_that_is_not_utf8_is_written_as_its_bytes(
    run: Path, data: Path, tmp_path: Path
) -> None:
    """Linux names are bytes: a Latin-1 ``café.png`` reaches --out's CSV as the bytes it has."""
    loose = tmp_path / "latin1"
    loose.mkdir()
    source = next((data / "eval").glob("*/*.png"))
    shutil.copy(source, loose / os.fsdecode(b"caf\xe9.png"))
    out = tmp_path / "latin1.csv"
    code, _, output = predict_cli(run, "--file", loose, "--out", out)
    assert code == 0, output
    assert b"caf\xe9.png," in out.read_bytes()


def test_chunks_give_the_logits_of_one_pass(
    run: Path, data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fedpeft.cli.predict_images as pi

    whole = _folder_rows(run, data / "eval", tmp_path, "--batch-size", "4", "--top-k", "3")
    decoded: list[int] = []
    decode = pi.decode_images

    def counting(paths: list[Path], side: int, channels: int = 3) -> np.ndarray:
        decoded.append(len(paths))
        return decode(paths, side, channels)

    monkeypatch.setattr(pi, "CHUNK", 10)  # rounded down to whole batches of 4: 8
    monkeypatch.setattr(pi, "decode_images", counting)
    chunked = _folder_rows(run, data / "eval", tmp_path, "--batch-size", "4", "--top-k", "3")
    assert decoded == [8, 8, 2]
    assert chunked == whole  # every probability to 6 digits


def _corrupt(root: Path) -> list[str]:
    write_folder(root / "new", 1)
    (root / "new" / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))
    return ["--file", str(root / "new")]


def _truncated(root: Path) -> list[str]:
    picture("cat", (60, 60), 3).save(root / "whole.jpg", quality=95)
    data = (root / "whole.jpg").read_bytes()
    (root / "cut.jpg").write_bytes(data[: len(data) // 2])
    return ["--image", str(root / "cut.jpg")]


def _an_image_as_file(root: Path) -> list[str]:
    picture("cat", (20, 20), 0).save(root / "whole.jpg")
    return ["--file", str(root / "whole.jpg")]


def _text_as_image(root: Path) -> list[str]:
    (root / "notes.png").write_text("a text file with an image's name")
    return ["--image", str(root / "notes.png")]


def _empty(root: Path) -> list[str]:
    (root / "new").mkdir()
    return ["--file", str(root / "new")]


def _no_images(root: Path) -> list[str]:
    (root / "new").mkdir()
    (root / "new" / "readme.txt").write_text("to do")
    return ["--file", str(root / "new")]


def _unknown_class(root: Path) -> list[str]:
    write_folder(root / "new", 1, classes=("cat", "owl"))
    return ["--file", str(root / "new")]


def _missing_path(root: Path) -> list[str]:
    picture("cat", (20, 20), 0).save(root / "a.png")
    (root / "t.csv").write_text("image,label\na.png,cat\ngone.png,dog\n")
    return ["--file", str(root / "t.csv")]


def _text_table(root: Path) -> list[str]:
    (root / "t.csv").write_text("text,label\ngood,cat\n")
    return ["--file", str(root / "t.csv")]


def _unknown_label(root: Path) -> list[str]:
    picture("cat", (20, 20), 0).save(root / "a.png")
    (root / "t.csv").write_text("image,label\na.png,owl\n")
    return ["--file", str(root / "t.csv")]


def _pipe(root: Path) -> list[str]:
    os.mkfifo(root / "x.jpg")
    return ["--image", str(root / "x.jpg")]


def _link_in_folder(root: Path) -> list[str]:
    (root / "new").mkdir()
    (root / "new" / "gone.jpg").symlink_to(root / "nowhere.jpg")
    return ["--file", str(root / "new")]


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (_corrupt, "1 of 4 image file(s) cannot be decoded ("),
        (_truncated, "cut.jpg: OSError: image file is truncated"),
        (_text_as_image, "notes.png: not an image PIL can read"),
        (_empty, "new holds no images (.jpg"),
        (_no_images, "new holds no images (.jpg, .jpeg, .png, .bmp, .webp, .gif, .tif, .tiff) "),
        (_unknown_class, "has class folders ['owl'] that are not among the run's classes"),
        (_missing_path, "1 image path(s) in `image` name no file (row 2: 'gone.png')"),
        (_text_table, "has no column `image` (found: `text`, `label`); name the image column"),
        (_unknown_label, "has labels ['owl'] in `label` that are not among the run's classes"),
        (_pipe, "x.jpg is not a regular file"),
        (_link_in_folder, "gone.jpg is neither a file nor a folder"),
        (lambda r: ["--image", str(r)], "is a folder; give a folder with --file"),
        (lambda r: ["--file", str(r / "gone")], "does not exist; check --file"),
        (_an_image_as_file, "whole.jpg is an image; give single images with --image"),
        (lambda r: ["--text", "a cat"], "classifies images, not texts; give images with --image"),
        (lambda r: ["--file", str(r), "--text-column", "x"], "classifies images, not texts"),
        (lambda r: [*_missing_path(r), "--image-column", "label"], "is the run's label column"),
        (lambda r: ["--image", "a.png", "--out", "p.csv"], "go with --file"),
        (lambda r: [*_empty(r), "--image-column", "p"], "so --image-column does not apply"),
        (lambda r: [*_empty(r), "--label-column", "y"], "so --label-column does not apply"),
        (lambda r: ["--image", "a.png", "--text", "b"], "(one of them)"),
    ],
)
def test_broken_inputs_are_one_sentence_and_exit_code_2(
    run: Path, tmp_path: Path, make: Callable[[Path], list[str]], expected: str
) -> None:
    refused(*predict_cli(run, *make(tmp_path))[::2], expected)


def test_a_missing_image_names_it(run: Path, tmp_path: Path) -> None:
    code, _, output = predict_cli(run, "--image", tmp_path / "gone.jpg")
    refused(code, output, f"--image {tmp_path / 'gone.jpg'} does not exist; check the path.")


needs_fmnist = pytest.mark.skipif(
    find_local("fashion_mnist", ["train-images-idx3-ubyte.gz"]) is None,
    reason="Fashion-MNIST not in a data folder",
)


@needs_fmnist
def test_a_fashion_mnist_run_predicts_its_eval_images_as_png_files(tmp_path: Path) -> None:
    """The built-in set's eval images exported as grayscale PNGs (a table, since class
    names such as ``T-shirt/top`` cannot be folder names) give the run's final figures:
    decoded at 28 × 28 in one channel, they are resized by the run's own batches."""
    from fedpeft.data import ImageArrays, load_dataset
    from fedpeft.server.trained import open_finished

    cfg = load_config(
        overrides=[
            *TINY,
            "model.name='tiny-efficientnet'",
            "data.dataset='fashion_mnist'",
            "data.train_size=90",
            "data.eval_size=40",
            "run.rounds=1",
            f"run.output_dir={str(tmp_path / 'runs')!r}",
        ]
    )
    run = run_local(cfg).run_dir
    finished = open_finished(run)
    evaluation = load_dataset(finished.cfg.data, finished.cfg.run.seed).eval
    assert isinstance(evaluation, ImageArrays) and evaluation.images.shape[1:] == (28, 28, 1)
    (tmp_path / "png").mkdir()
    rows = ["file,label"]
    for i, (pixels, label) in enumerate(zip(evaluation.images, evaluation.labels, strict=True)):
        Image.fromarray(pixels[..., 0]).save(tmp_path / "png" / f"{i}.png")
        rows.append(f'png/{i}.png,"{finished.label_names[label]}"')
    (tmp_path / "eval.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "preds.csv"
    code, _, output = predict_cli(
        run, "--file", tmp_path / "eval.csv", "--image-column", "file", "--out", out
    )
    assert code == 0, output
    got = csv_rows(out)
    labels = np.asarray([finished.label_names.index(r["label"]) for r in got])
    preds = np.asarray([finished.label_names.index(r["predicted"]) for r in got])
    summary = json.loads((run / "summary.json").read_text())
    classes = json.loads((run / "classes.json").read_text())
    assert float((labels == preds).mean()) == summary["final_accuracy"]
    assert class_report(labels, preds, finished.label_names).confusion == classes["confusion"]
    assert f"macro-F1 {summary['final_macro_f1']:.4f}" in output
    # and each probability is the one the run's own eval split gives (decoding the PNGs at
    # the model's 32 × 32 instead would change them in the third or fourth digit)
    assert [r["probability"] for r in got] == _runs_own_probabilities(run)
