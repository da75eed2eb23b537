"""Robust aggregation: rules that a few bad updates (Byzantine, NaN, huge) cannot steer.

Non-finite values, by rule: ``coordinate_median`` and ``trimmed_mean`` treat each NaN/±Inf
entry as missing and use the finite values at that coordinate (an error only if none is finite);
``krum``/``multi_krum`` treat an update holding any NaN/Inf as infinitely far from every other,
so it is never chosen; ``clip_norms``/``clip_deltas`` refuse one (it has no norm). Computation is
in float64; tensors come back in the first update's dtype and inputs are never changed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from fedpeft.aggregation.compat import check_states
from fedpeft.aggregation.fedavg import fedavg
from fedpeft.types import AdapterState

Updates = Sequence[tuple[AdapterState, float]]


def coordinate_median(updates: Updates) -> AdapterState:
    """Coordinate-wise median (Yin et al., 2018, ICML): ``θ[j] = median_c θ_c[j]``.

    Weights are ignored: every client counts once. An even count averages the two middle values
    (as ``np.median``). Non-finite entries are skipped, as ``np.nanmedian`` skips NaN.
    """
    _check(updates, "coordinate_median")
    out: AdapterState = {}
    for key, ref in updates[0][0].items():
        values, count = _sorted_finite(_stacked(updates, key), key, "coordinate_median")
        lo, hi = ((count - 1) // 2).unsqueeze(0), (count // 2).unsqueeze(0)
        median = (values.gather(0, lo) + values.gather(0, hi)).squeeze(0) / 2
        out[key] = median.to(ref.dtype)
    return out


def trimmed_mean(updates: Updates, trim_fraction: float = 0.1, min_trim: int = 1) -> AdapterState:
    """Coordinate-wise trimmed mean (Yin et al., 2018, ICML), as ``scipy.stats.trim_mean``.

    With the k finite values at a coordinate sorted, ``g = min(max(⌊β k⌋, m), ⌊(k − 1)/2⌋)``
    and ``θ[j] = (1 / (k − 2g)) Σ_{i=g}^{k−g−1} θ_(i)[j]``. It tolerates ``g`` bad clients
    on each side. ``m = min_trim`` (default 1) makes the default trim from 3 clients on —
    with β = 0.1 alone, fewer than 10 clients would trim nothing; ``min_trim = 0`` is
    scipy's rule. At least one value is always kept. Weights are ignored.
    """
    if not 0 <= trim_fraction < 0.5:
        raise ValueError(f"`trim_fraction` should be in [0, 0.5), got {trim_fraction}.")
    if isinstance(min_trim, bool) or not isinstance(min_trim, int) or min_trim < 0:
        raise ValueError(f"`min_trim` should be a non-negative integer, got {min_trim!r}.")
    _check(updates, "trimmed_mean")
    out: AdapterState = {}
    for key, ref in updates[0][0].items():
        values, count = _sorted_finite(_stacked(updates, key), key, "trimmed_mean")
        cut = torch.floor(count.to(torch.float64) * trim_fraction).long()
        cut = torch.minimum(torch.clamp(cut, min=min_trim), (count - 1) // 2)
        rank = torch.arange(len(updates)).reshape(-1, *([1] * count.ndim))
        keep = (rank >= cut) & (rank < count - cut)
        mean = torch.where(keep, values, 0.0).sum(dim=0) / keep.sum(dim=0)
        out[key] = mean.to(ref.dtype)
    return out


def krum(updates: Updates, num_byzantine: int = 1) -> AdapterState:
    """Krum (Blanchard et al., 2017, NeurIPS): the update closest to its neighbours.

    ``s(c) = Σ_{k ∈ N_c} ‖θ_c − θ_k‖²`` over the ``n − f − 2`` nearest others (at least one);
    returns ``θ_{argmin s}``. The guarantee needs ``n ≥ 2f + 3``; with fewer clients it still
    returns the most central update. Exact ties go to the earlier update. Weights are ignored.
    """
    scores = _krum_scores(updates, num_byzantine)
    best = int(torch.argmin(scores))
    return {key: value.clone() for key, value in updates[best][0].items()}


def multi_krum(updates: Updates, num_byzantine: int = 1, m: int | None = None) -> AdapterState:
    """Multi-Krum (Blanchard et al., 2017): FedAvg over the ``m`` lowest Krum scores.

    ``m`` defaults to ``n − f`` (at least 1); updates with infinite score (non-finite ones) are
    never kept. The kept updates are weighted by their example counts, as in Flower; ``m = 1`` is
    Krum.
    """
    scores = _krum_scores(updates, num_byzantine)
    keep = max(1, len(updates) - num_byzantine) if m is None else m
    if not 1 <= keep <= len(updates):
        raise ValueError(f"`m` should be in [1, {len(updates)}], got {m}.")
    order = sorted(range(len(updates)), key=lambda i: (float(scores[i]), i))[:keep]
    return fedavg([updates[i] for i in order if math.isfinite(float(scores[i]))])


def clip_norms(updates: Updates, max_norm: float) -> list[tuple[AdapterState, float]]:
    """Norm clipping (Sun et al., 2019, "Can You Really Backdoor FL?"): ``Δ · min(1, M / ‖Δ‖₂)``.

    ``‖Δ‖₂`` is the L2 norm of the whole flattened state. Meant for deltas ``θ_c − θ_global``
    (see ``clip_deltas``), then FedAvg. Weights pass through.
    """
    _positive_norm(max_norm)
    out: list[tuple[AdapterState, float]] = []
    for i, (state, weight) in enumerate(updates):
        norm = _l2(state)
        if not math.isfinite(norm):
            raise ValueError(f"clip_norms: update {i} holds NaN or Inf; reject it before clipping")
        scale = min(1.0, max_norm / norm) if norm > 0 else 1.0
        out.append(
            ({k: (v.to(torch.float64) * scale).to(v.dtype) for k, v in state.items()}, weight)
        )
    return out


def clip_deltas(
    global_state: AdapterState, updates: Updates, max_norm: float
) -> list[tuple[AdapterState, float]]:
    """Clip each client's delta and return full states: ``θ_g + clip(θ_c − θ_g, M)``."""
    _positive_norm(max_norm)
    deltas: list[tuple[AdapterState, float]] = []
    check_states([state for state, _ in updates], "clip_deltas", reference=global_state)
    for state, weight in updates:
        delta = {
            k: v.to(torch.float64) - global_state[k].to(torch.float64) for k, v in state.items()
        }
        deltas.append((delta, weight))
    return [
        ({k: (global_state[k].to(torch.float64) + d[k]).to(s[k].dtype) for k in s}, w)
        for (d, w), (s, _) in zip(clip_norms(deltas, max_norm), updates, strict=True)
    ]


