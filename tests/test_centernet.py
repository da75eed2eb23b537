"""CenterNet on an EfficientNet-Lite trunk (``models/lite_detect.py``): Gaussian targets,
decoding by hand, real optimisation lowering the loss on synthetic boxes, refusals up front,
and one federated round on BCCD through ``fedpeft run`` whose adapter loads with plain PEFT."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from fedpeft.cli.main import app
from fedpeft.config import load_config
from fedpeft.data import DetectionSplit
from fedpeft.data.sources import find_local
from fedpeft.errors import FedpeftError
from fedpeft.models import get_model_spec, load_detector
from fedpeft.models.lite_detect import TINY_CENTERNET, decode, gaussian_radius, targets

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "lite0_detect.toml"
needs_bccd = pytest.mark.skipif(
    find_local("bccd", ["BCCD/ImageSets/Main/test.txt"]) is None, reason="BCCD not found"
)


def _label(cls: list[int], boxes: list[list[float]]) -> dict[str, torch.Tensor]:
    return {"class_labels": torch.tensor(cls), "boxes": torch.tensor(boxes)}


def test_targets_peak_at_one_in_the_centre_cell_with_its_size_and_offset() -> None:
    """A box centred at (5.25, 3.5) cells of an 8×8 grid, 4×2 cells: Y = 1 at cell (3, 5)
    of its class only, falling off around it; size (4, 2), offset (0.25, 0.5)."""
    heat, per_image = targets([_label([1], [[5.25 / 8, 3.5 / 8, 0.5, 0.25]])], 3, 8, 8)
    assert heat.shape == (1, 3, 8, 8)
    assert heat[0, 1, 3, 5] == 1 and int(heat.eq(1).sum()) == 1
    assert heat[0, 0].abs().sum() == 0 and heat[0, 2].abs().sum() == 0
    assert 0 < heat[0, 1, 3, 6] < 1 and heat[0, 1, 3, 6] > heat[0, 1, 3, 7]
    cell, wh, off = per_image[0]
    assert cell.tolist() == [3 * 8 + 5]
    torch.testing.assert_close(wh, torch.tensor([[4.0, 2.0]]))
    torch.testing.assert_close(off, torch.tensor([[0.25, 0.5]]))


def test_gaussian_radius_grows_with_the_box_and_is_never_negative() -> None:
    r = gaussian_radius(torch.tensor([0.5, 4.0, 16.0]), torch.tensor([0.5, 4.0, 16.0]))
    assert r.tolist() == sorted(r.tolist()) and r[0] == 0 and r[2] > r[1] >= 1


def test_decoding_recovers_a_box_from_a_hand_made_heatmap() -> None:
    """One peak (class 1, cell (3, 5), logit 3) beside a lower neighbour that the 3×3
    max-pool suppresses: the first detection is that box with score σ(3), in YOLOS' form."""
    heat = torch.full((1, 3, 8, 8), -10.0)
    heat[0, 1, 3, 5] = 3.0
    heat[0, 1, 3, 6] = 1.0  # not a peak: its neighbour is higher
    size, offset = torch.zeros(1, 2, 8, 8), torch.zeros(1, 2, 8, 8)
    size[0, :, 3, 5] = torch.tensor([4.0, 2.0])
    offset[0, :, 3, 5] = torch.tensor([0.25, 0.5])
    logits, boxes = decode(heat, size, offset, k=5)
    assert logits.shape == (1, 5, 4) and boxes.shape == (1, 5, 4)
    torch.testing.assert_close(boxes[0, 0], torch.tensor([5.25 / 8, 3.5 / 8, 0.5, 0.25]))
    probs = logits.softmax(-1)
    assert int(probs[0, 0, :3].argmax()) == 1
    assert float(probs[0, 0, 1]) == pytest.approx(float(torch.sigmoid(torch.tensor(3.0))))
    assert float(probs[0, 0, 1] + probs[0, 0, 3]) == pytest.approx(1.0)
    assert float(probs[0, 1, :3].max()) < 1e-4  # the neighbour was suppressed


def test_targets_then_decoding_round_trip_every_box() -> None:
    """Heatmap logits at the targets' peaks, sizes and offsets written at the centres:
    decoding returns the two boxes (and their classes) exactly."""
    boxes = [[0.3, 0.6, 0.2, 0.3], [0.71, 0.2, 0.4, 0.1]]
    heat, per_image = targets([_label([2, 0], boxes)], 3, 16, 16)
    logits_in = torch.where(heat.eq(1), torch.tensor(4.0), torch.tensor(-8.0))
    size, offset = torch.zeros(1, 2, 16, 16), torch.zeros(1, 2, 16, 16)
    cell, wh, off = per_image[0]
    size.view(1, 2, -1)[0, :, cell] = wh.T
    offset.view(1, 2, -1)[0, :, cell] = off.T
    logits, found = decode(logits_in, size, offset, k=2)
    got = sorted(zip(logits[0, :, :3].argmax(-1).tolist(), found[0].tolist(), strict=True))
    assert [c for c, _ in got] == [0, 2]
    torch.testing.assert_close(torch.tensor([b for _, b in got]), torch.tensor(boxes[::-1]))


