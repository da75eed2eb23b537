"""Error feedback (Seide et al., 2014; Stich et al., 2018; Karimireddy et al., 2019, EF-SGD):
the sender keeps what compression left out and adds it to its next delta::

    c_t = Δ_t + e_{t−1}          m_t = C(c_t)          e_t = c_t − D(m_t)

so ``Σ_{s≤t} D(m_s) = Σ_{s≤t} Δ_s − e_t``: the receiver's running sum misses only the
last residual, which stays bounded for a contractive ``C`` instead of growing with ``t``.
Each client keeps its own ``e`` (client state, saved with a checkpoint like any
``AdapterState``); the server keeps one for what it sends down.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from fedpeft.types import AdapterState

Message = TypeVar("Message")
Compressor = Callable[[AdapterState], tuple[Message, AdapterState]]
"""``c ↦ (message, D(message))``: the message and what the receiver will decode from it."""


def add_residual(delta: AdapterState, residual: AdapterState | None) -> AdapterState:
    """``c = Δ + e`` in float32 on the CPU (``e = None``: nothing left over yet); inputs
    untouched."""
    if residual is None:
        return {k: v.detach().cpu().float() for k, v in delta.items()}
    if residual.keys() != delta.keys():
        missing = sorted(residual.keys() ^ delta.keys())[0]
        raise ValueError(f"the residual and the delta differ in tensor {missing!r}")
    return {k: v.detach().cpu().float() + residual[k].cpu().float() for k, v in delta.items()}


def error_feedback(
    delta: AdapterState, residual: AdapterState | None, compress: Compressor[Message]
) -> tuple[Message, AdapterState]:
    """``(m_t, e_t)`` from ``Δ_t`` and ``e_{t−1}``: a pure function, inputs untouched."""
    corrected = add_residual(delta, residual)
    message, decoded = compress(corrected)
    return message, {k: v - decoded[k].float() for k, v in corrected.items()}
