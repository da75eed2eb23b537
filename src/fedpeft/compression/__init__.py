"""Wire codec and byte accounting (quantisation and sparsification come with issue #3/#5)."""

from fedpeft.compression.codec import (
    CodecError,
    Layout,
    decode,
    encode,
    layout,
    payload_layout,
)

__all__ = ["CodecError", "Layout", "decode", "encode", "layout", "payload_layout"]
