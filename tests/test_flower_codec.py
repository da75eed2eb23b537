"""The Flower codec: adapter states, payloads and instructions through Flower's records."""

from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
import pytest
import torch

pytest.importorskip("flwr")

from flwr.app import Array, ArrayRecord, ConfigRecord  # noqa: E402
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects  # noqa: E402
from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents  # noqa: E402

from fedpeft.compression import CodecError, encode  # noqa: E402
from fedpeft.runtime.flower import keys  # noqa: E402
from fedpeft.runtime.flower.codec import (  # noqa: E402
    array_to_tensor,
    content_to_payload,
    instruction_to_record,
    payload_to_content,
    record_to_instruction,
    record_to_state,
    state_to_record,
    tensor_to_array,
    typed,
)
from fedpeft.server.state import cluster_group  # noqa: E402
from fedpeft.types import TrainInstruction  # noqa: E402


def _mixed_state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(4, 3, generator=g)
    return {
        "a.lora_A.weight": w,
        "a.lora_B.weight": (w * 1e-3).to(torch.bfloat16),
        "b.bias": torch.tensor([1e-8, -3.5, 65504.0], dtype=torch.float16),
        "c.double": torch.randn(2, 2, generator=g, dtype=torch.float64),
        "d.count": torch.tensor([2**40, -7]),
        "e.mask": torch.tensor([True, False, True]),
        "f.codes": torch.tensor([0, 255], dtype=torch.uint8),
        "g.scalar": torch.tensor(3.25),
        "h.empty": torch.zeros(0, 5),
        "i.special": torch.tensor([float("inf"), -0.0, 1.0]).to(torch.bfloat16),
    }


def _bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype in (torch.bfloat16, torch.float16):
        return torch.equal(a.view(torch.int16), b.view(torch.int16))
    return torch.equal(a, b)


def test_mixed_dtypes_round_trip_bit_exactly_through_flower_serialisation() -> None:
    state = _mixed_state()
    record = state_to_record(state)
    # through Flower's own wire form: every nested object deflated, then inflated by id
    contents = {oid: obj.deflate() for oid, obj in get_all_nested_objects(record).items()}
    wired = inflate_object_from_contents(record.object_id, contents)
    assert isinstance(wired, ArrayRecord)
    back = record_to_state(wired)
    assert sorted(back) == sorted(state)
    for key, value in state.items():
        assert _bits_equal(back[key], value), key


def test_bfloat16_travels_as_its_16_bit_patterns_not_a_wider_cast() -> None:
    t = torch.linspace(-2, 2, 1000).to(torch.bfloat16)
    array = tensor_to_array(t)
    assert array.dtype == "bfloat16" and array.shape == (1000,)
    stored = np.load(io.BytesIO(array.data), allow_pickle=False)
    assert stored.dtype == np.uint16 and stored.nbytes == 2 * 1000
    assert np.array_equal(stored, t.view(torch.int16).numpy().view(np.uint16))


def test_a_payload_comes_back_byte_for_byte() -> None:
    payload = encode(_mixed_state(), {"round": 3, "num_examples": 17, "metrics": {"loss": 0.5}})
    assert content_to_payload(payload_to_content(payload)) == payload


def _npy(a: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, a, allow_pickle=False)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "array",
    [
        Array(dtype="complex64", shape=(1,), stype="numpy.ndarray", data=b"x"),
        Array(dtype="float32", shape=(2,), stype="torch.raw", data=b"x"),
        Array(dtype="float32", shape=(2,), stype="numpy.ndarray", data=b"not npy"),
        Array(dtype="float32", shape=(4,), stype="numpy.ndarray", data=_npy(np.zeros(3, "f4"))),
        Array(dtype="bfloat16", shape=(3,), stype="numpy.ndarray", data=_npy(np.zeros(3, "f4"))),
    ],
    ids=["dtype", "stype", "garbage", "shape", "bf16-not-uint16"],
)
def test_malformed_arrays_are_codec_errors(array: Array) -> None:
    with pytest.raises(CodecError):
        array_to_tensor(array)


def test_pickled_object_arrays_are_refused() -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    array = Array(dtype="float32", shape=(1,), stype="numpy.ndarray", data=buffer.getvalue())
    with pytest.raises(CodecError):
        array_to_tensor(array)


def test_every_instruction_field_travels_and_is_type_checked() -> None:
    ins = TrainInstruction(
        round=3, client_id=7, epochs=2, steps=None, batch_size=16, lr=3e-3,
        weight_decay=0.0, proximal_mu=0.1, seed=42, freeze=("lora_A", "classifier"),
    )  # fmt: skip
    record = instruction_to_record(ins)
    assert sorted(record) == sorted(keys.INSTRUCTION_PREFIX + f for f in ins.__dataclass_fields__)
    assert record_to_instruction(record) == ins
    clustered = replace(ins, group=cluster_group(2))  # a GroupName travels as its string
    assert record_to_instruction(instruction_to_record(clustered)).group == "cluster-2"
    with_steps = replace(ins, steps=5)
    assert record_to_instruction(instruction_to_record(with_steps)) == with_steps
    assert record_to_instruction(ConfigRecord({**record, "ins.lr": "1"})).lr == 1.0  # int → float


