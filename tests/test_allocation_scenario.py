"""Devices sized to the model, and the device-correlated ("natural") data split."""

from __future__ import annotations

import math

import numpy as np
import pytest
from transformers import AutoConfig, LlamaConfig

from fedpeft.allocation import (
    Calibration,
    Workload,
    client_groups,
    make_candidate,
    model_tiers,
    peak_memory,
    predict_cost,
    reference_workload,
    step_flops,
    update_bytes,
)
from fedpeft.config import DataConfig, RelativeTier, load_config
from fedpeft.config.profiles import DEFAULT_RELATIVE
from fedpeft.data import DataProfile, partition_indices
from fedpeft.data.partition import natural_partition
from fedpeft.errors import FedpeftError
from fedpeft.models import get_model_spec
from fedpeft.peft import Architecture, architecture

WORK = Workload(batch_size=16, seq_len=48, steps=6, mean_seq_len=24)


@pytest.fixture(scope="module")
def minilm() -> Architecture:
    path = get_model_spec("minilm-l6").local_path()
    assert path is not None
    return architecture(AutoConfig.from_pretrained(str(path)), 2)


@pytest.fixture(scope="module")
def smollm() -> Architecture:  # SmolLM2-135M's shape, from its config values alone
    config = LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        tie_word_embeddings=True,
    )
    return architecture(config, 2, causal_lm=True)


def lora(r: int, blocks: int, layers: int) -> object:
    opts: dict[str, object] = {"r": r, "alpha": 2.0 * r}
    if blocks < layers:
        opts["layers"] = list(range(layers - blocks, layers))
    return make_candidate("lora", opts).spec


@pytest.mark.parametrize("model", ["minilm", "smollm"])
def test_tiers_bind_by_depth_compute_and_bandwidth(request: pytest.FixtureRequest, model: str):
    """High trains anything; mid at most half the blocks; low only the top ⌊0.2·L⌋ — for a
    22 M encoder and a 135 M decoder alike, at every catalogue rank."""
    arch: Architecture = request.getfixturevalue(model)
    deadline, L = 60.0, arch.layers
    tiers = model_tiers(arch, WORK, deadline, DEFAULT_RELATIVE, rank=16)
    for name, t in DEFAULT_RELATIVE.items():
        device = tiers[name]
        most = max(1, math.floor(t.depth * L + 1e-9))
        for r in (4, 8, 16):
            fits = [
                peak_memory(arch, lora(r, k, L), 16, 48) <= device.memory_bytes
                for k in range(1, L + 1)
            ]
            assert fits == [k <= most for k in range(1, L + 1)], (name, r)
        full = predict_cost(arch, lora(16, L, L), WORK, device)
        assert full.compute_seconds == pytest.approx(t.compute * deadline)
        assert full.transfer_seconds == pytest.approx(t.transfer * deadline)
        assert device.download_bps == pytest.approx(t.down_up * device.upload_bps)
        assert (device.cores, device.availability) == (t.cores, t.availability)
    assert tiers["high"].flops_per_s == pytest.approx(4 * tiers["low"].flops_per_s)
    flops = WORK.steps * step_flops(arch, lora(16, L, L), 16, 24)
    eta = Calibration().flops_efficiency
    assert tiers["mid"].flops_per_s == pytest.approx(flops / (eta * 0.4 * deadline))
    assert update_bytes(arch, lora(16, L, L)) > 0


def test_reference_workload_is_the_mean_client() -> None:
    profiles = [DataProfile(16, [8, 8], 1.0, 10.0), DataProfile(80, [40, 40], 1.0, 30.0)]
    work = reference_workload(profiles, batch_size=16, max_length=48)
    assert work == Workload(16, 48, 3, 20)  # steps (1 + 5)/2, lengths (10 + 30)/2
    with pytest.raises(FedpeftError, match="at least one client"):
        reference_workload([], 16, 48)


def test_relative_tier_is_validated() -> None:
    with pytest.raises(ValueError, match="depth"):
        RelativeTier(depth=0.0, compute=1.0, transfer=0.1)
    table = "profiles.relative={low={depth=0.3,compute=1.0,transfer=0.2}}"
    cfg = load_config(overrides=["profiles.scale='model'", table])
    assert set(cfg.profiles.relative) == {"low"}  # a table replaces the default tiers
    assert cfg.profiles.relative["low"].depth == 0.3 and cfg.profiles.relative["low"].cores == 1
    assert load_config().profiles.relative == DEFAULT_RELATIVE


def test_natural_partition_gives_each_tier_its_classes() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=4000)
    groups = [0, 0, 1, 1, 1, 2, 2, 2]  # 0 = the weakest tier
    parts = natural_partition(labels, groups, share=0.8, seed=3)
    assert sorted(np.concatenate(parts).tolist()) == list(range(4000))  # a partition
    held = np.array([[np.sum(labels[p] == k) for k in range(4)] for p in parts])
    by_group = np.array(
        [held[[c for c, g in enumerate(groups) if g == t]].sum(0) for t in range(3)]
    )
    totals = np.bincount(labels, minlength=4)
    home = {0: 0, 1: 1, 2: 2, 3: 0}  # class k → the (k mod 3)-th weakest group
    for k, t in home.items():
        assert by_group[t, k] / totals[k] == pytest.approx(0.8, abs=0.01)
    again = natural_partition(labels, groups, share=0.8, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    other = natural_partition(labels, groups, share=0.8, seed=4)
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other, strict=True))
    one_tier = natural_partition(labels, [0] * 4, share=0.8, seed=0)
    assert min(len(p) for p in one_tier) > 900  # one group: uniform over everyone


def test_natural_partition_needs_the_tiers() -> None:
    cfg = DataConfig(partition="natural", num_clients=4)
    labels = np.arange(40) % 2
    with pytest.raises(FedpeftError, match="needs each client's device tier"):
        partition_indices(labels, cfg, 0)
    parts = partition_indices(labels, cfg, 0, groups=[0, 1, 1, 0])
    assert sum(len(p) for p in parts) == 40


@pytest.mark.parametrize("scale", ["declared", "model"])
def test_client_groups_rank_tiers_weakest_first(scale: str) -> None:
    cfg = load_config(
        overrides=[
            "data.num_clients=6",
            "profiles.mix=['high','low','mid','low','high','mid']",
            f"profiles.scale='{scale}'",
        ]
    )
    assert client_groups(cfg) == [2, 0, 1, 0, 2, 1]
    bad = load_config(overrides=["profiles.scale='model'", "profiles.mix={phone=1.0}"])
    with pytest.raises(FedpeftError, match="'phone' is in `profiles.mix` but not"):
        client_groups(bad)
