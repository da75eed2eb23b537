"""FLoRA's server half (``server.aggregator = "flora"`` with ``peft.method = "flora"``; Wang
et al., 2024): after a round's rule (FedAvg, for the head), each group's global takes
``merged ← merged + Σ_c p_c B_c A_c`` over its accepted clients (the stacked modules'
product: exact, whatever their ranks) and restarts its LoRA, ``B = 0`` and a fresh ``A``
drawn as PEFT draws it (Kaiming-uniform, bound ``1/√in``) from a generator of (seed,
round), so a resumed run draws the same. The model method is ``peft/flora.py``.

On the wire the merged sums travel beside the adapter as ``x/merged/<key>`` and are not
sent back: a client here keeps no model between rounds, so it receives the whole merged
sum, dense (out × in per adapted layer), every round. A client that kept its merged base
would need only the round's stacked factors, ``Σ_c r_c (in + out)`` numbers per layer —
the download FLoRA's paper counts. A round without quorum merges nothing.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

import torch

from fedpeft.aggregation.lora import lora_pairs, lora_product
from fedpeft.client.handler import MERGED_EXTRA
from fedpeft.client.scaffold import with_prefix
from fedpeft.client.train import derive_seed
from fedpeft.config import ExperimentConfig
from fedpeft.errors import FedpeftError, refuse_first
from fedpeft.peft.state import MERGED, without_merged
from fedpeft.server.receive import Received
from fedpeft.types import AdapterState

log = logging.getLogger("fedpeft.server")

FLORA = "flora"  # the aggregator's and the method's name
_FRESH_A = 0xF10A  # the stream of the restarted LoRA A of (seed, round)


def merged_extras(view: AdapterState) -> tuple[AdapterState, AdapterState]:
    """(``view`` without its merged sums, those sums as the payload's ``x/merged/…``)."""
    rest = without_merged(view)
    merged = {k: v for k, v in view.items() if k not in rest}
    return rest, with_prefix(merged, MERGED_EXTRA)


def merged_adapters(
    adapters: Mapping[str, AdapterState], accepted: Mapping[int, Received], seed: int, rnd: int
) -> dict[str, AdapterState]:
    """Each group's global with its accepted clients' product merged and its LoRA restarted
    (``merge_round``); a group whose merge fails is left as it is, logged."""
    by_group: dict[str, list[tuple[AdapterState, float]]] = {}
    for _cid, r in sorted(accepted.items()):
        if r.update is not None:
            weight = float(r.update.num_examples)
            by_group.setdefault(r.sent.instruction.group, []).append((r.update.state, weight))
    out = dict(adapters)
    for group, updates in sorted(by_group.items()):
        gen = torch.Generator().manual_seed(derive_seed(seed, rnd, _FRESH_A))
        try:
            out[group] = merge_round(adapters[group], updates, gen)
        except ValueError as e:  # validated replies fit; a round must not crash the run
            log.warning("FLoRA: the round's LoRA is not merged into group %s (%s)", group, e)
    return out


def merge_round(
    current: AdapterState, updates: list[tuple[AdapterState, float]], gen: torch.Generator
) -> AdapterState:
    """``current`` with ``Σ_c p_c B_c A_c`` (``p_c ∝`` the weights) added to each module's
    merged sum, its ``B`` zero and its ``A`` fresh; every other key as ``current`` holds it."""
    products = lora_product(updates)
    out = dict(current)
    for a_key, b_key in lora_pairs(current):
        module = a_key.split(".lora_A")[0]
        merged_key = f"{module}.{MERGED}"
        if merged_key not in current or module not in products:
            raise ValueError(f"LoRA module {module!r} has no merged sum to add to")
        merged, delta = current[merged_key], products[module]
        if delta.shape != merged.shape:
            raise ValueError(f"{module!r}: product {tuple(delta.shape)} ≠ {tuple(merged.shape)}")
        out[merged_key] = (merged.double() + delta.double()).to(merged.dtype)
        a = current[a_key]
        bound = 1.0 / math.sqrt(a.shape[1])
        fresh = torch.rand(a.shape, generator=gen, dtype=torch.float64) * 2.0 - 1.0
        out[a_key] = (fresh * bound).to(a.dtype)
        out[b_key] = torch.zeros_like(current[b_key])
    return out


def check_flora(cfg: ExperimentConfig) -> None:
    """Refuses, before anything loads, a FLoRA run it cannot carry out: the method and the
    rule come together, in the synchronous loop, with one configuration for every client,
    every update seen (no secure aggregation, no central DP: the product needs each
    ``B_c A_c``), a plain downlink (the merged sums travel beside the adapter), no server
    optimiser, personal part or uplink error feedback (each would carry a LoRA the merge
    restarts into the next round) and no adaptive bit widths."""
    method, rule = cfg.peft.method == FLORA, cfg.server.aggregator == FLORA
    if method != rule:
        raise FedpeftError(
            "`peft.method = 'flora'` and `server.aggregator = 'flora'` go together (the rule "
            "merges into the method's merged sums); set both, or use 'lora' with another rule."
        )
    if not rule:
        return
    c, p, s = cfg.compression, cfg.privacy, cfg.server
    refusals = (
        (s.mode != "sync", "`server.mode` must be 'sync'"),
        (c.bits_down != 32, "`compression.bits_down` must be 32 (the merged sums travel "
         "beside the adapter)"),
        (p.mode == "central", "`privacy.mode` must not be 'central' (the merge needs each "
         "client's B_c A_c)"),
        (p.secure_aggregation, "`privacy.secure_aggregation` must be off (the merge needs "
         "each client's B_c A_c)"),
        (cfg.allocation.enabled, "`allocation.enabled` must be false"),
        (s.optimizer != "none", "`server.optimizer` must be 'none' (the LoRA restarts every "
         "round)"),
        (c.bits_up == "adaptive", "`compression.bits_up` must not be 'adaptive' (its cost "
         "model does not price the merged sums)"),
        (c.error_feedback and (c.bits_up != 32 or c.topk is not None), "`compression."
         "error_feedback` must be off with a lossy uplink (a residual left from one round's "
         "LoRA would be merged through the next round's fresh A)"),
        (cfg.personalization.mode in ("head", "lora_b", "dual"), "`personalization.mode` must "
         f"not keep a personal part, got {cfg.personalization.mode!r}"),
    )  # fmt: skip
    refuse_first("`server.aggregator = 'flora'`", refusals)
