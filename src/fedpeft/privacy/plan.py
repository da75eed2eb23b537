"""What a privacy configuration means for a run: checks at config time and the DP plan.

``check_privacy(cfg)`` refuses, before anything loads, the combinations that cannot keep
their promise: a non-linear aggregator with secure aggregation or client-level DP (both
only ever see, or only noise, the *sum* of the updates), secure aggregation in an
asynchronous run, adaptive clipping under secure aggregation. ``dp_plan(cfg)`` gives the
noise multiplier (chosen from ``privacy.target_epsilon`` when set), the sampling rate the
accountant uses and the number of releases the run plans.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fedpeft.config import ExperimentConfig
from fedpeft.errors import FedpeftError

LINEAR_AGGREGATORS = ("fedavg", "weighted_lora", "ffa_lora")
"""Rules that are a weighted sum of the updates divided by the sum of the weights, so they
run on a masked (or noised) sum: FedAvg; weighted LoRA (A and B averaged separately is
FedAvg over the keys); FFA-LoRA (FedAvg with the shared A left unchanged). Server optimisers
(FedAvgM/FedAdam/FedYogi) and FedProx act after or before the sum and combine with any.
The registry's ``linear`` flag is what the checks read (``_linear``); this tuple names the
rules registered as linear today, for messages and documentation."""


def _linear(name: str) -> bool:
    from fedpeft.aggregation import aggregator_parts

    return aggregator_parts(name).linear


def check_secure_aggregator(name: str) -> None:
    """Refuses an aggregator that needs the individual updates under secure aggregation."""
    if not _linear(name):
        raise FedpeftError(
            f"`server.aggregator` {name!r} cannot run with `privacy.secure_aggregation`: "
            "the server then learns only the sum of the updates and this rule needs each one; "
            f"use {', '.join(LINEAR_AGGREGATORS)} (server optimisers and FedProx still work)."
        )


def check_dp_aggregator(name: str, mode: str) -> None:
    """Client-level DP noises the sum of clipped updates: only sum-based rules keep it."""
    if not _linear(name):
        raise FedpeftError(
            f"`server.aggregator` {name!r} cannot run with `privacy.mode` {mode!r}: DP-FedAvg "
            "bounds and noises the sum of the clipped updates, which this rule does not use; "
            f"use {', '.join(LINEAR_AGGREGATORS)}."
        )


def check_privacy(cfg: ExperimentConfig) -> None:
    """The config-time checks above (the schema has checked each field already)."""
    p = cfg.privacy
    if p.mode in ("central", "local"):
        check_dp_aggregator(cfg.server.aggregator, p.mode)
    if p.mode != "none" and p.noise_multiplier == 0:
        raise FedpeftError(
            "`privacy.noise_multiplier` is 0, which adds no noise and bounds no ε; give σ > 0 "
            "or set `privacy.mode = 'none'`."
        )
    if p.mode == "central":
        _check_central(cfg)
    if cfg.server.head_init in ("lda", "ncm") and (p.mode != "none" or p.secure_aggregation):
        what = f"`privacy.mode` {p.mode!r}" if p.mode != "none" else "secure aggregation"
        raise FedpeftError(
            f"`server.head_init` {cfg.server.head_init!r} sends each client's class feature "
            f"statistics as they are, which {what} would not protect; use 'auto' or 'random'."
        )
    if not p.secure_aggregation:
        return
    check_secure_aggregator(cfg.server.aggregator)
    if cfg.server.mode == "async":
        raise FedpeftError(
            "`privacy.secure_aggregation` needs a cohort that answers in the same round, but "
            "`server.mode` is 'async'; use `server.mode = 'sync'`."
        )
    if p.adaptive_clipping:
        raise FedpeftError(
            "`privacy.adaptive_clipping` needs each client's clipped/unclipped bit, which "
            "secure aggregation hides; turn one of them off."
        )
    if cfg.data.num_clients < 3:
        raise FedpeftError(
            f"`privacy.secure_aggregation` needs at least 3 clients (a sum of two reveals "
            f"each to the other), got `data.num_clients` = {cfg.data.num_clients}."
        )
    _check_secure_round(cfg)


def _check_secure_round(cfg: ExperimentConfig) -> None:
    """What the secure round (``server/secure.py``) cannot run: it sums one group's
    uncompressed updates and never sees one alone."""
    refusals = [
        (
            cfg.allocation.enabled,
            "`allocation.enabled` gives clients different configurations, whose updates "
            "cannot be summed into one vector; turn the allocation off",
        ),
        (
            cfg.compression.bits_up != 32 or cfg.compression.topk is not None,
            "a masked vector is 64-bit fixed-point words whatever the update's width, so "
            "`compression.bits_up` and `compression.topk` would save nothing; set "
            "`compression.bits_up = 32` and leave `compression.topk` unset",
        ),
        (
            cfg.server.clip_norm is not None,
            "`server.clip_norm` clips each update on the server, which sees only the sum; "
            "unset it (with `privacy.mode = 'central'` clients clip to `privacy.clip_norm` "
            "before masking)",
        ),
    ]
    for refused, why in refusals:
        if refused:
            raise FedpeftError(f"`privacy.secure_aggregation` cannot run here: {why}.")


def _check_central(cfg: ExperimentConfig) -> None:
    """Central DP-FedAvg replaces one global's rule: one group, synchronous rounds."""
    if cfg.allocation.enabled:
        raise FedpeftError(
            "`privacy.mode = 'central'` noises one global adapter's sum, but "
            "`allocation.enabled` trains several groups; use `privacy.mode = 'local'` or "
            "turn the allocation off."
        )
    if cfg.server.mode == "async":
        raise FedpeftError(
            "`privacy.mode = 'central'` accounts one release per synchronous round, which "
            "FedBuff's staleness-weighted steps are not (yet); use `privacy.mode = 'local'` "
            "or 'dpsgd' with `server.mode = 'async'`, or `server.mode = 'sync'`."
        )


