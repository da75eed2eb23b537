"""Object detection: BCCD and COCO128 read from the real files, malformed annotations
refused, DETR-style targets, COCO mAP against hand-computed values, refusals up front, and
a tiny federated run through ``fedpeft run`` whose adapter loads with plain PEFT."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fedpeft.cli.main import app
from fedpeft.config import DataConfig, load_config
from fedpeft.data import load_dataset
from fedpeft.data.boxes import read_coco, read_voc
from fedpeft.data.detection import DetectionSplit, detection_split, normalised
from fedpeft.data.images import ImagePreprocess
from fedpeft.data.sources import Annotated, DetectionImages, dominant_class, find_local
from fedpeft.errors import FedpeftError
from fedpeft.server.detection import coco_scores

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "yolos_detect.toml"
needs_bccd = pytest.mark.skipif(
    find_local("bccd", ["BCCD/ImageSets/Main/test.txt"]) is None, reason="BCCD not found"
)
needs_coco128 = pytest.mark.skipif(
    find_local("coco128", ["annotations/instances_train2017.json"]) is None,
    reason="COCO128 not found",
)
PRE = ImagePreprocess(32, (0.5,) * 3, (0.5,) * 3)


@needs_bccd
def test_bccd_reads_its_voc_split_and_drops_the_two_zero_size_boxes() -> None:
    ds = load_dataset(DataConfig(dataset="bccd", train_size=None), 0)
    assert isinstance(ds.train, DetectionImages) and isinstance(ds.eval, DetectionImages)
    assert (len(ds.train), len(ds.eval)) == (292, 72)  # trainval, test
    assert ds.label_names == ["RBC", "WBC", "Platelets"]
    items = ds.train.items + ds.eval.items
    assert sum(len(a.boxes) for a in items) == 4888 - 2
    counts = np.bincount(np.concatenate([a.classes for a in items]), minlength=3)
    assert counts.tolist() == [4155 - 2, 372, 361]  # both zero-size boxes were RBCs
    for a in items:
        assert (a.boxes[:, 2] > a.boxes[:, 0]).all() and (a.boxes[:, 3] > a.boxes[:, 1]).all()
        assert (a.width, a.height) == (640, 480)


@needs_coco128
def test_coco128_keeps_crowds_apart_and_a_fixed_quarter_for_evaluation() -> None:
    a = load_dataset(DataConfig(dataset="coco128", train_size=None), 0)
    b = load_dataset(DataConfig(dataset="coco128", train_size=None), 7)
    assert isinstance(a.train, DetectionImages) and isinstance(a.eval, DetectionImages)
    assert isinstance(b.eval, DetectionImages)
    assert (len(a.train), len(a.eval)) == (96, 32)
    assert [x.path for x in a.eval.items] == [x.path for x in b.eval.items]  # any run.seed
    items = a.train.items + a.eval.items
    assert len({x.path for x in items}) == 128
    assert sum(len(x.boxes) for x in items) == 939
    assert sum(int(x.crowd.sum()) for x in items) == 10
    assert len(a.label_names) == 80 and a.label_names[0] == "person"
    assert sum(1 for x in items if not (~x.crowd).any()) == 2  # background images


@needs_bccd
def test_a_split_resizes_once_and_targets_are_normalised_centres() -> None:
    ds = load_dataset(DataConfig(dataset="bccd", train_size=3, eval_size=2), 0)
    assert isinstance(ds.train, DetectionImages)
    split = detection_split(ds.train, PRE, 3, train=True)
    assert split.images.shape == (3, 3, 32, 32) and split.images.dtype == torch.uint8
    item = split.items[0]
    x0, y0, x1, y1 = item.boxes[0].tolist()
    want = [(x0 + x1) / 1280, (y0 + y1) / 960, (x1 - x0) / 640, (y1 - y0) / 480]
    batch = split.collate(np.array([0, 1]), flip=np.array([True, False]))
    target = batch.model_inputs()["labels"][0]
    assert target["class_labels"].tolist() == item.classes.tolist()
    flipped = [1 - want[0], *want[1:]]
    assert target["boxes"][0].tolist() == pytest.approx(flipped, abs=1e-6)
    assert torch.equal(batch.pixel_values[0], split.collate(np.array([0])).pixel_values[0].flip(-1))
    assert split.labels.tolist() == [dominant_class(a) for a in split.items]


def _item(classes: list[int], crowd: list[bool] | None = None) -> Annotated:
    n = len(classes)
    boxes = np.tile(np.array([[0, 0, 10, 10]], dtype=np.float32), (n, 1))
    flags = np.array(crowd or [False] * n, dtype=bool)
    return Annotated(Path("x.jpg"), 100, 100, boxes, np.array(classes, dtype=np.int64), flags)


def test_dominant_class_is_the_most_boxes_ties_lowest_and_crowds_do_not_count() -> None:
    assert dominant_class(_item([2, 1, 2])) == 2
    assert dominant_class(_item([2, 1])) == 1
    assert dominant_class(_item([0, 3, 3], crowd=[False, True, True])) == 0
    assert dominant_class(_item([])) == -1
    classes, boxes = normalised(_item([0, 1], crowd=[False, True]))
    assert classes.tolist() == [0]
    assert boxes.tolist() == [pytest.approx([0.05, 0.05, 0.1, 0.1])]


VOC = """<annotation><filename>a.jpg</filename><size><width>64</width><height>48</height>
</size>{objects}</annotation>"""
OBJ = "<object><name>{name}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>" \
      "<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"  # fmt: skip


def _voc(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "a.xml"
    path.write_text(text)
    return path


def test_voc_reads_boxes_and_drops_zero_size_ones(tmp_path: Path) -> None:
    objects = OBJ.format(name="WBC", b=(1, 2, 30, 40)) + OBJ.format(name="RBC", b=(5, 5, 5, 9))
    item, dropped = read_voc(_voc(tmp_path, VOC.format(objects=objects)), ["RBC", "WBC"], tmp_path)
    assert dropped == 1 and item.classes.tolist() == [1]
    assert item.boxes.tolist() == [[1, 2, 30, 40]] and (item.width, item.height) == (64, 48)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("<annotation><filename>a.jpg", "is not valid XML"),
        ('<!DOCTYPE x [<!ENTITY a "b">]>' + VOC.format(objects=""), "DOCTYPE"),
        ("<annotation><filename>a.jpg</filename></annotation>", "not a Pascal VOC annotation"),
        (VOC.format(objects=OBJ.format(name="Dog", b=(1, 1, 5, 5))), "class 'Dog'; expected"),
        (VOC.format(objects="<object><name>RBC</name></object>"), "has no <bndbox>"),
        (VOC.format(objects=OBJ.format(name="RBC", b=(1, "x", 5, 5))), "numeric <ymin>"),
        (VOC.format(objects=OBJ.format(name="RBC", b=(10, 1, 5, 5))), "is inverted"),
        (VOC.format(objects=OBJ.format(name="RBC", b=(1, 1, 70, 5))), "outside its 64×48 image"),
        (VOC.replace("64", "-3").format(objects=""), "positive whole pixels"),
        (VOC.replace("64", "inf").format(objects=""), "finite numeric <width>"),
        (VOC.replace("48", "nan").format(objects=""), "finite numeric <height>"),
        (VOC.format(objects=OBJ.format(name="RBC", b=(1, 1, "inf", 5))), "finite numeric <xmax>"),
    ],
)
def test_malformed_voc_files_are_refused(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(FedpeftError, match=match):
        read_voc(_voc(tmp_path, text), ["RBC", "WBC"], tmp_path)


def _coco(tmp_path: Path, doc: object) -> Path:
    path = tmp_path / "instances.json"
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


def _doc(*boxes: list[float], category: int = 3) -> dict[str, object]:
    return {
        "categories": [{"id": 3, "name": "cat"}, {"id": 1, "name": "person"}],
        "images": [{"id": 7, "file_name": "b.jpg", "width": 50, "height": 40}],
        "annotations": [
            {"image_id": 7, "category_id": category, "bbox": b, "iscrowd": int(i == 1)}
            for i, b in enumerate(boxes)
        ],
    }


def test_coco_reads_classes_in_id_order_with_crowds_and_zero_size_boxes(tmp_path: Path) -> None:
    items, names = read_coco(
        _coco(tmp_path, _doc([1, 2, 10, 5], [0, 0, 50, 40], [3, 3, 0, 4])), tmp_path
    )
    assert names == ["person", "cat"]
    (item,) = items
    assert item.classes.tolist() == [1, 1] and item.crowd.tolist() == [False, True]
    assert item.boxes.tolist() == [[1, 2, 11, 7], [0, 0, 50, 40]]
    assert item.path == tmp_path / "b.jpg"


@pytest.mark.parametrize(
    ("doc", "match"),
    [
        ("{not json", "is not a COCO instances file"),
        ("[" * 5000 + "]" * 5000, "is not a COCO instances file"),  # beyond json's recursion
        ({"images": [], "annotations": []}, "is not a COCO instances file"),
        (_doc([1, 2, -1, 5]), "negative width or height"),
        (_doc([45, 2, 10, 5]), "outside its 50×40 image"),
        (_doc([1, 2, 3, 4], category=9), "names image 7 or category 9"),
        (_doc([1, 2, "a", 4]), "needs image_id, category_id and bbox"),
        (  # a string "0" would read as a crowd region, never trained on
            {**_doc(), "annotations": [{**_doc([1, 2, 3, 4])["annotations"][0], "iscrowd": "0"}]},  # type: ignore[index]
            "an `iscrowd` of 0 or 1",
        ),
        (
            '{"categories": [{"id": 1e999, "name": "x"}], "images": [], "annotations": []}',
            "is not a COCO instances file",
        ),
        (
            '{"categories": [], "images": [], "annotations": [{"image_id": 1e999}]}',
            "needs image_id",
        ),
        ({**_doc(), "images": 2 * _doc()["images"]}, "listed twice"),  # type: ignore[operator]
        (
            {**_doc(), "categories": [{"id": 3, "name": "a"}, {"id": 3, "name": "b"}]},
            "listed twice",
        ),
    ],
)
def test_malformed_coco_files_are_refused(tmp_path: Path, doc: object, match: str) -> None:
    with pytest.raises(FedpeftError, match=match):
        read_coco(_coco(tmp_path, doc), tmp_path)


def test_an_image_of_another_size_than_its_annotation_is_refused(tmp_path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (20, 10)).save(tmp_path / "b.jpg")
    items, _ = read_coco(_coco(tmp_path, _doc([1, 2, 10, 5])), tmp_path)
    with pytest.raises(FedpeftError, match="is 20×10 but its annotation says 50×40"):
        detection_split(DetectionImages(items), PRE, 2, train=True)


def _scored_split(items: list[Annotated]) -> DetectionSplit:
    images = torch.zeros(len(items), 3, 8, 8, dtype=torch.uint8)
    return DetectionSplit(images, items, DetectionImages(items).labels, PRE, 2)


def _xywh(*boxes: tuple[float, float, float, float]) -> np.ndarray:
    return np.array([[x0, y0, x1 - x0, y1 - y0] for x0, y0, x1, y1 in boxes], dtype=np.float64)


def _truth(*boxes: tuple[float, float, float, float], crowd: tuple[bool, ...] = ()) -> Annotated:
    n = len(boxes)
    flags = np.array(crowd or (False,) * n, dtype=bool)
    b = np.array(boxes, dtype=np.float32)
    return Annotated(Path("x.jpg"), 100, 100, b, np.zeros(n, dtype=np.int64), flags)


def test_map_is_one_for_exact_boxes_and_crowd_hits_are_ignored() -> None:
    split = _scored_split([_truth((10, 10, 40, 40), (50, 50, 90, 80), crowd=(False, True))])
    boxes = _xywh((10, 10, 40, 40), (52, 50, 90, 80))[None]  # the second lies on the crowd
    scores = coco_scores(split, boxes, np.array([[0.9, 0.95]]), np.zeros((1, 2), dtype=np.int64))
    assert scores == pytest.approx({"map_50_95": 1, "map_50": 1, "map_75": 1, "mar_100": 1})


def test_map_matches_coco_101_point_interpolation_by_hand() -> None:
    """Two boxes; detections by score: hit (0.9), miss (0.8), hit at IoU 0.6 (0.7). At IoU
    0.5 precision is 1 up to recall ½, then ⅔: AP = (51·1 + 50·⅔)/101 over COCO's 101
    recall points. At 0.75 the third is a miss too: AP = 51/101."""
    split = _scored_split([_truth((0, 0, 50, 50), (60, 60, 100, 100))])
    # IoU((60,60,100,100), (60,60,100,84)) = 40·24 / (40·40) = 0.6
    boxes = _xywh((0, 0, 50, 50), (0, 60, 30, 90), (60, 60, 100, 84))[None]
    scores = np.array([[0.9, 0.8, 0.7]])
    result = coco_scores(split, boxes, scores, np.zeros((1, 3), dtype=np.int64))
    assert result["map_50"] == pytest.approx((51 + 50 * 2 / 3) / 101)
    assert result["map_75"] == pytest.approx(51 / 101)
    assert result["mar_100"] == pytest.approx(np.mean([1.0] * 3 + [0.5] * 7))


@pytest.mark.parametrize(
    ("sets", "match"),
    [
        (["peft.method='prompt'"], "not offered for `model.task` 'detect'.*detect: yolos"),
        (["model.name='tiny-vit'"], "needs a detector, but `tiny-vit` is a vit model"),
        (["data.dataset='cifar10'"], "needs images with boxes.*bccd, coco128"),
        (["model.task='classify'"], "is not offered; detect: yolos models on bccd, coco128"),
        (["data.partition='natural'"], "follows device tiers or documents"),
        (["server.aggregator='kd_fusion'"], "proxy set"),
        (["data.client_test_fraction=0.2"], "client_test_fraction"),
        (["model.image_size=50"], "multiple of 16"),
        (["privacy.mode='dpsgd'", "privacy.noise_multiplier=1.0"], "set loss"),
        (["allocation.enabled=true", "allocation.catalogue.prompt_tokens=[8]"], "offers"),
    ],
)
def test_unsupported_detection_combinations_are_refused_up_front(
    sets: list[str], match: str
) -> None:
    from fedpeft.server.config_checks import check_names

    with pytest.raises(FedpeftError, match=match):
        check_names(load_config(EXAMPLE, ["model.name='tiny-yolos'", *sets]))


def test_a_hub_detector_offline_and_uncached_fails_in_one_sentence() -> None:
    from fedpeft.server.config_checks import check_names

    with pytest.raises(FedpeftError, match="weights do not ship with fedpeft.*`tiny-yolos`"):
        check_names(load_config(EXAMPLE))  # hustvl/yolos-tiny; the tests run offline


def test_the_example_config_is_valid_and_auto_picks_detect() -> None:
    from fedpeft.server.config_checks import check_names
    from fedpeft.server.instruct import task_kind

    cfg = load_config(EXAMPLE, ["model.name='tiny-yolos'", "model.image_size=64"])
    check_names(cfg)  # nothing loads
    assert task_kind(load_config(EXAMPLE, ["model.task='auto'"])) == "detect"


@needs_bccd
def test_fedpeft_run_detect_and_the_adapter_loads_with_plain_peft(tmp_path: Path) -> None:
    """2 clients skewed by dominant class × 2 rounds on BCCD at 64 px: mAP in every
    round's metrics; the exported LoRA (both heads in ``modules_to_save``, the classes in
    config.json) loads with plain PEFT onto YOLOS and scores what the run recorded."""
    from peft import PeftModel
    from transformers import AutoConfig, YolosForObjectDetection

    from fedpeft.models import get_model_spec, load_detector
    from fedpeft.server.detection import evaluate_detection
    from fedpeft.server.task import build_data

    sets = [
        "model.name='tiny-yolos'",
        "model.image_size=64",
        "data.train_size=12",
        "data.eval_size=6",
        "data.num_clients=2",
        "data.alpha=1.0",
        "run.rounds=2",
        "run.threads=1",
        "client.batch_size=4",
        "eval.batch_size=4",
        f"run.output_dir='{tmp_path}'",
    ]
    args = ["run", "-c", str(EXAMPLE), *[x for s in sets for x in ("--set", s)]]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    run_dir = next(tmp_path.glob("yolos-detect-bccd-*"))
    rounds = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(rounds) == 2
    for r in rounds:
        assert {"map_50", "map_50_95", "map_75", "mar_100", "loss"} <= r["eval"].keys()
        assert 0 <= r["eval"]["map_50_95"] <= r["eval"]["map_50"] <= 1
        assert r["eval"]["accuracy"] == r["eval"]["map_50_95"]
    final = rounds[-1]["eval"]
    folder = run_dir / "adapter"
    adapter = json.loads((folder / "adapter_config.json").read_text())
    assert adapter["peft_type"] == "LORA"
    assert sorted(adapter["modules_to_save"]) == ["bbox_predictor", "class_labels_classifier"]
    config = AutoConfig.from_pretrained(str(folder))
    assert [config.id2label[i] for i in range(3)] == ["RBC", "WBC", "Platelets"]
    base = load_detector(get_model_spec("tiny-yolos"), 3, 0, ["RBC", "WBC", "Platelets"])
    assert isinstance(base, YolosForObjectDetection)
    model = PeftModel.from_pretrained(base, str(folder))
    data = build_data(load_config(run_dir / "config.toml"))
    assert isinstance(data.eval, DetectionSplit)
    again = evaluate_detection(model, data.eval, 4, torch.device("cpu"))
    assert again == pytest.approx(final, rel=1e-4, abs=1e-6)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary  # the run folder is complete


@needs_coco128
def test_allocate_prices_both_detection_heads(tmp_path: Path) -> None:
    """``fedpeft allocate`` on COCO128: YOLOS' cost model (80 classes + no object, boxes)."""
    out = tmp_path / "alloc.json"
    sets = [
        "model.name='tiny-yolos'",
        "data.dataset='coco128'",
        "data.train_size=24",
        "data.partition='iid'",
        "allocation.enabled=true",
        "allocation.catalogue.prompt_tokens=[]",
        "allocation.catalogue.others=['bitfit', 'head']",
    ]
    args = ["allocate", "-c", str(EXAMPLE), *[x for s in sets for x in ("--set", s)]]
    result = CliRunner().invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    record = json.loads(out.read_text())
    assert len(record["clients"]) == 4 and all(c["chosen"] for c in record["clients"])
