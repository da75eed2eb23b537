"""Secure aggregation (SecAgg+): the server learns only the sum of the clients' updates.

Pairwise additive masks from X25519 key agreement, fixed-point arithmetic mod 2^b, and
Shamir-shared seeds (threshold t) so the sum is still recovered when clients drop after
masking. Transport-agnostic: ``SecAggServer`` and ``SecAggClient`` exchange the typed
messages of ``messages``; ``secure_sum`` runs a round in process.
"""

from fedpeft.privacy.secagg.client import ProtocolError, SecAggClient
from fedpeft.privacy.secagg.crypto import seeded_bytes
from fedpeft.privacy.secagg.driver import SecAggCost, secure_sum
from fedpeft.privacy.secagg.fixedpoint import (
    FixedPoint,
    state_from_vector,
    state_vector,
    vector_length,
)
from fedpeft.privacy.secagg.messages import MessageError, decode, encode
from fedpeft.privacy.secagg.server import (
    SecAggAborted,
    SecAggResult,
    SecAggServer,
    neighbour_graph,
    threshold_for,
)

__all__ = [
    "FixedPoint",
    "MessageError",
    "ProtocolError",
    "SecAggAborted",
    "SecAggClient",
    "SecAggCost",
    "SecAggResult",
    "SecAggServer",
    "decode",
    "encode",
    "neighbour_graph",
    "secure_sum",
    "seeded_bytes",
    "state_from_vector",
    "state_vector",
    "threshold_for",
    "vector_length",
]