def _synthetic(n: int = 4, side: int = 64) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """Dark images with one bright square each: red is class 0, green class 1."""
    g = torch.Generator().manual_seed(0)
    x = torch.full((n, 3, side, side), -1.0) + 0.05 * torch.randn(n, 3, side, side, generator=g)
    labels = []
    for i in range(n):
        s = 12 + 4 * (i % 3)
        x0, y0 = 6 + 9 * i, 40 - 8 * i
        x[i, i % 2, y0 : y0 + s, x0 : x0 + s] = 1.0
        box = [(x0 + s / 2) / side, (y0 + s / 2) / side, s / side, s / side]
        labels.append(_label([i % 2], [box]))
    return x, labels


def test_training_lowers_the_detection_loss_on_synthetic_boxes() -> None:
    """Real optimisation (Adam on the whole tiny random detector, its random trunk being
    no feature extractor, 40 steps on four images): CenterNet's loss falls to under half of
    where it began (3.29 → 1.04 when written)."""
    model = load_detector(get_model_spec(TINY_CENTERNET), 2, 0, ["red", "green"], 64)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, labels = _synthetic()
    model.train()
    losses = []
    for _ in range(40):
        loss = model(pixel_values=x, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0] / 2, losses[::5]


@pytest.mark.parametrize(
    ("sets", "match"),
    [
        (["peft.method='prompt'"], "not offered.*centernet models on bccd, coco128 with"),
        (["data.dataset='cifar10'"], "needs images with boxes"),
        (["model.task='classify'"], "is not offered; detect: yolos models"),
        (["model.image_size=48"], "multiple of 32"),
        (["privacy.mode='dpsgd'", "privacy.noise_multiplier=1.0"], "boxes of the whole batch"),
    ],
)
def test_unsupported_combinations_are_refused_up_front(sets: list[str], match: str) -> None:
    from fedpeft.server.config_checks import check_names

    with pytest.raises(FedpeftError, match=match):
        check_names(load_config(EXAMPLE, ["model.name='tiny-centernet'", *sets]))


def test_the_example_is_valid_and_auto_picks_detect() -> None:
    from fedpeft.server.config_checks import check_names
    from fedpeft.server.instruct import task_kind

    check_names(load_config(EXAMPLE))  # the real Lite0 detector: nothing loads here
    cfg = load_config(EXAMPLE, ["model.task='auto'", "data.dataset='cifar10'"])
    assert task_kind(cfg) == "detect"  # the detector decides, whatever the data


@needs_bccd
def test_one_federated_round_on_bccd_and_the_adapter_loads_with_plain_peft(
    tmp_path: Path,
) -> None:
    """2 clients × 1 round on BCCD at 64 px (tiny trunk): mAP in the round's metrics; the
    exported LoRA (the head in ``modules_to_save``) loads with plain PEFT and scores what
    the run recorded."""
    from peft import PeftModel

    from fedpeft.server.detection import evaluate_detection
    from fedpeft.server.task import build_data

    sets = [
        "model.name='tiny-centernet'",
        "model.image_size=64",
        "data.train_size=12",
        "data.eval_size=6",
        "data.num_clients=2",
        "data.alpha=1.0",
        "run.rounds=1",
        "run.threads=1",
        "run.autocast='off'",  # re-evaluated in float32 below, to the digit
        "client.batch_size=4",
        "eval.batch_size=4",
        f"run.output_dir='{tmp_path}'",
    ]
    args = ["run", "-c", str(EXAMPLE), *[x for s in sets for x in ("--set", s)]]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    run_dir = next(tmp_path.glob("lite0-detect-bccd-*"))
    rounds = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(rounds) == 1
    final = rounds[0]["eval"]
    assert {"map_50", "map_50_95", "map_75", "mar_100", "loss"} <= final.keys()
    assert 0 <= final["map_50_95"] <= final["map_50"] <= 1
    clients = [json.loads(x) for x in (run_dir / "clients.jsonl").read_text().splitlines()]
    assert len(clients) == 2 and all(c["bytes_up"] > 0 for c in clients)
    folder = run_dir / "adapter"
    adapter = json.loads((folder / "adapter_config.json").read_text())
    assert adapter["peft_type"] == "LORA" and adapter["modules_to_save"] == ["detection_head"]
    names = ["RBC", "WBC", "Platelets"]
    base = load_detector(get_model_spec(TINY_CENTERNET), 3, 0, names, 64)
    model = PeftModel.from_pretrained(base, str(folder))
    data = build_data(load_config(run_dir / "config.toml"))
    assert isinstance(data.eval, DetectionSplit)
    again = evaluate_detection(model, data.eval, 4, torch.device("cpu"))
    assert again == pytest.approx(final, rel=1e-4, abs=1e-6)
