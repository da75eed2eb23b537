"""Typed codec between fedpeft's messages and Flower's records.

* ``AdapterState`` ⇄ ``ArrayRecord``: one ``Array`` per tensor, serialised by numpy without
  pickle (``np.save(allow_pickle=False)``). numpy has no bfloat16, so a bf16 tensor travels
  as its raw 16-bit patterns (``uint16``) in an ``Array`` whose ``dtype`` says
  ``"bfloat16"`` — bit-exact and the same size, where a float32 cast would double it.
* fedpeft payload bytes (``fedpeft.compression``) ⇄ message content: the state as arrays
  plus the payload's metadata, so the server validates replies exactly as in-process.
* ``TrainInstruction`` ⇄ ``ConfigRecord``: every dataclass field, one JSON entry each,
  checked against the field's type hint when decoded (new fields travel without edits).
* a secure-aggregation stage's payload (``client/secagg.py``) ⇄ message content: the
  protocol message's bytes as one ``uint8`` array in the ``fedpeft.secagg`` record, and at
  the masked stage the training payload beside it as usual (arrays + metadata).

Decoding is for untrusted input: anything malformed raises ``CodecError``.
"""

from __future__ import annotations

import dataclasses
import io
import json
import types
import typing
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from fedpeft.client.secagg import KIND_MASKED_INPUT, join_payload, split_payload
from fedpeft.compression import CodecError, Layout, decode, encode
from fedpeft.compression.codec import MAX_META_BYTES
from fedpeft.runtime.flower import keys
from fedpeft.types import AdapterState, TrainInstruction

NUMPY_STYPE = "numpy.ndarray"  # flwr's SType.NUMPY
BF16 = "bfloat16"
# wire dtype name -> (torch dtype, numpy dtype its buffer is stored as)
DTYPES: dict[str, tuple[torch.dtype, np.dtype[Any]]] = {
    "float64": (torch.float64, np.dtype("float64")),
    "float32": (torch.float32, np.dtype("float32")),
    "float16": (torch.float16, np.dtype("float16")),
    BF16: (torch.bfloat16, np.dtype("uint16")),
    "int64": (torch.int64, np.dtype("int64")),
    "int32": (torch.int32, np.dtype("int32")),
    "int16": (torch.int16, np.dtype("int16")),
    "int8": (torch.int8, np.dtype("int8")),
    "uint8": (torch.uint8, np.dtype("uint8")),
    "bool": (torch.bool, np.dtype("bool")),
}
_NAME_OF = {t: name for name, (t, _) in DTYPES.items()}


# ---- tensors ------------------------------------------------------------------------------
def tensor_to_array(tensor: torch.Tensor) -> Array:
    """One tensor as a Flower ``Array`` (bf16 as its bit patterns, see the module doc)."""
    name = _NAME_OF.get(tensor.dtype)
    if name is None:
        raise CodecError(f"tensors of dtype {tensor.dtype} cannot travel")
    t = tensor.detach().cpu().contiguous()
    host = t.view(torch.int16).numpy().view(np.uint16) if name == BF16 else t.numpy()
    buffer = io.BytesIO()
    np.save(buffer, host, allow_pickle=False)
    return Array(dtype=name, shape=tuple(t.shape), stype=NUMPY_STYPE, data=buffer.getvalue())


