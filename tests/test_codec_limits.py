"""Size limits before work: the codec decides from the header alone, and absurd metrics
are dropped before they are logged."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save as st_save

from fedpeft.client import META_CLIENT_ID, META_METRICS, META_NUM_EXAMPLES, META_ROUND
from fedpeft.compression import CodecError, decode, encode, layout
from fedpeft.compression import codec as codec_module
from fedpeft.server.validate import MAX_METRICS, METRIC_LIMIT, validate_reply
from fedpeft.types import TrainInstruction

REFERENCE = {
    "l.lora_A.weight": torch.zeros(4, 8),
    "l.lora_B.weight": torch.zeros(8, 4, dtype=torch.bfloat16),
    "head.bias": torch.zeros(2),
}


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the calls that build tensors (safetensors' ``load``), still doing the work."""
    calls: list[int] = []
    real = codec_module.st_load

    def counting(data: bytes) -> dict[str, torch.Tensor]:
        calls.append(len(data))
        return real(data)

    monkeypatch.setattr(codec_module, "st_load", counting)
    return calls


def test_an_extra_16_mb_tensor_is_refused_from_the_header(loads: list[int]) -> None:
    big = {**REFERENCE, "smuggled": torch.zeros(4 << 20)}  # 16 MiB of float32
    payload = encode(big)
    with pytest.raises(CodecError, match="unexpected tensor 'smuggled'"):
        decode(payload, expected=layout(REFERENCE))
    assert loads == []  # no tensor was built
    decode(payload)  # without an expectation it is a valid payload …
    assert loads == [len(payload)]  # … and only then are its tensors built


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ({k: v for k, v in REFERENCE.items() if k != "head.bias"}, "missing tensor 'head.bias'"),
        ({**REFERENCE, "head.bias": torch.zeros(3)}, r"is F32 \(3,\), expected F32 \(2,\)"),
        ({**REFERENCE, "head.bias": torch.zeros(2, dtype=torch.float64)}, "is F64 .*expected F32"),
    ],
)  # fmt: skip
def test_other_names_shapes_or_dtypes_are_refused_before_decoding(
    state: dict[str, torch.Tensor], message: str, loads: list[int]
) -> None:
    with pytest.raises(CodecError, match=message):
        decode(encode(state), expected=layout(REFERENCE))
    assert loads == []


def test_the_expected_layout_decodes_to_the_same_tensors() -> None:
    gen = torch.Generator().manual_seed(0)
    state = {k: torch.randn(v.shape, generator=gen).to(v.dtype) for k, v in REFERENCE.items()}
    out, meta = decode(encode(state, {"round": 2}), expected=layout(REFERENCE))
    assert meta == {"round": 2}
    assert all(torch.equal(out[k], state[k]) and out[k].dtype == state[k].dtype for k in state)


def test_metadata_above_the_cap_is_refused(loads: list[int]) -> None:
    fat = st_save(REFERENCE, metadata={"fedpeft": json.dumps({"pad": "x" * (1 << 20)})})
    with pytest.raises(CodecError, match="metadata is .* above the limit of 65536"):
        decode(fat)
    assert loads == []
    just_under = "x" * (codec_module.MAX_META_BYTES - 64)
    ok = st_save(REFERENCE, metadata={"fedpeft": json.dumps({"pad": just_under})})
    assert decode(ok)[1] == {"pad": just_under}


def test_a_header_length_beyond_the_payload_or_the_cap_is_refused(loads: list[int]) -> None:
    payload = encode(REFERENCE)
    huge = (1 << 60).to_bytes(8, "little") + payload[8:]
    with pytest.raises(CodecError, match="header claims"):
        decode(huge)
    with pytest.raises(CodecError, match="above the limit of 10"):
        decode(payload, max_bytes=10)
    assert loads == []


