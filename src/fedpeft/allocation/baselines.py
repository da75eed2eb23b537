"""Published heterogeneity baselines as allocation policies, priced by the same cost model
and run in the same harness as ``utility`` (one ``allocation.policy`` each):

- ``uniform_fit``: the one catalogue configuration of the highest capacity κ that fits every
  client of the round (memory and deadline at its full local steps); when none fits them all,
  the one that fits the most.
- ``uniform_large``: the catalogue's largest configuration for everyone; the clients it does
  not fit are left out.
- ``unconstrained``: the same, ignoring every device limit (the upper bound: nobody is
  refused and no round is cut at the deadline).
- ``flexlora``: rank by tier — each client trains full-depth LoRA at the largest catalogue
  rank that fits it (Bai et al., 2024, NeurIPS); pair with ``server.aggregator =
  "exact_lora_svd"`` (the exact ``Σ p_c B_c A_c`` re-factored by SVD; each client then
  starts from its top-r singular directions).
- ``hetlora``: rank by tier with rank self-pruning (Cho et al., 2024, EMNLP); pair with
  ``server.aggregator = "hetlora"`` (zero-padding, norm weights). Pruning here is decided by
  the server from the factors a client returns: when the tail ``r − ⌈γr⌉`` rank components
  carry less than ``threshold × (r − ⌈γr⌉)/r`` of the update's energy ``‖B A‖²``, the client's
  rank drops to ``⌈γr⌉`` for the rounds after (never below the catalogue's smallest). The
  paper's local regulariser on the tail is not reproduced.
- ``fedra``: per round, each client trains LoRA on a random subset of blocks (Su et al., 2023,
  FedRA), drawn with a generator seeded by (run seed, round, client). FedRA's clients build a
  sub-model of the drawn layers; ours keep the whole frozen model, whose backprop depth sets
  memory, so the subset (``⌈f·k⌉`` blocks) is drawn from the ``k`` top blocks the device can
  reach at FedRA's fixed rank. ``baselines.fedra_redraw = false`` keeps each client's first
  draw for the whole run (not FedRA: it separates the redraw from the subset's size).

None of them shortens local steps: that is the ``utility`` policy's choice.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch

from fedpeft.allocation.catalogue import Candidate, lora_name, make_candidate
from fedpeft.allocation.policies import fixed
from fedpeft.allocation.registry import register_policy
from fedpeft.allocation.utility import Allocation, AllocationProblem, ClientInfo, evaluate
from fedpeft.peft.lora import LoraSpec
from fedpeft.types import AdapterState


def _lora(candidate: Candidate) -> LoraSpec | None:
    return candidate.spec if isinstance(candidate.spec, LoraSpec) else None


def by_capacity(problem: AllocationProblem) -> list[Candidate]:
    """Catalogue candidates, highest κ first (ties: more parameters, then catalogue order)."""
    arch = problem.arch
    order = {c.name: i for i, c in enumerate(problem.catalogue)}
    return sorted(
        problem.catalogue,
        key=lambda c: (-problem.capacity[c.name], -c.spec.trainable_params(arch), order[c.name]),
    )


def uniform_fit(problem: AllocationProblem, client: ClientInfo) -> Allocation:
    """The largest configuration every client of the round can run, the same for all."""
    clients = problem.round_clients or (client,)
    best, fits = None, -1
    for candidate in by_capacity(problem):
        n = sum(evaluate(problem, candidate, c).feasible for c in clients)
        if n > fits:
            best, fits = candidate, n
        if n == len(clients):
            break
    assert best is not None
    return fixed(problem, client, best, "uniform_fit")


def uniform_large(problem: AllocationProblem, client: ClientInfo) -> Allocation:
    """The catalogue's largest configuration; the clients it does not fit are left out."""
    return fixed(problem, client, by_capacity(problem)[0], "uniform_large")


def unconstrained(problem: AllocationProblem, client: ClientInfo) -> Allocation:
    """The catalogue's largest configuration for everyone, device limits ignored."""
    return fixed(problem, client, by_capacity(problem)[0], "unconstrained", ignore_limits=True)


def rank_ladder(problem: AllocationProblem, cap: int | None = None) -> list[Candidate]:
    """Full-depth LoRA at the catalogue's ranks with the default targets, largest first."""
    arch = problem.arch
    ranks = sorted({s.r for c in problem.catalogue if (s := _lora(c)) is not None}, reverse=True)
    ranks = [r for r in ranks if cap is None or r <= cap] or ranks[-1:]
    return [
        make_candidate(
            "lora",
            {"r": r, "alpha": 2.0 * r},
            lora_name(r, list(range(arch.layers)), arch.layers, "qv"),
        )
        for r in ranks
    ]


