"""Top-k sparsification of one tensor's delta (Aji & Heafield, 2017; Lin et al., 2018, Deep
Gradient Compression): keep the ``k`` values of largest magnitude, send them with their
positions, and let error feedback carry the rest to later messages.

``T_k(x)_i = x_i`` if ``|x_i|`` is among the ``k`` largest, else 0, so
``‖x − T_k(x)‖² ≤ (1 − k/n)·‖x‖²`` (a contraction, which keeps error feedback bounded).
"""

from __future__ import annotations

import torch
from torch import Tensor


def top_k(x: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """(positions in increasing order, the values there) of the ``k`` largest ``|x_i|``."""
    if k >= x.numel():
        return torch.arange(x.numel()), x.clone()
    positions = torch.topk(x.abs(), k, sorted=False).indices.sort().values
    return positions, x[positions]


def scatter(numel: int, positions: Tensor, values: Tensor) -> Tensor:
    """The dense float32 vector with ``values`` at ``positions`` and zeros elsewhere."""
    out = torch.zeros(numel)
    out[positions.long()] = values.float()
    return out
