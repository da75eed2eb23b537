"""Compressed messages: round trips, exact byte counts, and malformed payloads refused."""

import json
from collections.abc import Callable

import pytest
import torch

from fedpeft.compression import (
    CodecError,
    CompressionScheme,
    decode,
    decode_delta,
    decode_update,
    encode,
    encode_delta,
    encode_update,
    layout_of,
    make_plan,
    message_bytes,
)
from fedpeft.compression.plan import CODES, INDICES, SCALES, VALUES, kept_count
from fedpeft.compression.sparsify import top_k
from fedpeft.errors import FedpeftError
from fedpeft.types import AdapterState

SCHEMES = [
    CompressionScheme(bits, rounding, group, topk)  # type: ignore[arg-type]
    for bits in (32, 16, 8, 4, 2)
    for rounding in ("stochastic", "nearest")
    for group, topk in ((64, None), (None, None), (32, 0.1), (16, 0.01))
    if not (bits == 32 and topk is None and rounding == "nearest")
]
Q4 = CompressionScheme(bits=4)
TOP = CompressionScheme(bits=8, topk=0.1)
F16 = CompressionScheme(bits=16)


def _lora_delta(seed: int = 0) -> AdapterState:
    g = torch.Generator().manual_seed(seed)
    return {
        "m.lora_A.weight": torch.randn(8, 384, generator=g) * 1e-2,
        "m.lora_B.weight": torch.randn(384, 8, generator=g) * 1e-3,
        "head.bias": torch.randn(2, generator=g),
        "tiny": torch.randn(3, 1, generator=g),
    }


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("scheme", SCHEMES, ids=lambda s: s.name)
def test_round_trip_is_what_the_sender_expects_and_within_bounds(
    scheme: CompressionScheme,
) -> None:
    delta = _lora_delta()
    sent = encode_delta(delta, scheme, generator=_gen(), meta={"round": 3})
    back, meta = decode_delta(sent.payload, layout_of(delta))
    assert meta == {"round": 3}
    for key, x in delta.items():
        assert back[key].shape == x.shape and back[key].dtype == torch.float32
        assert torch.equal(back[key], sent.decoded[key])  # bit-exact: error feedback needs it
        flat, got = x.reshape(-1), back[key].reshape(-1)
        kept, _ = top_k(flat, kept_count(flat.numel(), scheme.topk))
        dropped = torch.ones(flat.numel(), dtype=torch.bool)
        dropped[kept] = False
        assert (got[dropped] == 0).all()  # top-k sends the largest |x| only
        # the loosest bound over the schemes: one step of the group's max (bf16 rounded up)
        biggest = flat.abs().max()
        limit = {32: 0.0, 16: biggest * 2**-7}.get(scheme.bits)
        if limit is None:
            limit = 2 * biggest * (1 + 2**-7) / (2**scheme.bits - 1) + 1e-12
        assert (got[kept] - flat[kept]).abs().max() <= limit
    if scheme.error_feedback:
        assert sent.residual is not None
        for key in delta:  # e = Δ − Δ̂ (no residual before)
            assert torch.allclose(sent.residual[key], delta[key] - back[key], atol=1e-7)


def test_exact_byte_counts_three_ways() -> None:
    delta = _lora_delta()
    layout = layout_of(delta)
    scheme = CompressionScheme(bits=4, group_size=64)
    meta = {"round": 7, "client_id": 3, "metrics": {"loss": 0.25}}
    payload = encode_delta(delta, scheme, generator=_gen(), meta=meta).payload
    assert len(payload) == message_bytes(layout, scheme, meta)
    header = int.from_bytes(payload[:8], "little")
    data = make_plan(layout, scheme).data_bytes()
    assert len(payload) == 8 + header + data
    # stored: 6,149 values → ⌈6149·4/8⌉ = 3,075 code bytes; 48 + 48 + 1 + 1 bf16 scales
    assert data == 3075 + 2 * 98


@pytest.mark.parametrize(
    "scheme,data",
    [
        (CompressionScheme(bits=32), 6149 * 4),
        (CompressionScheme(bits=16), 6149 * 2),
        (CompressionScheme(bits=8, group_size=None), 6149 + 2 * (8 + 384 + 1 + 3)),
        (CompressionScheme(bits=2, group_size=64), 1538 + 2 * 98),
        # top-1%: 31 + 31 + 1 + 1 values, int16 positions
        (CompressionScheme(bits=32, topk=0.01), 64 * 4 + 64 * 2),
        # top-10%: 308 + 308 + 1 + 1 = 618 values in 309 bytes, 5 + 5 + 1 + 1 scales
        (CompressionScheme(bits=4, topk=0.1, group_size=64), 309 + 2 * 12 + 2 * 618),
    ],
    ids=lambda v: v.name if isinstance(v, CompressionScheme) else str(v),
)
def test_stored_data_bytes(scheme: CompressionScheme, data: int) -> None:
    layout = layout_of(_lora_delta())
    assert make_plan(layout, scheme).data_bytes() == data
    payload = encode_delta(_lora_delta(), scheme, generator=_gen()).payload
    assert len(payload) == message_bytes(layout, scheme)


