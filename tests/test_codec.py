import json

import pytest
import torch

from fedpeft.compression import CodecError, decode, encode


def test_round_trip_with_mixed_dtypes_and_metadata() -> None:
    state = {
        "x.lora_A.weight": torch.randn(8, 16),
        "x.lora_B.weight": torch.randn(16, 8).to(torch.bfloat16),
        "head.bias": torch.randn(3, dtype=torch.float64),
        "steps": torch.tensor([3, 4], dtype=torch.int64),
    }
    payload = encode(state, {"round": 3, "metrics": {"loss": 0.5}})
    out, meta = decode(payload)
    assert meta == {"round": 3, "metrics": {"loss": 0.5}}
    assert out.keys() == state.keys()
    for key, tensor in state.items():
        assert out[key].dtype == tensor.dtype
        assert torch.equal(out[key], tensor)


def test_byte_count_is_header_plus_raw_tensor_bytes() -> None:
    state = {"a": torch.zeros(10, 4), "b": torch.zeros(7, dtype=torch.float16)}
    payload = encode(state)
    header_len = int.from_bytes(payload[:8], "little")
    header = json.loads(payload[8 : 8 + header_len])
    assert set(header) == {"a", "b", "__metadata__"}
    assert len(payload) == 8 + header_len + 10 * 4 * 4 + 7 * 2


@pytest.mark.parametrize(
    "bad", [b"", b"1234", b"\xff" * 64, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}"]
)
def test_malformed_bytes_raise_codec_error(bad: bytes) -> None:
    with pytest.raises(CodecError):
        decode(bad)


def test_truncated_payload_raises_codec_error() -> None:
    payload = encode({"a": torch.ones(100)})
    with pytest.raises(CodecError):
        decode(payload[:-10])


def test_decoded_tensors_come_in_name_order() -> None:
    """safetensors' own order follows the process's hash seed (PYTHONHASHSEED): an update
    norm summed over a decoded state differed in its last digit between two processes of
    the same run."""
    state = {f"k{i}.w": torch.full((2,), float(i)) for i in (3, 0, 8, 5, 1, 7, 2, 6, 4)}
    out, _ = decode(encode(state))
    assert list(out) == sorted(state)
    assert all(torch.equal(out[k], state[k]) for k in state)