def array_to_tensor(array: Array) -> torch.Tensor:
    """The tensor an ``Array`` holds; raises ``CodecError`` on anything inconsistent."""
    if array.stype != NUMPY_STYPE or array.dtype not in DTYPES:
        raise CodecError(f"unsupported array (stype {array.stype!r}, dtype {array.dtype!r})")
    dtype, storage = DTYPES[array.dtype]
    try:
        host = np.load(io.BytesIO(array.data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise CodecError(f"array data is not a numpy array ({e})") from None
    if not isinstance(host, np.ndarray) or host.dtype != storage:
        raise CodecError(f"array data is not {storage} as its dtype {array.dtype!r} says")
    if tuple(host.shape) != tuple(array.shape):
        raise CodecError(f"array data has shape {host.shape}, not {tuple(array.shape)}")
    tensor = torch.from_numpy(host.copy())
    return tensor.view(torch.int16).view(torch.bfloat16) if array.dtype == BF16 else tensor


def state_to_record(state: AdapterState) -> ArrayRecord:
    record = ArrayRecord()
    for key in sorted(state):
        record[key] = tensor_to_array(state[key])
    return record


def record_to_state(record: ArrayRecord) -> AdapterState:
    return {key: array_to_tensor(array) for key, array in record.items()}


# ---- whole payloads -----------------------------------------------------------------------
def payload_to_content(payload: bytes) -> RecordDict:
    """fedpeft payload bytes → a message's records (arrays + metadata)."""
    state, meta = decode(payload)
    return RecordDict(
        {
            keys.ARRAYS: state_to_record(state),
            keys.META: ConfigRecord({keys.META_JSON: json.dumps(meta, sort_keys=True)}),
        }
    )


def content_meta(content: RecordDict) -> dict[str, Any]:
    """The payload metadata a message carries (a JSON object)."""
    meta_record = content.config_records.get(keys.META)
    if meta_record is None:
        raise CodecError(f"message lacks the {keys.META!r} record")
    raw = meta_record.get(keys.META_JSON)
    if not isinstance(raw, str) or len(raw) > MAX_META_BYTES:
        raise CodecError("message metadata is not a JSON object of bounded size")
    try:
        meta = json.loads(raw)
    except (json.JSONDecodeError, RecursionError):
        meta = None
    if not isinstance(meta, dict):
        raise CodecError("message metadata is not a JSON object")
    return meta


def check_arrays(arrays: ArrayRecord, expected: Layout) -> None:
    """Names, dtypes and shapes of ``arrays`` against ``expected``, from each ``Array``'s
    declared metadata — before any array data is decoded."""
    missing, extra = expected.keys() - arrays.keys(), arrays.keys() - expected.keys()
    if missing or extra:
        some = sorted(missing or extra)[0]
        raise CodecError(f"{'missing' if missing else 'unexpected'} tensor {some!r}")
    for key, (dtype, shape) in expected.items():
        array = arrays[key]
        if array.dtype != _NAME_OF.get(dtype) or tuple(array.shape) != tuple(shape):
            raise CodecError(
                f"tensor {key!r} is {array.dtype} {tuple(array.shape)}, "
                f"expected {_NAME_OF.get(dtype, dtype)} {tuple(shape)}"
            )


def content_to_payload(
    content: RecordDict, expected: Layout | None = None, meta: dict[str, Any] | None = None
) -> bytes:
    """A message's records → the fedpeft payload bytes they came from. With ``expected``
    (the layout of the state that was sent), other tensors are refused before decoding;
    ``meta`` replaces the message's metadata (e.g. with a bounded example count)."""
    arrays = content.array_records.get(keys.ARRAYS)
    if arrays is None:
        raise CodecError(f"message lacks the {keys.ARRAYS!r} record")
    meta = content_meta(content) if meta is None else meta
    if expected is not None:
        check_arrays(arrays, expected)
    return encode(record_to_state(arrays), meta)


# ---- secure-aggregation stages -------------------------------------------------------------
def stage_to_content(
    kind: str, payload: bytes, training: Callable[[bytes], RecordDict] = payload_to_content
) -> RecordDict:
    """A stage's payload as message records (the module doc; ``training`` makes the
    training payload's records). A reply is the protocol message alone (``secagg_content``)."""
    if kind != KIND_MASKED_INPUT:
        return secagg_content(payload)
    message, train = split_payload(payload)
    return RecordDict({**training(train), **secagg_content(message)})


def content_to_stage(kind: str, content: RecordDict) -> bytes:
    """The stage's payload bytes that ``stage_to_content`` made the records of."""
    message = content_to_secagg(content)
    return (
        join_payload(message, content_to_payload(content)) if kind == KIND_MASKED_INPUT else message
    )


def secagg_content(message: bytes) -> RecordDict:
    """One encoded protocol message as the ``fedpeft.secagg`` record."""
    buffer = io.BytesIO()
    np.save(buffer, np.frombuffer(message, dtype=np.uint8), allow_pickle=False)
    array = Array(dtype="uint8", shape=(len(message),), stype=NUMPY_STYPE, data=buffer.getvalue())
    return RecordDict({keys.SECAGG: ArrayRecord({keys.SECAGG_MESSAGE: array})})


def content_to_secagg(content: RecordDict) -> bytes:
    """The protocol message's bytes, its array's declared name, dtype and rank checked before
    the data is decoded (the message itself is decoded and checked by ``privacy.secagg``)."""
    record = content.array_records.get(keys.SECAGG)
    if record is None:
        raise CodecError(f"message lacks the {keys.SECAGG!r} record")
    array = record.get(keys.SECAGG_MESSAGE)
    if list(record.keys()) != [keys.SECAGG_MESSAGE] or array is None:
        raise CodecError(f"the {keys.SECAGG!r} record holds other arrays than one message")
    if array.dtype != "uint8" or len(array.shape) != 1:
        raise CodecError(
            f"the secure-aggregation message is {array.dtype} {array.shape}, not bytes"
        )
    return bytes(array_to_tensor(array).numpy().tobytes())


# ---- instructions -------------------------------------------------------------------------
def instruction_to_record(ins: TrainInstruction) -> ConfigRecord:
    """Every field of ``ins``, one JSON entry each (tuples become lists)."""
    return ConfigRecord(
        {keys.INSTRUCTION_PREFIX + k: json.dumps(v) for k, v in instruction_fields(ins).items()}
    )


def record_to_instruction(record: ConfigRecord) -> TrainInstruction:
    """The instruction in ``record``, every field checked against its type hint."""
    raw: dict[str, Any] = {}
    for f in dataclasses.fields(TrainInstruction):
        text = record.get(keys.INSTRUCTION_PREFIX + f.name)
        if text is None:
            continue
        try:
            raw[f.name] = json.loads(text) if isinstance(text, str) else _invalid()
        except (json.JSONDecodeError, TypeError) as e:
            raise CodecError(f"instruction field {f.name!r} is invalid ({e})") from None
    return instruction_from_fields(raw)


def instruction_fields(ins: TrainInstruction) -> dict[str, Any]:
    """``ins`` as plain JSON values, field by field (generic over new fields)."""
    return {f.name: getattr(ins, f.name) for f in dataclasses.fields(ins)}


def instruction_from_fields(raw: dict[str, Any]) -> TrainInstruction:
    """The inverse of ``instruction_fields`` for untrusted input: types checked."""
    hints = typing.get_type_hints(TrainInstruction)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(TrainInstruction):
        if f.name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise CodecError(f"instruction lacks field {f.name!r}")
            continue
        try:
            values[f.name] = typed(raw[f.name], hints[f.name])
        except TypeError as e:
            raise CodecError(f"instruction field {f.name!r} is invalid ({e})") from None
    return TrainInstruction(**values)


def _invalid() -> Any:
    raise TypeError("not a JSON string")


def typed(value: Any, hint: Any) -> Any:
    """``value`` (parsed JSON) as type ``hint``: checked, lists made tuples where the hint
    says tuple; raises ``TypeError`` when it does not fit."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or hint is object:
        return value
    if isinstance(hint, typing.NewType):  # e.g. GroupName: checked as what it wraps
        return hint(typed(value, hint.__supertype__))
    if origin in (typing.Union, types.UnionType):
        for option in args:
            try:
                return typed(value, option)
            except TypeError:
                continue
        raise TypeError(f"{value!r} is none of {hint}")
    if hint is type(None):
        if value is None:
            return None
        raise TypeError(f"expected null, got {value!r}")
    if origin in (tuple, list):
        if not isinstance(value, list):
            raise TypeError(f"expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise TypeError(f"expected {len(args)} items, got {len(value)}")
            items = [typed(v, t) for v, t in zip(value, args, strict=True)]
        else:
            items = [typed(v, args[0] if args else Any) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise TypeError(f"expected an object, got {value!r}")
        vt = args[1] if args else Any
        return {str(k): typed(v, vt) for k, v in value.items()}
    return _scalar(value, hint)


def _scalar(value: Any, hint: Any) -> Any:
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    else:
        raise TypeError(f"fields of type {hint} cannot travel")
    raise TypeError(f"expected {hint.__name__}, got {value!r}")
