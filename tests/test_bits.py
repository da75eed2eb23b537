"""Adaptive bits per client, the cost model's real bytes, and the [compression] config."""

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedpeft.allocation import Cost
from fedpeft.compression import (
    CompressionScheme,
    down_scheme,
    encode_delta,
    layout_of,
    message_bytes,
    rounding_generator,
    scheme_for,
    up_scheme,
)
from fedpeft.config import build_config
from fedpeft.errors import FedpeftError
from fedpeft.profiling import DEFAULT_TIERS
from fedpeft.server.bits import (
    adaptive_bits,
    choose_bits,
    explain_bits,
    upload_budget,
    with_message_bytes,
)

STATE = {
    "m.lora_A.weight": torch.randn(8, 384, generator=torch.Generator().manual_seed(0)) * 1e-2,
    "m.lora_B.weight": torch.randn(384, 8, generator=torch.Generator().manual_seed(1)) * 1e-3,
}
LAYOUT = layout_of(STATE)
BASE = CompressionScheme(bits=32, group_size=64)
META = {"client_id": 4, "round": 2, "num_examples": 100}


def _bytes(bits: int) -> int:
    return message_bytes(LAYOUT, CompressionScheme(bits=bits), META)


def test_chooses_the_most_bits_whose_upload_fits() -> None:
    bps = 1e6
    budget = 8 * (_bytes(8) + _bytes(16)) / 2 / bps  # between the 8- and 16-bit uploads
    choice = choose_bits(LAYOUT, BASE, bps, budget, meta=META)
    assert choice.bits == 8 and choice.scheme == CompressionScheme(bits=8, group_size=64)
    assert [o.bits for o in choice.options] == [32, 16, 8, 4, 2]
    assert [o.fits for o in choice.options] == [False, False, True, True, True]
    assert "more bits break it" in choice.reason
    # the prediction is the real message: encode at the chosen scheme and count
    gen = torch.Generator().manual_seed(0)
    sent = encode_delta(STATE, choice.scheme, generator=gen, meta=META)
    assert len(sent.payload) == choice.bytes_up
    assert choice.options[2].upload_seconds == pytest.approx(8 * choice.bytes_up / bps)


def test_no_width_fits_gives_the_fewest_bits_and_says_so() -> None:
    choice = choose_bits(LAYOUT, BASE, 1e3, 0.001, choices=(8, 4, 2))
    assert choice.bits == 2 and "no width fits" in choice.reason
    wide = choose_bits(LAYOUT, BASE, 1e12, 10.0)
    assert wide.bits == 32 and "the most bits offered" in wide.reason


@settings(max_examples=40, deadline=None)
@given(slow=st.floats(1e3, 1e8), factor=st.floats(1.0, 100.0), budget=st.floats(0.0, 5.0))
def test_more_bandwidth_never_means_fewer_bits(slow: float, factor: float, budget: float) -> None:
    low = choose_bits(LAYOUT, BASE, slow, budget)
    high = choose_bits(LAYOUT, BASE, slow * factor, budget)
    assert high.bits >= low.bits
    fits = [o for o in low.options if o.fits]
    assert low.bits == (max(o.bits for o in fits) if fits else 2)


def test_explanation_lists_every_width() -> None:
    text = explain_bits(7, choose_bits(LAYOUT, BASE, 1e6, 0.05))
    assert text.startswith("client 7: int")
    assert text.count("rejected") + text.count("chosen") + text.count("fits") == 5


def test_adaptive_bits_per_tier_from_the_config() -> None:
    """Stored: this layout's 32/16/8/4/2-bit messages take 0.199/0.101/0.054/0.029/0.017 s
    on the low tier's 1 Mbit/s (÷4 mid, ÷20 high); the budget is 0.3 % of 10 s = 0.03 s."""
    raw = {"bits_up": "adaptive", "deadline_share": 0.003}
    cfg = build_config({"compression": raw}).compression
    picks = {t: adaptive_bits(LAYOUT, cfg, p, 10.0).bits for t, p in DEFAULT_TIERS.items()}
    assert picks == {"high": 32, "mid": 16, "low": 4}
    # compute that leaves 0.012 s of the deadline shrinks the budget
    busy = Cost(1, 0.9988, 10, 0, 0, 0.0)
    picks = {t: adaptive_bits(LAYOUT, cfg, p, 10.0, busy).bits for t, p in DEFAULT_TIERS.items()}
    assert picks == {"high": 32, "mid": 8, "low": 2}
    low = adaptive_bits(LAYOUT, cfg, DEFAULT_TIERS["low"], 10.0, busy)
    assert "no width fits" in low.reason and low.budget_seconds == pytest.approx(0.012)


