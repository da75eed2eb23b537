"""Shared fixtures: tiny configs that run in about a second on the tiny random BERT."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network

from fedpeft.aggregation.head_init import STATS_COUNT, STATS_SECOND, STATS_SUM  # noqa: E402
from fedpeft.config import ExperimentConfig, load_config  # noqa: E402


def tiny_config(tmp_path: Path, *extra: str) -> ExperimentConfig:
    """2 clients × 2 rounds of tiny-bert on 64 SST-2 examples."""
    base = [
        "model.name=tiny-bert",
        "data.num_clients=2",
        "run.rounds=2",
        "data.train_size=64",
        "data.eval_size=48",
        "data.partition=iid",
        "client.batch_size=16",
        "run.threads=1",
        "run.autocast='off'",  # float32 whatever the CPU (auto: bf16 where it is native)
        f"run.output_dir={str(tmp_path / 'runs')!r}",
    ]
    return load_config(overrides=[*base, *extra])


@pytest.fixture
def tiny(tmp_path: Path):  # type: ignore[no-untyped-def]
    return lambda *extra: tiny_config(tmp_path, *extra)


def class_stats(feats: torch.Tensor, labels: torch.Tensor, classes: int) -> dict[str, torch.Tensor]:
    """Class feature statistics of ``feats`` as a client sends them, computed directly."""
    import torch  # here: importing torch before fedpeft would skip its OpenMP wait policy

    return {
        STATS_SUM: torch.zeros(classes, feats.shape[1], dtype=torch.float64).index_add_(
            0, labels, feats
        ),
        STATS_COUNT: torch.bincount(labels, minlength=classes).double(),
        STATS_SECOND: feats.T @ feats,
    }


@pytest.fixture(autouse=True)
def _data_warnings_said_afresh() -> None:
    """`checks.warn_once` says a warning once a process; each test starts with none said,
    so a test's expectation about a warning never depends on the tests before it."""
    from fedpeft.data import checks

    checks.forget_said()
