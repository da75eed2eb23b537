"""LoRA-aware aggregation: average what the model computes, ``ΔW = (α/r)·B·A``, not its factors.

Every rule takes ``[(state, n_c)]`` and uses ``p_c = n_c / Σ_k n_k``. LoRA factors are paired by
their PEFT keys (``….lora_A.weight``: (r, in) ↔ ``….lora_B.weight``: (out, r)); every other key
(a trained head, biases, ``lora_embedding_*``, DoRA magnitudes) is averaged with FedAvg.
Products here are the raw ``B·A``: the model applies ``α/r``. When clients' ranks differ under one
α, their scales ``α/r_c`` differ too; fold ``α/r_c`` into ``B_c`` before aggregating to keep the
exact rules exact. Computation is in float64; each tensor comes back in its input dtype and
inputs are never changed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from fedpeft.aggregation.compat import check_states, normalised_weights
from fedpeft.aggregation.fedavg import fedavg
from fedpeft.types import AdapterState

Updates = Sequence[tuple[AdapterState, float]]
_A, _B = "lora_A", "lora_B"


def lora_pairs(state: AdapterState) -> list[tuple[str, str]]:
    """Every LoRA module's ``(A key, B key)``, sorted; the B key is the A key with ``lora_B``."""
    pairs: list[tuple[str, str]] = []
    for key in sorted(state):
        parts = key.split(".")
        partner = _swap(parts, _A, _B) if _A in parts else _swap(parts, _B, _A)
        if (_A in parts or _B in parts) and partner not in state:
            raise ValueError(f"LoRA factor {key!r} has no partner {partner!r} in the adapter state")
        if _A in parts:
            pairs.append((key, partner))
    return pairs


def weighted_lora(updates: Updates) -> AdapterState:
    """FedPEFT's rule: ``A = Σ_c p_c A_c`` and ``B = Σ_c p_c B_c``, each factor on its own.

    Numerically FedAvg over the keys, kept as its own named rule because ``B·A`` then differs from
    the exact ``Σ_c p_c B_c A_c`` by the cross terms ``p_c p_k B_c A_k`` (c ≠ k); see
    ``exact_lora_svd`` and ``stack_lora`` for exact rules. Every client must share the rank.
    """
    _weights(updates, "weighted_lora")
    _same_shapes(updates, "weighted_lora")
    return fedavg(updates)


def lora_product(updates: Updates) -> dict[str, Tensor]:
    """The exact averaged update of every LoRA module: ``ΔW = Σ_c p_c B_c A_c`` (no ``α/r``).

    Keys are module names (the A key up to ``.lora_A``); shapes are (out, in), or a
    convolution's (out, in, kh, kw). Ranks may differ.
    """
    p = _weights(updates, "lora_product")
    out: dict[str, Tensor] = {}
    for a_key, b_key in lora_pairs(updates[0][0]):
        delta = _product(_factors(updates, a_key, b_key), p)
        a_ref = updates[0][0][a_key]
        delta = delta.reshape(delta.shape[0], *a_ref.shape[1:])
        out[a_key.split(f".{_A}")[0]] = delta.to(a_ref.dtype)
    return out


def exact_lora_svd(updates: Updates, rank: int | None = None) -> AdapterState:
    """The exact average re-factored to rank r (FlexLoRA; Bai et al., 2024, NeurIPS).

    ``U S Vᵀ = Σ_c p_c B_c A_c``;  ``A' = √S_r V_rᵀ``,  ``B' = U_r √S_r``  (Eckart–Young: the best
    rank-r approximation). ``rank`` defaults to the module's largest input rank, so the state keeps
    its keys and shapes; ``B'A'`` is exact whenever the average has rank ≤ r (a shared A, or
    r ≥ Σ_c r_c). Directions beyond the average's rank come back as zero rows of A' and zero
    columns of B', which get no gradient: an all-zero average (every ``B_c = 0``) gives a dead
    adapter, so re-initialise A before training on from such a state.
    """
    p = _weights(updates, "exact_lora_svd")
    if rank is not None and rank < 1:
        raise ValueError(f"`rank` should be positive, got {rank}.")
    pairs = lora_pairs(updates[0][0])
    out = _others(updates, pairs)
    for a_key, b_key in pairs:
        factors = _factors(updates, a_key, b_key)
        target = rank or max(a.shape[0] for a, _ in factors)
        a, b = _factorise(*_stacked(factors, p), target)
        out[a_key], out[b_key] = _restore(a, b, updates[0][0][a_key], updates[0][0][b_key])
    return _like(updates[0][0], out)


def stack_lora(updates: Updates) -> AdapterState:
    """FLoRA stacking (Wang et al., 2024, NeurIPS): rank ``Σ_c r_c``, exact for mixed ranks.

    ``A = [A_1; …; A_C]`` (rows),  ``B = [p_1 B_1, …, p_C B_C]`` (columns),  so
    ``B·A = Σ_c p_c B_c A_c`` exactly. The factors follow the order of ``updates``; their product
    does not. The result is meant to be merged into the base weights, not trained further as is.
    """
    p = _weights(updates, "stack_lora")
    pairs = lora_pairs(updates[0][0])
    out = _others(updates, pairs)
    for a_key, b_key in pairs:
        b, a = _stacked(_factors(updates, a_key, b_key), p)
        out[a_key], out[b_key] = _restore(a, b, updates[0][0][a_key], updates[0][0][b_key])
    return _like(updates[0][0], out)