@pytest.mark.parametrize("scheme", [Q4, CompressionScheme(2, group_size=None), TOP, F16])
def test_scalars_and_empty_tensors_travel(scheme: CompressionScheme) -> None:
    delta = {"scalar": torch.tensor(0.5), "empty": torch.zeros(0, 4), "v": torch.randn(5)}
    sent = encode_delta(delta, scheme, generator=_gen())
    back, _ = decode_delta(sent.payload, layout_of(delta))
    assert {k: v.shape for k, v in back.items()} == {k: v.shape for k, v in delta.items()}
    assert len(sent.payload) == message_bytes(layout_of(delta), scheme)
    with pytest.raises(FedpeftError, match="no tensors"):
        encode_delta({}, scheme, generator=_gen())


def test_large_tensors_index_with_int32() -> None:
    delta = {"big": torch.randn(300, 200)}
    plan = make_plan(layout_of(delta), CompressionScheme(bits=8, topk=0.01))
    assert plan.wire()[INDICES] == (torch.int32, 600)
    sent = encode_delta(delta, plan.scheme, generator=_gen())
    back, _ = decode_delta(sent.payload, layout_of(delta))
    assert int((back["big"] != 0).sum()) == 600


def test_update_round_trip_keeps_reference_dtypes() -> None:
    ref = {k: v.to(torch.bfloat16) if k == "tiny" else v for k, v in _lora_delta(1).items()}
    state = {k: v.float() + _lora_delta(2)[k] for k, v in ref.items()}
    scheme = CompressionScheme(bits=8, rounding="nearest", error_feedback=False)
    sent = encode_update(state, ref, scheme, meta={"round": 1})
    assert sent.residual is None
    back, _ = decode_update(sent.payload, ref)
    assert {k: v.dtype for k, v in back.items()} == {k: v.dtype for k, v in ref.items()}
    expected = {k: (ref[k].float() + sent.decoded[k]).to(ref[k].dtype) for k in ref}
    assert all(torch.equal(back[k], expected[k]) for k in ref)


def test_seeded_encoding_is_deterministic_and_needs_a_generator() -> None:
    scheme = CompressionScheme(bits=4)
    one = encode_delta(_lora_delta(), scheme, generator=_gen(5)).payload
    assert one == encode_delta(_lora_delta(), scheme, generator=_gen(5)).payload
    assert one != encode_delta(_lora_delta(), scheme, generator=_gen(6)).payload
    with pytest.raises(FedpeftError, match="Generator"):
        encode_delta(_lora_delta(), scheme)
    with pytest.raises(ValueError, match="reserved"):
        encode_delta(_lora_delta(), scheme, generator=_gen(), meta={"compression": 1})
    with pytest.raises(FedpeftError, match="NaN"):
        encode_delta({"x": torch.tensor([float("nan")])}, scheme, generator=_gen())


def test_inputs_are_not_changed() -> None:
    delta, residual = _lora_delta(0), _lora_delta(1)
    copies = ({k: v.clone() for k, v in delta.items()}, {k: v.clone() for k, v in residual.items()})
    encode_delta(delta, CompressionScheme(bits=2, topk=0.1), residual, _gen())
    assert all(torch.equal(delta[k], copies[0][k]) for k in delta)
    assert all(torch.equal(residual[k], copies[1][k]) for k in residual)


# ---- malformed payloads -------------------------------------------------------------------
def _tampered(scheme: CompressionScheme, change: Callable[[dict, dict], None]) -> bytes:
    """A valid message for ``_lora_delta()`` re-encoded after ``change(wire, meta)``."""
    payload = encode_delta(_lora_delta(), scheme, generator=_gen()).payload
    wire, meta = decode(payload)
    change(wire, meta)
    return encode(wire, meta)


def _set_meta(key: str, value: object) -> Callable[[dict, dict], None]:
    return lambda wire, meta: meta["compression"].__setitem__(key, value)


def _set(name: str, index: int, value: float) -> Callable[[dict, dict], None]:
    return lambda wire, meta: wire[name].__setitem__(index, value)