def clients_per_round(cfg: ExperimentConfig) -> int:
    """The cohort size of a sync round (as ``server.sampling``), or an async server step's
    buffer."""
    n, s = cfg.data.num_clients, cfg.server
    if s.mode == "async":
        return min(n, s.buffer_size)
    return min(n, max(s.min_clients, math.ceil(s.fraction * n)))


@dataclass(frozen=True)
class DpPlan:
    """Client-level DP of a run: σ, the per-release sampling rate q and the releases."""

    noise_multiplier: float
    sample_rate: float
    releases: int
    delta: float


def dp_plan(cfg: ExperimentConfig) -> DpPlan:
    """σ (from ``target_epsilon`` for ``run.rounds`` releases, when set) and q.

    Central DP: one release per round at q = m/N (the accountant assumes Poisson sampling of
    clients; with q = 1 there is nothing to assume). Local DP: each client's own releases,
    one per round it takes part in, at q = 1 (it knows it was chosen), so the worst case is
    every round.
    """
    p = cfg.privacy
    if p.mode not in ("central", "local"):
        raise FedpeftError(f"`privacy.mode` {p.mode!r} has no client-level DP plan.")
    q = clients_per_round(cfg) / cfg.data.num_clients if p.mode == "central" else 1.0
    sigma = p.noise_multiplier
    if sigma is None:
        from fedpeft.privacy.accountant import noise_for_target_epsilon

        assert p.target_epsilon is not None  # the schema requires one of the two
        sigma = noise_for_target_epsilon(p.target_epsilon, p.delta, q, cfg.run.rounds, p.accountant)
    return DpPlan(sigma, q, cfg.run.rounds, p.delta)


def dpsgd_noise(cfg: ExperimentConfig, client_sizes: list[int]) -> float:
    """σ of sample-level DP-SGD: ``privacy.noise_multiplier``, or the σ that keeps the
    worst client within ``target_epsilon`` if it trains in every round. The smallest client
    is the worst (its rate q = B/n is the largest and its ε grows with steps·q²)."""
    p = cfg.privacy
    if p.noise_multiplier is not None:
        return p.noise_multiplier
    from fedpeft.privacy.accountant import noise_for_target_epsilon

    assert p.target_epsilon is not None  # the schema requires one of the two
    steps, q = dpsgd_release(cfg, min(client_sizes))
    return noise_for_target_epsilon(
        p.target_epsilon, p.delta, q, cfg.run.rounds * steps, p.accountant
    )


def dpsgd_release(cfg: ExperimentConfig, num_examples: int) -> tuple[int, float]:
    """(DP-SGD steps, Poisson rate q) of one local run of a client with ``num_examples``."""
    from fedpeft.privacy.dpsgd import sample_rate, steps_per_epoch

    b = cfg.client.batch_size
    steps = cfg.client.steps or cfg.client.epochs * steps_per_epoch(num_examples, b)
    return steps, sample_rate(num_examples, b)