def ffa_lora(updates: Updates) -> AdapterState:
    """FFA-LoRA (Sun et al., 2024, ICLR): A is frozen and shared, so ``B = Σ_c p_c B_c`` is exact.

    ``B·A = Σ_c p_c B_c A``. A is copied from the first update after checking that every client
    holds the same A; other keys are FedAvg-averaged.
    """
    _weights(updates, "ffa_lora")
    first = updates[0][0]
    a_keys = {a for a, _ in lora_pairs(first)}
    for i, (state, _) in enumerate(updates):
        for key in sorted(a_keys):
            if not torch.equal(state[key], first[key]):
                raise ValueError(
                    f"ffa_lora needs one frozen A shared by all clients, but update {i} has "
                    f"another {key!r} than update 0; freeze lora_A or use another aggregator."
                )
    rest = [({k: v for k, v in s.items() if k not in a_keys}, w) for s, w in updates]
    _same_shapes(rest, "ffa_lora")
    out = fedavg(rest)
    out.update({key: first[key].clone() for key in a_keys})
    return _like(first, out)


def hetlora_pad(updates: Updates, max_rank: int | None = None) -> AdapterState:
    """HetLoRA (Cho et al., 2024, EMNLP): zero-pad mixed ranks to R, average with norm weights.

    ``w_c = n_c ‖B_c A_c‖_F / Σ_k n_k ‖B_k A_k‖_F`` per module (the paper's sparsity weights times
    the example counts), ``A = Σ_c w_c [A_c; 0]``, ``B = Σ_c w_c [B_c, 0]``, each padded to R rows /
    columns. R defaults to the largest rank. If every ``B_c A_c`` is zero, ``w_c = p_c``. Give a
    client its share back with ``truncate_rank``; other keys are FedAvg-averaged.
    """
    p = _weights(updates, "hetlora_pad")
    pairs = lora_pairs(updates[0][0])
    out = _others(updates, pairs)
    for a_key, b_key in pairs:
        factors = _factors(updates, a_key, b_key)
        top = max(a.shape[0] for a, _ in factors)
        rank = top if max_rank is None else max_rank
        if rank < top:
            raise ValueError(f"`max_rank` is {rank}, but {a_key!r} has rank {top} in an update")
        w = _norm_weights(factors, p)
        a_out = torch.zeros(rank, factors[0][0].shape[1], dtype=torch.float64)
        b_out = torch.zeros(factors[0][1].shape[0], rank, dtype=torch.float64)
        for wc, (a, b) in zip(w, factors, strict=True):
            a_out[: a.shape[0]] += wc * a
            b_out[:, : b.shape[1]] += wc * b
        out[a_key], out[b_key] = _restore(a_out, b_out, updates[0][0][a_key], updates[0][0][b_key])
    return _like(updates[0][0], out)


def truncate_rank(state: AdapterState, rank: int) -> AdapterState:
    """A client's slice of a rank-R state (HetLoRA): ``A[:r]`` and ``B[:, :r]``; others copied."""
    out = {key: value.clone() for key, value in state.items()}
    for a_key, b_key in lora_pairs(state):
        have = state[a_key].shape[0]
        if not 1 <= rank <= have:
            raise ValueError(f"`rank` should be in [1, {have}] for {a_key!r}, got {rank}.")
        out[a_key] = state[a_key][:rank].clone()
        out[b_key] = state[b_key][:, :rank].clone()
    return out


def svd_redistribute(state: AdapterState, rank: int) -> AdapterState:
    """A client's rank-r start from a global state (FlexLoRA; Bai et al., 2024).

    ``U S Vᵀ = B A``;  ``A' = √S_r V_rᵀ``,  ``B' = U_r √S_r``: the best rank-r approximation of the
    global ``B·A``. Other keys are copied.
    """
    if rank < 1:
        raise ValueError(f"`rank` should be positive, got {rank}.")
    out = {key: value.clone() for key, value in state.items()}
    for a_key, b_key in lora_pairs(state):
        ((a, b),) = _factors([(state, 1.0)], a_key, b_key)
        out[a_key], out[b_key] = _restore(*_factorise(b, a, rank), state[a_key], state[b_key])
    return _like(state, out)


def _swap(parts: list[str], old: str, new: str) -> str:
    return ".".join(new if part == old else part for part in parts)


def _weights(updates: Updates, rule: str) -> list[float]:
    """``p_c = n_c / Σ n``, after checking there are updates, sane weights and one key set."""
    p = normalised_weights([w for _, w in updates], rule)
    check_states([s for s, _ in updates], rule, shapes=False)
    return p


