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


def test_a_key_added_later_at_its_default_keeps_older_runs_fingerprints() -> None:
    """A run checkpointed before a key existed resumes, predicts and reports after it is
    added: at the default that keeps the old behaviour the key is not fingerprinted (the
    old fingerprint hashed a configuration without it); set otherwise, it counts."""
    import hashlib
    import json

    from fedpeft.config.loading import _UNFINGERPRINTED, ADDED_LATER

    cfg = load_config(overrides=list(BASE))
    before = cfg.model_dump(mode="json")  # the configuration as a schema without the keys
    for section, keys in _UNFINGERPRINTED.items():
        for key in keys:
            before[section].pop(key, None)
    for section, key in ADDED_LATER:
        del before[section][key]
    old = hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()
    assert config_fingerprint(cfg) == old
    assert _fingerprint("data.image_column='photo'") != old