def _check(updates: Updates, rule: str) -> None:
    check_states([state for state, _ in updates], rule)


def _stacked(updates: Updates, key: str) -> Tensor:
    return torch.stack([state[key].to(torch.float64) for state, _ in updates])


def _sorted_finite(stack: Tensor, key: str, rule: str) -> tuple[Tensor, Tensor]:
    """Values sorted along clients with non-finite ones last, and how many are finite."""
    finite = torch.isfinite(stack)
    count = finite.sum(dim=0)
    if bool((count == 0).any()):
        raise ValueError(f"{rule}: every update is NaN or Inf at some entry of {key!r}")
    return torch.where(finite, stack, torch.inf).sort(dim=0).values, count


def _krum_scores(updates: Updates, num_byzantine: int) -> Tensor:
    """``s(c)``: summed squared distances to the nearest ``n − f − 2`` others; inf if non-finite."""
    _check(updates, "krum")
    if num_byzantine < 0:
        raise ValueError(f"`num_byzantine` should be ≥ 0, got {num_byzantine}.")
    n = len(updates)
    dist = torch.zeros(n, n, dtype=torch.float64)
    finite = torch.ones(n, dtype=torch.bool)
    for key in updates[0][0]:
        x = _stacked(updates, key).reshape(n, -1)
        ok = torch.isfinite(x).all(dim=1)
        finite &= ok
        x = torch.where(ok[:, None], x, 0.0)
        for c in range(n):
            dist[c] += ((x - x[c]) ** 2).sum(dim=1)
    dist[~finite, :] = torch.inf
    dist[:, ~finite] = torch.inf
    dist.fill_diagonal_(torch.inf)
    neighbours = min(n - 1, max(1, n - num_byzantine - 2))
    scores = dist.sort(dim=1).values[:, :neighbours].sum(dim=1)
    scores[~finite] = torch.inf
    if not bool(torch.isfinite(scores).any()):
        raise ValueError("krum: no update is finite and close to another; nothing to choose")
    return scores


def _l2(state: AdapterState) -> float:
    """``‖θ‖₂`` of the flattened state without overflow (scaled by the largest entry)."""
    tensors = [t.to(torch.float64) for t in state.values() if t.numel()]
    peak = max((float(t.abs().max()) for t in tensors), default=0.0)
    if peak == 0 or not math.isfinite(peak):
        return peak
    return peak * math.sqrt(sum(float(((t / peak) ** 2).sum()) for t in tensors))


def _positive_norm(max_norm: float) -> None:
    if not (math.isfinite(max_norm) and max_norm > 0):
        raise ValueError(f"`max_norm` should be positive, got {max_norm}.")