def _same_shapes(updates: Updates, rule: str) -> None:
    hint = "for mixed LoRA ranks use hetlora_pad, stack_lora or exact_lora_svd"
    check_states([s for s, _ in updates], rule, hint=hint)


def _factors(updates: Updates, a_key: str, b_key: str) -> list[tuple[Tensor, Tensor]]:
    """Each client's ``(A, B)`` in float64 as matrices, checked: ``B`` (out, r) against ``A``
    (r, in). A convolution's LoRA (peft: A a (r, in, kh, kw) kernel, B a 1×1 (out, r, 1, 1)
    one) is ``ΔW = B·A`` over A's flattened kernel, so A is read as (r, in·kh·kw) and B as
    (out, r); ``_restore`` gives the results their kernel shapes back."""
    out: list[tuple[Tensor, Tensor]] = []
    for i, (state, _) in enumerate(updates):
        a, b = state[a_key].to(torch.float64), state[b_key].to(torch.float64)
        ok = a.ndim >= 2 and b.ndim == a.ndim and b.shape[1] == a.shape[0]
        ok = ok and all(d == 1 for d in b.shape[2:])
        a, b = (a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)) if ok else (a, b)
        if not ok or (out and (a.shape[1], b.shape[0]) != (out[0][0].shape[1], out[0][1].shape[0])):
            raise ValueError(
                f"update {i}: LoRA factors {a_key!r} {tuple(state[a_key].shape)} and {b_key!r} "
                f"{tuple(state[b_key].shape)} are not (r, in…) and (out, r, 1…) matching update 0"
            )
        out.append((a, b))
    return out


def _restore(a: Tensor, b: Tensor, a_ref: Tensor, b_ref: Tensor) -> tuple[Tensor, Tensor]:
    """Matrix factors of any rank in the kernel shapes of ``a_ref`` / ``b_ref`` (a no-op for
    linear layers)."""
    return a.reshape(a.shape[0], *a_ref.shape[1:]), b.reshape(*b.shape, *b_ref.shape[2:])


def _product(factors: list[tuple[Tensor, Tensor]], p: list[float]) -> Tensor:
    """``Σ_c p_c B_c A_c`` in float64."""
    b_stack, a_stack = _stacked(factors, p)
    return b_stack @ a_stack


def _stacked(factors: list[tuple[Tensor, Tensor]], p: list[float]) -> tuple[Tensor, Tensor]:
    """``([p_1 B_1, …, p_C B_C], [A_1; …; A_C])``, whose product is ``Σ_c p_c B_c A_c``."""
    b = torch.cat([pc * b for pc, (_, b) in zip(p, factors, strict=True)], dim=1)
    return b, torch.cat([a for a, _ in factors], dim=0)


def _norm_weights(factors: list[tuple[Tensor, Tensor]], p: list[float]) -> list[float]:
    """``w_c ∝ p_c ‖B_c A_c‖_F``, normalised; ``p`` itself when every product is zero."""
    # ‖BA‖_F² = tr((BᵀB)(AAᵀ)): r × r work instead of forming the (out, in) product
    squares = [float(((b.T @ b) * (a @ a.T)).sum().clamp(min=0)) for a, b in factors]
    raw = [pc * math.sqrt(sq) for pc, sq in zip(p, squares, strict=True)]
    return [x / sum(raw) for x in raw] if sum(raw) > 0 else p


def _factorise(b_big: Tensor, a_big: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """``(A, B)`` of shapes (rank, in), (out, rank), ``B A`` the best rank-r approximation of
    ``b_big @ a_big`` (rank R). The SVD runs on the R × R core after two QRs: ``B = Q_B R_B``,
    ``Aᵀ = Q_A R_A``, ``R_B R_Aᵀ = U' S Vᵀ'``, so ``U = Q_B U'`` and ``Vᵀ = Vᵀ' Q_Aᵀ``.
    """
    q_b, r_b = torch.linalg.qr(b_big)
    q_a, r_a = torch.linalg.qr(a_big.T)
    u_core, s, vh_core = torch.linalg.svd(r_b @ r_a.T, full_matrices=False)
    u, vh = q_b @ u_core, vh_core @ q_a.T
    k = min(rank, s.numel())
    root = s[:k].sqrt()
    a = torch.zeros(rank, a_big.shape[1], dtype=a_big.dtype)
    b = torch.zeros(b_big.shape[0], rank, dtype=b_big.dtype)
    a[:k] = root[:, None] * vh[:k]
    b[:, :k] = u[:, :k] * root
    return a, b


def _others(updates: Updates, pairs: list[tuple[str, str]]) -> AdapterState:
    """FedAvg over every key that is not a LoRA factor."""
    lora = {key for pair in pairs for key in pair}
    rest = [({k: v for k, v in s.items() if k not in lora}, w) for s, w in updates]
    _same_shapes(rest, "the non-LoRA keys")
    return fedavg(rest)


def _like(reference: AdapterState, out: AdapterState) -> AdapterState:
    """``out`` in ``reference``'s key order, each tensor in ``reference``'s dtype."""
    return {key: out[key].to(reference[key].dtype) for key in reference}