def test_a_header_whose_shape_does_not_match_its_bytes_is_refused(loads: list[int]) -> None:
    payload = encode({"a": torch.zeros(4)})
    n = int.from_bytes(payload[:8], "little")
    header = json.loads(payload[8 : 8 + n])
    header["a"]["shape"] = [1 << 40]  # claims 4 TiB in 16 bytes
    text = json.dumps(header).encode()
    forged = len(text).to_bytes(8, "little") + text + payload[8 + n :]
    with pytest.raises(CodecError, match="do not fit"):
        decode(forged)
    assert loads == []


def _reply(metrics: dict[str, object]) -> bytes:
    meta = {META_CLIENT_ID: 0, META_ROUND: 1, META_NUM_EXAMPLES: 5, META_METRICS: metrics}
    return encode(REFERENCE, meta)


def test_absurd_metrics_are_dropped_not_logged() -> None:
    ins = TrainInstruction(1, 0, 1, None, 8, 0.1, 0.0, 0.0, 0)
    metrics = {
        "loss": 1e300,
        "neg": -1e13,
        "ok": 0.25,
        "edge": METRIC_LIMIT,
        "k" * 65: 1.0,
        "flag": True,
        "text": "1.0",
    }
    update = validate_reply(_reply(metrics), REFERENCE, ins)
    assert update.metrics == {"ok": 0.25, "edge": METRIC_LIMIT}
    many = {f"m{i:03d}": float(i) for i in range(100)}
    kept = validate_reply(_reply(many), REFERENCE, ins).metrics
    assert len(kept) == MAX_METRICS and kept == {f"m{i:03d}": float(i) for i in range(MAX_METRICS)}


def test_the_in_process_receive_path_refuses_an_extra_tensor_from_the_header(
    loads: list[int],
) -> None:
    """``validate_reply`` (every reply of both loops, in-process too) checks the reply
    against the layout it served before any tensor is built."""
    from fedpeft.server.validate import RejectedUpdate

    ins = TrainInstruction(1, 0, 1, None, 8, 0.1, 0.0, 0.0, 0)
    meta = {META_CLIENT_ID: 0, META_ROUND: 1, META_NUM_EXAMPLES: 5}
    smuggled = encode({**REFERENCE, "smuggled": torch.zeros(16 << 20)}, meta)  # 64 MiB
    with pytest.raises(RejectedUpdate, match="unexpected tensor 'smuggled'"):
        validate_reply(smuggled, REFERENCE, ins)
    assert loads == []
    validate_reply(encode(REFERENCE, meta), REFERENCE, ins)
    assert len(loads) == 1


def test_finite_check_names_the_bad_tensor_and_passes_sums_that_overflow() -> None:
    """The stacked-sums fast path must not change what is rejected: a NaN or Inf anywhere is
    named, and large finite values whose sum overflows float64 (or a bf16 one) still pass."""
    from fedpeft.server.validate import RejectedUpdate, check_finite

    huge = torch.full((4,), torch.finfo(torch.float64).max, dtype=torch.float64)
    big_bf16 = torch.full((64,), torch.finfo(torch.bfloat16).max, dtype=torch.bfloat16)
    check_finite({"a": huge, "b": big_bf16, "ids": torch.arange(3)})
    for bad in (float("nan"), float("inf"), float("-inf")):
        state = {"a": torch.ones(3), "b": torch.ones(2, 2), "c": torch.zeros(5)}
        state["b"][1, 0] = bad
        with pytest.raises(RejectedUpdate, match="tensor 'b' holds NaN or Inf"):
            check_finite(state)


def test_update_norm_matches_a_float64_reference() -> None:
    from fedpeft.server.validate import delta_norm

    gen = torch.Generator().manual_seed(0)
    start = {f"k{i}": torch.randn(8, 16, generator=gen) for i in range(30)}
    start["half"] = torch.randn(5, generator=gen).to(torch.bfloat16)
    state = {
        k: v + 0.01 * torch.randn(v.shape, generator=gen).to(v.dtype) for k, v in start.items()
    }
    exact = sum(float((state[k].double() - start[k].double()).pow(2).sum()) for k in start) ** 0.5
    assert delta_norm(state, start) == pytest.approx(exact, rel=1e-6)
    assert delta_norm({}, {}) == 0.0