def _rank_by_tier(
    problem: AllocationProblem, client: ClientInfo, policy: str, cap: int | None
) -> Allocation:
    ladder = rank_ladder(problem, cap)
    evals = tuple(evaluate(problem, c, client) for c in ladder)
    tier = client.resources.tier
    for ev in evals:
        if ev.feasible:
            reason = f"{policy}: the largest full-depth rank that fits, r = {_rank(ev.candidate)}"
            if cap is not None:
                reason += f" (self-pruned to at most r = {cap})"
            return Allocation(client.client_id, tier, policy, ev.candidate, ev.terms, reason, evals)
    broken = "; ".join(v.describe() for v in evals[-1].violations)
    reason = f"{policy}: no full-depth rank fits; the smallest breaks {broken}"
    return Allocation(client.client_id, tier, policy, None, None, reason, evals)


def _rank(candidate: Candidate) -> int:
    spec = _lora(candidate)
    return spec.r if spec is not None else 0


def flexlora(problem: AllocationProblem, client: ClientInfo) -> Allocation:
    """FlexLoRA's allocation: the largest full-depth rank that fits the client."""
    return _rank_by_tier(problem, client, "flexlora", None)


def hetlora(problem: AllocationProblem, client: ClientInfo) -> Allocation:
    """HetLoRA's allocation: as FlexLoRA's, capped by the rank the client pruned itself to."""
    cap = problem.estimator.client_ranks.get(client.client_id)
    return _rank_by_tier(problem, client, "hetlora", cap)


def fedra_rank(problem: AllocationProblem) -> int:
    """``baselines.fixed_rank``, else the catalogue's middle LoRA rank."""
    if problem.config.baselines.fixed_rank is not None:
        return problem.config.baselines.fixed_rank
    ranks = sorted({s.r for c in problem.catalogue if (s := _lora(c)) is not None})
    return ranks[len(ranks) // 2] if ranks else 8


def reachable_blocks(problem: AllocationProblem, client: ClientInfo, rank: int) -> int:
    """The most top blocks the client can train at ``rank`` within both limits (0: none)."""
    layers = problem.arch.layers
    for k in range(layers, 0, -1):
        blocks = list(range(layers - k, layers))
        opts = {"r": rank, "alpha": 2.0 * rank} | ({"layers": blocks} if k < layers else {})
        if evaluate(problem, make_candidate("lora", opts), client).feasible:
            return k
    return 0


def fedra(problem: AllocationProblem, client: ClientInfo) -> Allocation:
    """A seeded random subset of ``⌈f·k⌉`` of the ``k`` top blocks the client can reach."""
    rank, layers = fedra_rank(problem), problem.arch.layers
    k = reachable_blocks(problem, client, rank)
    tier = client.resources.tier
    if k == 0:
        reason = f"fedra: not even the top block fits at r = {rank}"
        return Allocation(client.client_id, tier, "fedra", None, None, reason, ())
    size = max(1, math.ceil(problem.config.baselines.fedra_fraction * k))
    draw_round = problem.round if problem.config.baselines.fedra_redraw else 0
    rng = np.random.default_rng([problem.seed, draw_round, client.client_id, 0xFED8A])
    drawn = sorted(int(b) for b in rng.choice(np.arange(layers - k, layers), size, replace=False))
    name = f"lora-r{rank}-L{'.'.join(map(str, drawn))}"
    candidate = make_candidate("lora", {"r": rank, "alpha": 2.0 * rank, "layers": drawn}, name)
    ev = evaluate(problem, candidate, client)
    reason = f"fedra: blocks {drawn}, {size} drawn of the top {k} the device reaches"
    return Allocation(client.client_id, tier, "fedra", candidate, ev.terms, reason, (ev,))


def tail_share(state: AdapterState, keep: int) -> float:
    """``Σ‖B[:, k:] A[k:]‖² / Σ‖B A‖²`` over the LoRA modules of ``state`` (0 when all zero),
    with ``‖BA‖²_F = tr((BᵀB)(AAᵀ))``."""
    tail = total = 0.0
    for key, a in state.items():
        if ".lora_A." not in key:
            continue
        b = state[key.replace(".lora_A.", ".lora_B.")].double()
        a = a.double()
        total += float(((b.T @ b) * (a @ a.T)).sum())
        bt, at = b[:, keep:], a[keep:]
        tail += float(((bt.T @ bt) * (at @ at.T)).sum())
    return tail / total if total > 0 else 0.0


def pruned_ranks(
    updates: Mapping[int, tuple[int, AdapterState]], ratio: float, threshold: float, floor: int
) -> dict[int, int]:
    """HetLoRA's self-pruning, decided from each client's returned factors: a client of rank
    ``r`` keeps ``⌈γr⌉`` when its tail carries less than ``threshold·(r − ⌈γr⌉)/r`` of the
    energy; clients that do not prune are left out of the result."""
    out = {}
    for cid, (rank, state) in updates.items():
        keep = max(floor, math.ceil(ratio * rank))
        if keep >= rank:
            continue
        with torch.no_grad():
            share = tail_share(state, keep)
        if share < threshold * (rank - keep) / rank:
            out[cid] = keep
    return out


register_policy("uniform_fit", uniform_fit)
register_policy("uniform_large", uniform_large)
register_policy("unconstrained", unconstrained, ignores_limits=True)
register_policy("flexlora", flexlora)
register_policy("hetlora", hetlora)
register_policy("fedra", fedra)
