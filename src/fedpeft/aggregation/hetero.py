"""Heterogeneous federations: one group global serves clients of different LoRA ranks and
placements, and is aggregated from updates that hold different subsets of its tensors.

A group's global state is the *envelope* of its clients' adapters: every key any client
holds, each LoRA module at the largest rank. LoRA factors are kept in effective units,
``B̃ = (α/r)·B``, so that ``ΔW = B̃·A`` whatever the rank a client trains at:

- ``client_view``: a client of rank ``r`` and scale ``s = α/r`` starts from ``A[:r]`` and
  ``B̃[:, :r] / s`` (HetLoRA's truncation; Cho et al., 2024, EMNLP);
- ``lift``: its reply goes back as ``[A; 0]`` and ``[s·B, 0]`` (zero-padded to the envelope),
  or with ``keep_tail`` padded with the envelope's own components past its rank;
- ``aggregate_partial``: keys are partitioned by the set of clients that hold them, and the
  rule runs once per partition over its holders, so a key only some clients train is the
  average of those clients (weights renormalised), never diluted by absent ones — or, with
  ``dilute``, moved only by the holders' share of the updates' weight (an absent client
  counts as "no change"), so a key one part of the federation trains alone drifts with
  that part's data at a fraction of the speed.

Pure functions; inputs are never changed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch

from fedpeft.aggregation.lora import lora_pairs
from fedpeft.types import AdapterState

Rule = Callable[[Sequence[tuple[AdapterState, float]]], AdapterState]


def lora_scales(state: AdapterState, alpha: float | None) -> dict[str, float]:
    """``{B key: α/r}`` for every LoRA module of ``state`` (rank from B's columns); empty
    when ``alpha`` is None (not a LoRA state)."""
    if alpha is None:
        return {}
    return {b: alpha / state[b].shape[1] for _, b in lora_pairs(state)}


def client_view(
    global_state: AdapterState, template: AdapterState, alpha: float | None = None
) -> AdapterState:
    """The client's starting state: ``template``'s keys and shapes cut out of the envelope
    (LoRA A rows and B columns truncated to the client's rank, B divided by ``α/r``)."""
    scales = lora_scales(template, alpha)
    a_keys = {a for a, _ in lora_pairs(template)} if alpha is not None else set()
    out: AdapterState = {}
    for key, ref in template.items():
        if key not in global_state:
            raise ValueError(f"the group's global state has no tensor {key!r}")
        g = global_state[key]
        if key in a_keys:
            value = g[: ref.shape[0]]
        elif key in scales:
            value = g[:, : ref.shape[1]] / scales[key]
        else:
            value = g
        if value.shape != ref.shape:
            raise ValueError(
                f"tensor {key!r} is {tuple(g.shape)} in the group's global state and cannot "
                f"serve a client that needs {tuple(ref.shape)}"
            )
        out[key] = value.to(ref.dtype).clone()
    return out


def lift(
    state: AdapterState,
    global_state: AdapterState,
    alpha: float | None = None,
    keep_tail: bool = False,
) -> AdapterState:
    """A client's reply in the envelope's shapes: ``[A; 0]``, ``[(α/r)·B, 0]``, others as is.

    With ``keep_tail`` the rank components past the client's rank are the envelope's own
    (``[A; A_g[r:]]``, ``[(α/r)·B, B̃_g[:, r:]]``): a client that did not train them counts as
    "no change" there, as ``dilute`` counts a key it does not hold. Zero-padding instead
    pulls those components towards zero by the low-rank clients' share every round, and
    erases them in a round where no client trains at the envelope's rank."""
    scales = lora_scales(state, alpha)
    a_keys = {a for a, _ in lora_pairs(state)} if alpha is not None else set()
    out: AdapterState = {}
    for key, value in state.items():
        g = global_state[key]
        if key in a_keys:
            padded = g.clone() if keep_tail else torch.zeros_like(g)
            padded[: value.shape[0]] = value
        elif key in scales:
            padded = g.clone() if keep_tail else torch.zeros_like(g)
            padded[:, : value.shape[1]] = value * scales[key]
        else:
            padded = value.clone()
        out[key] = padded
    return out


def extend_envelope(
    global_state: AdapterState, template: AdapterState, alpha: float | None = None
) -> AdapterState:
    """The envelope grown to serve ``template`` too: new keys come from the template (a new
    client's initialisation, B̃ scaled), LoRA ranks grow with zero B̃ columns and the
    template's A rows (so the new directions start untrained, as LoRA's do)."""
    scales = lora_scales(template, alpha)
    pairs = dict(lora_pairs(template)) if alpha is not None else {}
    out = dict(global_state)
    for key, ref in template.items():
        if key in pairs.values():
            continue  # B follows its A below
        if key not in out:
            out[key] = ref.clone()
            if key in pairs:
                b_key = pairs[key]
                out[b_key] = template[b_key] * scales[b_key]
            continue
        if key in pairs and ref.shape[0] > out[key].shape[0]:
            have, b_key = out[key].shape[0], pairs[key]
            out[key] = torch.cat([out[key], ref[have:]], dim=0)
            b = out[b_key]
            out[b_key] = torch.cat([b, b.new_zeros(b.shape[0], ref.shape[0] - have)], dim=1)
    return out


def aggregate_partial(
    updates: Sequence[tuple[AdapterState, float]],
    current: Mapping[str, torch.Tensor],
    rule: Rule,
    dilute: bool = False,
) -> AdapterState:
    """``rule`` run once per set of keys held by the same clients, over those clients.

    LoRA A and B of one module are always held together, so rules that pair them (exact
    LoRA, HetLoRA) see whole modules. Keys no client holds keep ``current``'s value. With
    ``dilute`` a partition's result ``x`` becomes ``current + s·(x − current)``, ``s`` the
    holders' share of the updates' total weight (1 for keys every client holds).
    """
    holders: dict[str, tuple[int, ...]] = {}
    for key in current:
        holders[key] = tuple(i for i, (state, _) in enumerate(updates) if key in state)
    partitions: dict[tuple[int, ...], list[str]] = {}
    for key, who in holders.items():
        partitions.setdefault(who, []).append(key)
    total = sum(weight for _, weight in updates)
    out = {key: value.clone() for key, value in current.items()}
    for who, keys in partitions.items():
        if not who:
            continue
        part = [({k: updates[i][0][k] for k in keys}, updates[i][1]) for i in who]
        merged = rule(part)
        share = sum(updates[i][1] for i in who) / total if total > 0 else 1.0
        if dilute and share < 1.0:
            merged = {k: current[k] + share * (v - current[k]) for k, v in merged.items()}
        out.update(merged)
    return out