MALFORMED = {
    "wrong format": (Q4, _set_meta("format", "other/9"), "unknown compression format"),
    "bit width 3": (Q4, _set_meta("bits", 3), "bit width 3"),
    "bit width as text": (Q4, _set_meta("bits", "4"), "bit width '4'"),
    "bit width that changes the sizes": (Q4, _set_meta("bits", 8), "the scheme needs"),
    "unknown rounding": (Q4, _set_meta("rounding", "up"), "invalid compression scheme"),
    "group size 0": (Q4, _set_meta("group_size", 0), "invalid compression scheme"),
    "top-k above 1": (TOP, _set_meta("topk", 1.5), "invalid compression scheme"),
    "scale NaN": (Q4, _set(SCALES, 3, float("nan")), "scale is NaN"),
    "scale negative": (Q4, _set(SCALES, 0, -1.0), "negative"),
    "scale zero": (Q4, _set(SCALES, 5, 0.0), "zero"),
    "scale infinite": (Q4, _set(SCALES, 5, float("inf")), "infinite"),
    "value NaN": (F16, _set(VALUES, 10, float("nan")), "NaN"),
    "position out of range": (TOP, _set(INDICES, 0, 30000), "outside"),
    "positions repeated": (
        TOP,
        lambda wire, meta: wire[INDICES].__setitem__(5, wire[INDICES][4]),
        "strictly increasing",
    ),
    "padding bits set": (
        CompressionScheme(bits=2),
        _set(CODES, -1, 255),
        "spare bits",
    ),
    "missing scales": (Q4, lambda wire, meta: wire.pop(SCALES), "needs"),
    "extra tensor": (Q4, lambda wire, meta: wire.__setitem__("x", torch.zeros(1)), "needs"),
    "scales in float32": (
        Q4,
        lambda wire, meta: wire.__setitem__(SCALES, wire[SCALES].float()),
        "the scheme needs BF16",
    ),
    "codes cut short": (
        Q4,
        lambda wire, meta: wire.__setitem__(CODES, wire[CODES][:-4]),
        "the scheme needs U8",
    ),
    "no compression metadata": (Q4, lambda wire, meta: meta.pop("compression"), "not a compressed"),
    "another layout": (Q4, _set_meta("layout", "0" * 16), "another adapter layout"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_payloads_are_rejected_with_a_reason(case: str) -> None:
    scheme, change, reason = MALFORMED[case]
    payload = _tampered(scheme, change)
    with pytest.raises(CodecError, match=reason):
        decode_delta(payload, layout_of(_lora_delta()))


def _with_header(header: bytes) -> bytes:
    return len(header).to_bytes(8, "little") + header


def test_truncated_oversized_and_foreign_payloads_are_rejected() -> None:
    layout = layout_of(_lora_delta())
    payload = encode_delta(_lora_delta(), Q4, generator=_gen()).payload
    for bad, reason in [
        (payload[:-1], "needs exactly"),
        (payload + b"\0" * 16, "needs exactly"),
        (payload[:100], "header claims|not JSON"),
        (b"", "empty"),
        ((10**9).to_bytes(8, "little") + b"{}", "header claims"),
        (b"\x05\0\0\0\0\0\0\0[1,2]", "not a JSON object"),
        (encode(_lora_delta(), {"round": 1}), "not a compressed delta"),
        (_with_header(b"[" * 5000 + b"]" * 5000), "not JSON"),  # beyond json's recursion
        (_with_header(json.dumps({"__metadata__": {"fedpeft": "[" * 5000}}).encode()), "not JSON"),
    ]:
        with pytest.raises(CodecError, match=reason):
            decode_delta(bad, layout)
    other = {**_lora_delta(), "tiny": torch.zeros(1, 3)}  # same keys, another shape
    with pytest.raises(CodecError, match="another adapter layout"):
        decode_delta(payload, layout_of(other))


def test_metadata_names_the_scheme() -> None:
    payload = encode_delta(_lora_delta(), TOP, generator=_gen()).payload
    header = json.loads(payload[8 : 8 + int.from_bytes(payload[:8], "little")])
    wire = json.loads(header["__metadata__"]["fedpeft"])["compression"]
    assert wire["format"] == "fedpeft.delta/1"
    assert (wire["bits"], wire["group_size"], wire["topk"]) == (8, 64, 0.1)
    assert set(header) == {"__metadata__", CODES, SCALES, INDICES}


def test_flower_records_carry_the_same_bytes() -> None:
    pytest.importorskip("flwr")
    from fedpeft.runtime.flower.codec import content_to_payload, payload_to_content

    for scheme in (Q4, TOP, F16, CompressionScheme(bits=16, half="bf16"), CompressionScheme(2)):
        payload = encode_delta(_lora_delta(), scheme, generator=_gen(), meta={"round": 2}).payload
        assert content_to_payload(payload_to_content(payload)) == payload