def test_cost_with_message_bytes_uses_the_cost_models_transfer_formula() -> None:
    mid = DEFAULT_TIERS["mid"]
    cost = Cost(1, 0.5, 10, 4000, 4000, 99.0)
    new = with_message_bytes(cost, mid, 1000, 500)
    assert new.transfer_seconds == pytest.approx(8000 / 20e6 + 4000 / 5e6)
    assert new.round_seconds == pytest.approx(5.0 + new.transfer_seconds)
    assert (new.bytes_down, new.bytes_up, new.memory_bytes) == (1000, 500, 1)


def test_budget_and_inputs_are_checked() -> None:
    assert upload_budget(120.0, 0.25) == 30.0
    assert upload_budget(120.0, 0.25, busy_s=100.0) == 20.0  # what compute leaves
    assert upload_budget(120.0, 0.25, busy_s=130.0) == 0.0
    with pytest.raises(FedpeftError, match="share"):
        upload_budget(120.0, 0.0)
    with pytest.raises(FedpeftError, match="bandwidth"):
        choose_bits(LAYOUT, BASE, 0.0, 1.0)
    with pytest.raises(FedpeftError, match="empty"):
        choose_bits(LAYOUT, BASE, 1.0, 1.0, choices=())


# ---- [compression] config and schemes -----------------------------------------------------
def test_default_config_compresses_nothing() -> None:
    cfg = build_config({}).compression
    assert up_scheme(cfg) is None and down_scheme(cfg) is None


def test_config_maps_to_schemes() -> None:
    raw = {"bits_up": 4, "bits_down": 8, "topk": 0.01, "rounding": "nearest", "half": "bf16"}
    cfg = build_config({"compression": raw}).compression
    assert up_scheme(cfg) == CompressionScheme(4, "nearest", 64, 0.01, True, "bf16")
    assert down_scheme(cfg) == CompressionScheme(8, "nearest", 64, None, True, "bf16")
    row = build_config({"compression": {"bits_down": 16, "group_size": "row"}}).compression
    assert down_scheme(row) == CompressionScheme(16, group_size=None)
    adaptive = build_config({"compression": {"bits_up": "adaptive"}}).compression
    with pytest.raises(FedpeftError, match="choose_bits"):
        up_scheme(adaptive)
    assert scheme_for(adaptive, 2) == CompressionScheme(2)


@pytest.mark.parametrize(
    "raw,field",
    [
        ({"bits_up": 3}, "compression.bits_up"),
        ({"bits_down": "adaptive"}, "compression.bits_down"),
        ({"topk": 1.5}, "compression.topk"),
        ({"topk": 0.0}, "compression.topk"),
        ({"group_size": 0}, "compression.group_size"),
        ({"topk": 0.1, "group_size": "row"}, "group_size"),
        ({"adaptive_bits": []}, "compression.adaptive_bits"),
        ({"deadline_share": 2.0}, "compression.deadline_share"),
        ({"bitz": 4}, "compression.bitz"),
    ],
)
def test_bad_compression_config_names_the_field(raw: dict, field: str) -> None:
    with pytest.raises(FedpeftError, match=field.replace(".", r"\.")):
        build_config({"compression": raw})


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"bits": 3}, "bits"),
        ({"rounding": "up"}, "rounding"),
        ({"group_size": 0}, "group_size"),
        ({"group_size": True}, "group_size"),
        ({"topk": 0.0}, "topk"),
        ({"topk": 0.1, "group_size": None}, "group_size"),
        ({"half": "fp8"}, "half"),
    ],
)
def test_scheme_is_checked_when_built(kwargs: dict, field: str) -> None:
    with pytest.raises(FedpeftError, match=f"compression.{field}"):
        CompressionScheme(**kwargs)


def test_scheme_travels_as_json() -> None:
    scheme = CompressionScheme(2, "nearest", None, None, False, "bf16")
    assert CompressionScheme.from_json(scheme.to_json()) == scheme
    assert json.loads(scheme.to_json())["group_size"] is None
    for bad in ("[1]", "{", '{"bits": 3}', '{"colour": 1}'):
        with pytest.raises(FedpeftError):
            CompressionScheme.from_json(bad)


def test_rounding_generators_are_seeded_per_message() -> None:
    def draw(*key: int) -> list[float]:
        return torch.rand(4, generator=rounding_generator(*key)).tolist()

    assert draw(0, 1, 2) == draw(0, 1, 2)
    assert (
        len({tuple(draw(*k)) for k in [(0, 1, 2), (1, 1, 2), (0, 2, 2), (0, 1, 3), (0, 1, -1)]})
        == 5
    )


def test_scheme_names() -> None:
    assert CompressionScheme(4, topk=0.1).name == "int4/g64/sr+top10%+ef"
    assert CompressionScheme(16, "nearest", half="bf16", error_feedback=False).name == "bf16/rn"
    assert CompressionScheme(8, group_size=None).name == "int8/row/sr+ef"
    assert CompressionScheme().name == "fp32" and CompressionScheme().identity