@pytest.mark.parametrize(
    ("field", "raw"),
    [("steps", '"5"'), ("lr", "true"), ("client_id", "1.5"), ("freeze", '"lora_A"'),
     ("freeze", "[1]"), ("epochs", "not json"), ("group", "3")],
)  # fmt: skip
def test_an_instruction_field_of_the_wrong_type_is_a_codec_error(field: str, raw: str) -> None:
    ins = TrainInstruction(1, 0, 1, None, 16, 1e-3, 0.0, 0.0, 0)
    record = ConfigRecord({**instruction_to_record(ins), keys.INSTRUCTION_PREFIX + field: raw})
    with pytest.raises(CodecError, match=field):
        record_to_instruction(record)


def test_a_missing_required_field_is_a_codec_error_and_defaults_fill_the_rest() -> None:
    ins = TrainInstruction(1, 0, 1, None, 16, 1e-3, 0.0, 0.0, 0)
    record = instruction_to_record(ins)
    del record[keys.INSTRUCTION_PREFIX + "freeze"]
    assert record_to_instruction(record).freeze == ()
    del record[keys.INSTRUCTION_PREFIX + "seed"]
    with pytest.raises(CodecError, match="seed"):
        record_to_instruction(record)


def test_typed_handles_the_shapes_new_instruction_fields_may_take() -> None:
    assert typed({"r": 8, "alpha": 16.0}, dict[str, int | float]) == {"r": 8, "alpha": 16.0}
    assert typed([1, "a"], tuple[int, str]) == (1, "a")
    assert typed(None, str | None) is None
    with pytest.raises(TypeError):
        typed([1, 2, 3], tuple[int, str])
    with pytest.raises(TypeError):
        typed({"r": "8"}, dict[str, int])


def test_a_statistics_reply_is_checked_against_the_served_heads_shape() -> None:
    """Round 0's class feature statistics (head initialisation) travel on Flower: the pool
    expects (C, H), (C,) and (H, H) float64 tensors sized by the served head, and refuses
    them as the reply to a training instruction (and vice versa)."""
    from fedpeft.client.features import STATS_COUNT, STATS_SECOND, STATS_SUM
    from fedpeft.client.handler import KIND_FEATURE_STATS
    from fedpeft.compression import payload_layout
    from fedpeft.runtime.flower.pool import _expected

    served = {
        "m.classifier.weight": torch.zeros(4, 8),
        "m.classifier.bias": torch.zeros(4),
        "m.q.lora_A.weight": torch.zeros(2, 8),
    }
    layout = payload_layout(encode(served, {}))
    ins = TrainInstruction(0, 1, 1, None, 16, 1e-3, 0.0, 0.0, 0)
    stats_ins = replace(ins, kind=KIND_FEATURE_STATS)
    stats = {
        STATS_SUM: torch.ones(4, 8, dtype=torch.float64),
        STATS_COUNT: torch.tensor([1.0, 0.0, 2.0, 3.0], dtype=torch.float64),
        STATS_SECOND: torch.eye(8, dtype=torch.float64),
    }
    reply = payload_to_content(encode(stats, {"round": 0}))
    assert content_to_payload(reply, expected=_expected(stats_ins, layout)) == encode(
        stats, {"round": 0}
    )
    with pytest.raises(CodecError):
        content_to_payload(reply, expected=_expected(ins, layout))
    wrong = {**stats, STATS_SECOND: torch.eye(7, dtype=torch.float64)}
    with pytest.raises(CodecError):
        content_to_payload(payload_to_content(encode(wrong, {})), _expected(stats_ins, layout))
    with pytest.raises(CodecError):
        content_to_payload(payload_to_content(encode(served, {})), _expected(stats_ins, layout))


def test_a_class_means_reply_carries_no_second_moment() -> None:
    """The bias refresh's request (``class_means``) expects the sums and counts alone: a
    reply with the H × H second moment, as to round 0's request, is refused, and the round-0
    request refuses a reply without it."""
    from fedpeft.client.features import STATS_COUNT, STATS_SECOND, STATS_SUM
    from fedpeft.client.handler import KIND_CLASS_MEANS, KIND_FEATURE_STATS
    from fedpeft.compression import payload_layout
    from fedpeft.runtime.flower.pool import _expected

    served = {"m.classifier.weight": torch.zeros(3, 5), "m.classifier.bias": torch.zeros(3)}
    layout = payload_layout(encode(served, {}))
    ins = TrainInstruction(0, 1, 1, None, 16, 1e-3, 0.0, 0.0, 0)
    means = {
        STATS_SUM: torch.ones(3, 5, dtype=torch.float64),
        STATS_COUNT: torch.tensor([1.0, 0.0, 2.0], dtype=torch.float64),
    }
    full = {**means, STATS_SECOND: torch.eye(5, dtype=torch.float64)}
    means_ins = replace(ins, kind=KIND_CLASS_MEANS)
    reply = payload_to_content(encode(means, {"round": 3}))
    assert content_to_payload(reply, expected=_expected(means_ins, layout)) == encode(
        means, {"round": 3}
    )
    with pytest.raises(CodecError):
        content_to_payload(payload_to_content(encode(full, {})), _expected(means_ins, layout))
    with pytest.raises(CodecError):
        stats_ins = replace(ins, kind=KIND_FEATURE_STATS)
        content_to_payload(reply, expected=_expected(stats_ins, layout))
