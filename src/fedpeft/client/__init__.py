"""Client: local training and the client half of each message."""

from fedpeft.client.handler import (
    META_CLIENT_ID,
    META_METRICS,
    META_NONCE,
    META_NUM_EXAMPLES,
    META_ROUND,
    handle_fit,
)
from fedpeft.client.train import ClientData, derive_seed, train

__all__ = [
    "META_CLIENT_ID",
    "META_METRICS",
    "META_NONCE",
    "META_NUM_EXAMPLES",
    "META_ROUND",
    "ClientData",
    "derive_seed",
    "handle_fit",
    "train",
]
