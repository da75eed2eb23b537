"""Custom images read as an image model reads them: real PNG/JPEG files of different sizes in
a folder of class subfolders or a table of paths, decoded once, classes as the text path
orders them, the same seeded held-out split, a cache that a changed file does not fool."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fedpeft.config import load_config
from fedpeft.data import custom_images, heldout_train, load_dataset
from fedpeft.data.custom_images import decode_image, decode_images
from fedpeft.data.image_files import list_images
from fedpeft.data.registry import held_out_tenth
from fedpeft.data.sources import ImageArrays
from fedpeft.errors import FedpeftError
from fedpeft.server.task import build_data
from tests.conftest import tiny_config
from tests.images_on_disk import COLOURS, picture, write_folder, write_table

SIDE = 32


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDPEFT_CACHE_DIR", str(tmp_path / "cache"))


def _load(train: Path, *extra: str, seed: int = 0, side: int | None = SIDE):  # type: ignore[no-untyped-def]
    cfg = load_config(
        overrides=["data.dataset='custom'", f"data.train_file={str(train)!r}", *extra]
    )
    return load_dataset(cfg.data, seed, side)


def test_a_folder_gives_every_image_at_the_model_side_with_its_folder_as_class(
    tmp_path: Path,
) -> None:
    n = write_folder(tmp_path / "train", 6)
    write_folder(tmp_path / "eval", 2, seed=1)
    ds = _load(tmp_path / "train", f"data.eval_file={str(tmp_path / 'eval')!r}")
    assert ds.label_names == ["cat", "dog", "fish"] and ds.name == "train"
    assert isinstance(ds.train, ImageArrays) and isinstance(ds.eval, ImageArrays)
    assert ds.train.images.shape == (n, SIDE, SIDE, 3) and ds.train.images.dtype == np.uint8
    assert ds.eval.labels.tolist() == [0, 0, 1, 1, 2, 2]
    # each class keeps its colour through decoding and resizing (JPEG and PNG alike)
    for cls, rgb in COLOURS.items():
        mean = ds.train.images[ds.train.labels == ds.label_names.index(cls)].mean(axis=(0, 1, 2))
        dark = 0.75 if cls != "fish" else 1.0  # stripes darken a quarter of the rows/columns
        np.testing.assert_allclose(mean, np.asarray(rgb) * dark, atol=30)


def test_a_table_of_relative_paths_is_read_like_the_folder(tmp_path: Path) -> None:
    table = write_table(tmp_path, "train.csv", 5)
    ds = _load(table, "data.eval_file=" + repr(str(table)), "data.train_size=100")
    assert ds.label_names == ["cat", "dog", "fish"] and ds.name == "train"
    assert ds.train.labels.tolist() == [0] * 5 + [1] * 5 + [2] * 5
    rows = table.read_text().splitlines()[1:]
    first = np.asarray(Image.open(tmp_path / rows[0].split(",")[0]).convert("RGB"))
    assert ds.train.images[0].mean() == pytest.approx(first.mean(), abs=3)


def test_a_table_of_absolute_paths_and_another_column_name(tmp_path: Path) -> None:
    write_folder(tmp_path / "imgs", 3)
    rows = ["photo\tkind"] + [
        f"{p}\t{p.parent.name}" for p in sorted((tmp_path / "imgs").rglob("*.*"))
    ]
    table = tmp_path / "elsewhere" / "t.tsv"
    table.parent.mkdir()
    table.write_text("\n".join(rows))
    ds = _load(table, "data.image_column='photo'", "data.label_column='kind'")
    assert ds.label_names == ["cat", "dog", "fish"] and len(ds.train) + len(ds.eval) == 9


def test_the_held_out_tenth_is_seeded_and_the_same_rows_as_for_text(tmp_path: Path) -> None:
    write_folder(tmp_path / "train", 10)  # 30 images: 3 held out
    a, b, c = (_load(tmp_path / "train", seed=s) for s in (4, 4, 5))
    assert (len(a.train), len(a.eval)) == (27, 3)
    assert np.array_equal(a.eval.images, b.eval.images) and np.array_equal(
        a.eval.labels, b.eval.labels
    )
    assert not np.array_equal(a.eval.images, c.eval.images)
    # the rows held out are the text path's: a text table of the same 30 rows holds out the
    # same row numbers, here visible through the labels in file order
    held, _ = held_out_tenth(30, 4)
    all_labels = np.repeat([0, 1, 2], 10)
    assert a.eval.labels.tolist() == all_labels[held].tolist()
    text = tmp_path / "t.csv"
    text.write_text(
        "text,label\n"
        + "".join(f"t{i},{['cat', 'dog', 'fish'][y]}\n" for i, y in enumerate(all_labels))
    )
    t = _load(text, seed=4, side=None)
    assert t.eval.texts == [f"t{i}" for i in held]


def test_label_names_order_the_classes_and_may_name_absent_ones(tmp_path: Path) -> None:
    write_folder(tmp_path / "train", 2)
    ds = _load(tmp_path / "train", "data.label_names=['fish','bird','cat','dog']")
    assert ds.label_names == ["fish", "bird", "cat", "dog"]
    whole = np.sort(np.concatenate([ds.train.labels, ds.eval.labels]))
    assert whole.tolist() == [0, 0, 2, 2, 3, 3]


def test_a_class_folder_outside_label_names_is_refused(tmp_path: Path) -> None:
    write_folder(tmp_path / "train", 2)
    with pytest.raises(FedpeftError, match=r"class folders \['fish'\] that are not among"):
        _load(tmp_path / "train", "data.label_names=['cat','dog']")
    write_folder(tmp_path / "eval", 1, classes=("cat", "bird"))
    with pytest.raises(FedpeftError, match=r"eval has class folders \['bird'\]"):
        _load(tmp_path / "train", f"data.eval_file={str(tmp_path / 'eval')!r}")


def test_numeric_class_folders_sort_as_numbers_and_match_numeric_label_names(
    tmp_path: Path,
) -> None:
    for name in ("10", "2", "1"):
        (tmp_path / "t" / name).mkdir(parents=True)
        picture("cat", (20, 20), 0).save(tmp_path / "t" / name / "a.png")
    assert _load(tmp_path / "t").label_names == ["1", "2", "10"]
    assert _load(tmp_path / "t", "data.label_names=[10, 2, 1.0]").label_names == ["10", "2", "1"]


def test_images_of_any_mode_and_size_become_rgb_at_the_side(tmp_path: Path) -> None:
    big = picture("dog", (400, 300), 0)
    cases = {
        "big.jpg": big,
        "gray.png": big.convert("L"),
        "palette.gif": big.convert("P"),
        "alpha.webp": big.convert("RGBA"),
        "cmyk.jpg": big.convert("CMYK"),
        "deep.png": Image.fromarray(np.asarray(big.convert("L"), dtype=np.uint16) * 257),
        "tiny.bmp": picture("dog", (3, 5), 0),
    }
    for name, im in cases.items():
        im.save(tmp_path / name)
        pixels = decode_image(tmp_path / name, SIDE)
        assert pixels.shape == (SIDE, SIDE, 3) and pixels.dtype == np.uint8, name
        assert 60 < pixels.mean() < 160, name  # not black, not white: 16-bit scaled, not clipped


@pytest.mark.parametrize(
    ("mode", "pixels"),
    [("I", np.full((6, 6), 40_000, np.int32)), ("F", np.full((6, 6), 0.5, np.float32))],
)
def test_32_bit_and_float_images_are_refused_not_clipped(
    tmp_path: Path, mode: str, pixels: np.ndarray
) -> None:
    """PIL's convert clipped a 32-bit TIFF of 16-bit values to all white and a float TIFF in
    [0, 1] to all black, and the run trained on them unsaid."""
    Image.fromarray(pixels, mode=mode).save(tmp_path / "wide.tif")
    with pytest.raises(FedpeftError, match=f"wide.tif: its pixels are .*PIL mode {mode}.*8- or"):
        decode_images([tmp_path / "wide.tif"], SIDE)


def test_one_channel_is_pils_luma_and_a_gray_file_is_kept_exactly(tmp_path: Path) -> None:
    """``channels = 1`` (a Fashion-MNIST run's predictions): a colour image becomes PIL's
    ``L`` (ITU-R 601-2 luma); a grayscale file at the side comes back byte for byte."""
    colour = picture("fish", (40, 30), 0)
    colour.save(tmp_path / "c.png")
    want = np.asarray(colour.convert("L").resize((SIDE, SIDE), Image.Resampling.BILINEAR))
    assert np.array_equal(decode_image(tmp_path / "c.png", SIDE, 1), want[..., None])
    gray = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
    Image.fromarray(gray).save(tmp_path / "g.png")
    assert np.array_equal(decode_images([tmp_path / "g.png"], 28, 1), gray[None, ..., None])
    rgb = decode_images([tmp_path / "g.png"], 28)  # three equal channels
    assert np.array_equal(rgb, np.repeat(gray[None, ..., None], 3, axis=-1))


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    im = Image.new("RGB", (40, 20), (255, 255, 255))
    im.paste((0, 0, 0), (0, 0, 20, 20))  # left half black
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to view"
    im.save(tmp_path / "phone.jpg", exif=exif)
    pixels = decode_image(tmp_path / "phone.jpg", 20).mean(axis=2)
    assert pixels[:8].mean() < 40 and pixels[-8:].mean() > 215  # black on top once upright


def test_the_cache_serves_a_second_load_and_a_changed_file_is_decoded_again_replacing_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_folder(tmp_path / "train", 3)
    first = _load(tmp_path / "train", "data.train_size=100")
    assert len(list((tmp_path / "cache" / "images").glob("custom-*.images.npy"))) == 2

    def refuse(*_: object) -> None:
        raise AssertionError("decoded again")

    with monkeypatch.context() as m:
        m.setattr("fedpeft.data.custom_images.decode_images", refuse)
        again = _load(tmp_path / "train", "data.train_size=100")
    assert np.array_equal(np.asarray(first.train.images), np.asarray(again.train.images))
    # one file replaced by another picture (same name): a new key, decoded afresh
    target = tmp_path / "train" / "cat" / "0.jpg"
    picture("fish", (30, 30), 9).save(target)
    os.utime(target, ns=(1, 1))
    changed = _load(tmp_path / "train", "data.train_size=100")
    assert not np.array_equal(np.asarray(first.train.images), np.asarray(changed.train.images))
    # the changed split's new entry replaced its old one: still one train and one eval entry,
    # also after another subset of the same folder
    entries = lambda: sorted((tmp_path / "cache" / "images").glob("custom-*"))  # noqa: E731
    assert len(entries()) == 6  # images, labels and their record, of train and eval
    _load(tmp_path / "train", "data.train_size=3")
    assert len(entries()) == 6
    # another folder keeps its own entries beside these
    write_folder(tmp_path / "other", 2)
    _load(tmp_path / "other")
    assert len(entries()) == 12


def test_hidden_and_non_image_files_are_left_out_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    n = write_folder(tmp_path / "train", 3)
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not a picture")
    (tmp_path / "train" / "dog" / "._0.jpg").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (tmp_path / "train" / ".ipynb_checkpoints").mkdir()
    picture("cat", (20, 20), 1).save(tmp_path / "train" / "loose.png")
    nested = tmp_path / "train" / "fish" / "2024"
    nested.mkdir()
    picture("fish", (20, 20), 1).save(nested / "deep.png")
    with caplog.at_level(logging.WARNING, logger="fedpeft.data.image_files"):
        ds = _load(tmp_path / "train", "data.train_size=100")
    assert len(ds.train) + len(ds.eval) == n + 1  # the nested image counts, the rest not
    assert ds.label_names == ["cat", "dog", "fish"]
    text = caplog.text
    assert "skipped 1 file(s) that are not images" in text and "notes.txt" in text
    assert "1 image(s) directly in it belong to no class" in text and "loose.png" in text


@pytest.mark.parametrize("partition", ["iid", "dirichlet", "pathological", "natural"])
def test_every_partition_splits_custom_images(tmp_path: Path, partition: str) -> None:
    write_folder(tmp_path / "train", 12)
    cfg = tiny_config(
        tmp_path,
        "model.name='tiny-vit'",
        "data.dataset='custom'",
        f"data.train_file={str(tmp_path / 'train')!r}",
        "data.num_clients=3",
        f"data.partition={partition!r}",
        "data.min_partition_size=1",
    )
    data = build_data(cfg)
    pooled = np.sort(np.concatenate(data.partitions))
    assert len(np.unique(pooled)) == len(pooled)  # no image held by two clients
    if partition == "pathological":  # one class a client (flwr may leave a class unused)
        assert all(len(np.unique(data.train.labels[p])) == 1 for p in data.partitions)
    else:
        assert pooled.tolist() == list(range(len(data.train)))  # every image held
    assert [p.num_examples for p in data.profiles] == [len(p) for p in data.partitions]
    assert data.dataset.label_names == ["cat", "dog", "fish"]


def test_an_audit_s_non_members_are_the_images_the_run_left_out(tmp_path: Path) -> None:
    write_folder(tmp_path / "train", 8)  # 24 images: 2 held out for eval, 22 train
    cfg = load_config(
        overrides=[
            "data.dataset='custom'",
            f"data.train_file={str(tmp_path / 'train')!r}",
            "data.train_size=15",
        ]
    )
    used, held = load_dataset(cfg.data, 0, SIDE), heldout_train(cfg.data, 0, SIDE)
    assert isinstance(held, ImageArrays) and (len(used.train), len(held)) == (15, 7)
    full = load_dataset(cfg.data.model_copy(update={"train_size": None}), 0, SIDE).train
    key = lambda a: sorted(x.tobytes() for x in np.asarray(a.images))  # noqa: E731
    assert sorted(key(used.train) + key(held)) == key(full)


def _old_selection(root: Path, seed: int, train_size: int, eval_size: int):  # type: ignore[no-untyped-def]
    """What the images were before subsets were drawn on the listing: every listed file
    decoded, the held-out tenth taken, then ``load_dataset``'s seeded subsets."""
    cfg = load_config(overrides=["data.dataset='custom'", f"data.train_file={str(root)!r}"])
    files = list_images(root, cfg.data)
    every = decode_images(files.paths, SIDE)
    held, kept = held_out_tenth(len(files.paths), seed)
    rng = np.random.default_rng(seed)
    train = kept[np.sort(rng.choice(len(kept), size=train_size, replace=False))]
    evaluation = held[np.sort(rng.choice(len(held), size=eval_size, replace=False))]
    return every[train], every[evaluation]


def test_only_the_drawn_subsets_are_decoded_and_they_are_the_same_images_as_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder of 60 images with ``train_size = 7``, ``eval_size = 2``: 9 files decoded,
    the very images (in the same order) that decoding all 60 and subsetting gave; the
    files outside the subsets are never opened, so a corrupt one there goes unnoticed."""
    write_folder(tmp_path / "train", 20)
    want_train, want_eval = _old_selection(tmp_path / "train", 3, 7, 2)
    decoded: list[Path] = []
    real = custom_images.decode_image

    def counting(path: Path, side: int, channels: int = 3) -> np.ndarray:
        decoded.append(path)
        return real(path, side, channels)

    monkeypatch.setattr(custom_images, "decode_image", counting)
    extra = ("data.train_size=7", "data.eval_size=2")
    ds = _load(tmp_path / "train", *extra, seed=3)
    assert len(decoded) == 9
    assert np.array_equal(np.asarray(ds.train.images), want_train)
    assert np.array_equal(np.asarray(ds.eval.images), want_eval)
    # a file outside the subsets that does not decode: not drawn, never opened
    outside = sorted(set((tmp_path / "train").rglob("*.*")) - set(decoded))[0]
    outside.write_bytes(b"not an image")
    monkeypatch.setenv("FEDPEFT_CACHE_DIR", str(tmp_path / "cache2"))
    again = _load(tmp_path / "train", *extra, seed=3)
    assert np.array_equal(np.asarray(again.train.images), want_train)
    # an audit's non-members are decoded when asked for: the 47 other train images
    cfg = load_config(
        overrides=["data.dataset='custom'", f"data.train_file={str(tmp_path / 'train')!r}"]
    )
    outside.unlink()
    decoded.clear()
    held = heldout_train(cfg.data.model_copy(update={"train_size": 7}), 3, SIDE)
    assert len(held) == len(decoded) == 47


def test_a_cache_folder_that_cannot_be_written_warns_once_and_the_run_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    write_folder(tmp_path / "train", 3)
    (tmp_path / "a-file").write_text("not a folder")
    monkeypatch.setenv("FEDPEFT_CACHE_DIR", str(tmp_path / "a-file" / "cache"))
    monkeypatch.setattr("fedpeft.data.cache._warned", False)
    with caplog.at_level(logging.WARNING, logger="fedpeft.data.cache"):
        first = _load(tmp_path / "train")
        again = _load(tmp_path / "train")
    assert np.array_equal(first.train.images, again.train.images) and len(first.train) == 8
    warnings = [r.getMessage() for r in caplog.records if r.name == "fedpeft.data.cache"]
    assert len(warnings) == 1 and "FEDPEFT_CACHE_DIR" in warnings[0], warnings
    assert "a-file" in warnings[0] and "going on without it" in warnings[0]


@pytest.mark.parametrize("damage", ["truncated", "bytes changed", "another shape"])
def test_a_damaged_cache_file_is_decoded_again_not_trusted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    write_folder(tmp_path / "train", 3)
    first = _load(tmp_path / "train", "data.eval_size=1")
    (stored,) = [
        p
        for p in (tmp_path / "cache" / "images").glob("custom-*.images.npy")
        if np.load(p, mmap_mode="r").shape[0] == len(first.train)
    ]
    data = stored.read_bytes()
    if damage == "truncated":
        stored.write_bytes(data[: len(data) - SIDE * SIDE * 3])
    elif damage == "bytes changed":
        stored.write_bytes(data[:-100] + bytes(255 - b for b in data[-100:]))
    else:  # a valid array of the same length, written by something else
        np.save(stored, np.zeros((len(first.train), 4, 4, 3), dtype=np.uint8))
    calls: list[int] = []
    real = custom_images.decode_images
    monkeypatch.setattr(
        custom_images, "decode_images", lambda paths, side: calls.append(1) or real(paths, side)
    )
    again = _load(tmp_path / "train", "data.eval_size=1")
    assert calls == [1]  # the train split only: the eval entry was whole
    assert np.array_equal(np.asarray(again.train.images), np.asarray(first.train.images))
    _load(tmp_path / "train", "data.eval_size=1")  # rewritten, then trusted again
    assert calls == [1]


def test_a_table_path_from_home_is_expanded_like_the_train_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_folder(tmp_path / "home" / "imgs", 2)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    rows = ["image,label"] + [
        f"~/imgs/{p.parent.name}/{p.name},{p.parent.name}"
        for p in sorted((tmp_path / "home" / "imgs").rglob("*.*"))
    ]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    ds = _load(tmp_path / "t.csv")
    assert len(ds.train) + len(ds.eval) == 6
