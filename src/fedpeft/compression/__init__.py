"""Wire codec and byte accounting (quantisation and sparsification come with issue #3/#5)."""

from fedpeft.compression.codec import CodecError, decode, encode

__all__ = ["CodecError", "decode", "encode"]
