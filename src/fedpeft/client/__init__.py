"""Client: local training and the client half of each message."""

from fedpeft.client.handler import (
    EXTRA,
    META_CLIENT_ID,
    META_METRICS,
    META_NONCE,
    META_NUM_EXAMPLES,
    META_ROUND,
    FitResult,
    handle_fit,
    split_extras,
)
from fedpeft.client.state import ClientState, ClientStateStore
from fedpeft.client.train import ClientData, derive_seed, train

__all__ = [
    "EXTRA",
    "META_CLIENT_ID",
    "META_METRICS",
    "META_NONCE",
    "META_NUM_EXAMPLES",
    "META_ROUND",
    "ClientData",
    "ClientState",
    "ClientStateStore",
    "derive_seed",
    "FitResult",
    "handle_fit",
    "split_extras",
    "train",
]
