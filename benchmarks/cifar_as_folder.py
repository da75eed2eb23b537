"""Custom images checked on real data: CIFAR-10 exported as a folder of class subfolders
must train as the built-in CIFAR-10 path does.

    PYTHONPATH=src .venv/bin/python benchmarks/cifar_as_folder.py [--out FILE.json]

The built-in path's own seeded draw (``data.train_size = 200``, ``data.eval_size = 500``,
seed 0) is exported from ``cifar10_jpg.zip`` into ``train/<class>/`` and ``eval/<class>/``
(same file names, so the folder order is the zip's and the partitions are the same), then
EfficientNet-Lite0 (real weights, ``model.image_size = 64``, every other setting default, 2
rounds) runs on each. What differs is only the resizing: the built-in path resizes 32 → 64
in each batch (torch, bilinear), the custom path once at decode (PIL, bilinear). About a
minute and a half on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from fedpeft.config import DataConfig, load_config
from fedpeft.data import load_dataset
from fedpeft.data.sources import find_local
from fedpeft.runtime.local import run_local

COMMON = ["model.name='efficientnet-lite0'", "model.image_size=64", "run.rounds=2"]


def export(root: Path) -> None:
    """The built-in subset's images as class folders; checked against its labels."""
    folder = find_local("cifar10", ["cifar10_jpg.zip"])
    assert folder is not None, "CIFAR-10 is not in a data folder"
    rng = np.random.default_rng(0)  # the registry's draw: train subset first, then eval
    picks = {
        "train": np.sort(rng.choice(50000, size=200, replace=False)),
        "test": np.sort(rng.choice(10000, size=500, replace=False)),
    }
    with zipfile.ZipFile(folder / "cifar10_jpg.zip") as z:
        for split, idx in picks.items():
            members = sorted(
                m for m in z.namelist() if m.startswith(f"{split}/") and m.endswith(".jpg")
            )
            for i in idx:
                _, cls, name = members[i].split("/")
                out = root / ("train" if split == "train" else "eval") / cls
                out.mkdir(parents=True, exist_ok=True)
                (out / name).write_bytes(z.read(members[i]))
    built_in = load_dataset(DataConfig(dataset="cifar10", train_size=200, eval_size=500), 0)
    for split, raw in (("train", built_in.train), ("eval", built_in.eval)):
        labels = [
            built_in.label_names.index(p.parent.name) for p in sorted((root / split).rglob("*.jpg"))
        ]
        assert labels == raw.labels.tolist(), f"{split}: not the built-in subset in its order"


def final(overrides: list[str], out: Path) -> dict[str, float]:
    result = run_local(load_config(overrides=[*COMMON, f"run.output_dir={str(out)!r}", *overrides]))
    summary = json.loads((result.run_dir / "summary.json").read_text())
    return {k: summary[k] for k in ("final_accuracy", "final_macro_f1")}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        export(root)
        figures = {
            "built_in": final(
                ["data.dataset='cifar10'", "data.train_size=200", "data.eval_size=500"],
                root / "runs",
            ),
        }
        os.environ["FEDPEFT_CACHE_DIR"] = str(root / "cache")  # the folder's arrays go with it
        figures["folder"] = final(
            [
                "data.dataset='custom'",
                f"data.train_file={str(root / 'train')!r}",
                f"data.eval_file={str(root / 'eval')!r}",
            ],
            root / "runs",
        )
    print(json.dumps(figures, indent=2))
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
