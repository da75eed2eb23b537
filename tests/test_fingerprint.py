"""The config fingerprint a checkpoint's manifest carries (issue 14): a checkpoint of a run
with the same shapes but another seed, learning rate, model, data or rule has another
fingerprint, so resuming from it is refused; what a resumed run may change (its planned
length, where its folder lives, how the host runs it) leaves the fingerprint as it was."""

from __future__ import annotations

import pytest

from fedpeft.config import config_fingerprint, load_config

BASE = ("model.name='tiny-bert'", "data.num_clients=3", "run.rounds=3")


def _fingerprint(*overrides: str) -> str:
    return config_fingerprint(load_config(overrides=[*BASE, *overrides]))


@pytest.mark.parametrize(
    "other",
    [
        "run.seed=1",
        "client.lr=0.004",
        "client.epochs=2",
        "data.partition='iid'",
        "data.train_size=64",
        "peft.method='bitfit'",
        "server.aggregator='trimmed_mean'",
        "server.norm_guard=0",
    ],
)
def test_another_run_with_the_same_shapes_has_another_fingerprint(other: str) -> None:
    assert _fingerprint(other) != _fingerprint()


@pytest.mark.parametrize(
    "same",
    ["run.rounds=7", "run.output_dir='elsewhere'", "run.name='renamed'", "run.threads=1"],
)
def test_what_a_resumed_run_may_change_keeps_the_fingerprint(same: str) -> None:
    assert _fingerprint(same) == _fingerprint()
