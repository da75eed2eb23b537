"""Wire codec, byte accounting, and compressed deltas: b-bit quantisation with per-group
scales, 16-bit floats, top-k sparsification and error feedback (``message.py``)."""

from fedpeft.compression.codec import (
    CodecError,
    Layout,
    decode,
    encode,
    layout,
    payload_layout,
)
from fedpeft.compression.feedback import error_feedback
from fedpeft.compression.message import (
    Encoded,
    decode_delta,
    decode_update,
    encode_delta,
    encode_update,
    message_bytes,
    reply_layout,
    rounding_generator,
)
from fedpeft.compression.plan import Plan, make_plan
from fedpeft.compression.scheme import (
    BITS,
    CompressionScheme,
    DeltaLayout,
    configured,
    down_scheme,
    fingerprint,
    layout_of,
    scheme_for,
    up_scheme,
)

__all__ = [
    "BITS",
    "CodecError",
    "CompressionScheme",
    "DeltaLayout",
    "Encoded",
    "Layout",
    "Plan",
    "configured",
    "decode",
    "decode_delta",
    "decode_update",
    "down_scheme",
    "encode",
    "encode_delta",
    "encode_update",
    "error_feedback",
    "fingerprint",
    "layout",
    "layout_of",
    "make_plan",
    "message_bytes",
    "payload_layout",
    "reply_layout",
    "rounding_generator",
    "scheme_for",
    "up_scheme",
]
