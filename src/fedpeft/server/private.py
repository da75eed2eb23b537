"""Differential privacy in the round loops, around the ledger kept in ``ServerState``.

Per round (``privacy.PrivacyLedger``; the maths is in ``privacy.clip`` and ``privacy.dpsgd``)::

    ledger = working_ledger(state)                # a copy: states stay values
    check_budget(ledger, cfg, pool, sampled)      # BudgetExceeded: the loop stops first
    sent = with_client_dp(sent, ledger)           # local / dpsgd: σ and S in each instruction
    central: θ' = ledger.aggregate(θ, accepted, m) = θ + (Σ clip(Δ_c, S) + N(0, σ²S²)) / m
    metrics = account(ledger, cfg, pool, records) # ε so far → metrics.jsonl

σ is the ledger's (``privacy.noise_multiplier``, or chosen from ``privacy.target_epsilon``
for the planned rounds when the run started), so a resumed run with more rounds keeps its σ
and is stopped by the budget, not silently re-planned. Central DP draws its noise from a
generator seeded by (run seed, round): a resumed round draws what the uninterrupted one did.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from fedpeft.client.train import derive_seed
from fedpeft.config import ExperimentConfig
from fedpeft.errors import FedpeftError
from fedpeft.privacy import PrivacyLedger, dpsgd_release
from fedpeft.privacy.settings import ClientDp
from fedpeft.server.protocols import ClientPool
from fedpeft.server.receive import Sent
from fedpeft.server.state import ServerState
from fedpeft.types import ClientRecord, ClientStatus

_CENTRAL_NOISE = 0xCE27  # the central-DP noise stream of (seed, round)


def start_ledger(cfg: ExperimentConfig, pool: ClientPool, state: ServerState) -> ServerState:
    """``state`` with a fresh ledger before the first round; a resumed DP run must carry its
    own (its ε cannot be reconstructed)."""
    if cfg.privacy.mode == "none" or state.privacy is not None:
        return state
    if state.round > 0:
        raise FedpeftError(
            f"the checkpoint of round {state.round} holds no privacy ledger but "
            f"`privacy.mode` is {cfg.privacy.mode!r}; its ε is unknown, so start a new run."
        )
    return state.evolve(privacy=PrivacyLedger.start(cfg, client_sizes(cfg, pool)))


def client_sizes(cfg: ExperimentConfig, pool: ClientPool) -> list[int]:
    """Every client's example count (DP-SGD's σ for a target ε depends on the smallest)."""
    if cfg.privacy.mode != "dpsgd":
        return []
    sizes = [pool.num_examples(c) for c in range(cfg.data.num_clients)]
    if any(n is None for n in sizes):
        raise FedpeftError(
            "`privacy.mode = 'dpsgd'` plans DP-SGD from each client's example count, which "
            "this runtime's clients do not report; use `privacy.mode = 'local'` or 'central'."
        )
    return [int(n or 0) for n in sizes]


def working_ledger(state: ServerState) -> PrivacyLedger | None:
    """A copy of the state's ledger that this round may change."""
    return copy_ledger(state.privacy)


def copy_ledger(ledger: PrivacyLedger | None) -> PrivacyLedger | None:
    """An independent copy (through its JSON, which is what a checkpoint holds)."""
    return None if ledger is None else PrivacyLedger.from_json(ledger.to_json())


def planned(
    cfg: ExperimentConfig, pool: ClientPool, clients: Sequence[int]
) -> dict[int, tuple[int, float]]:
    """DP-SGD's (steps, Poisson rate) for each client's local run (``dpsgd_release``)."""
    return {c: dpsgd_release(cfg, pool.num_examples(c) or 1) for c in clients}


def check_budget(
    ledger: PrivacyLedger | None, cfg: ExperimentConfig, pool: ClientPool, sampled: Sequence[int]
) -> None:
    """Raises ``BudgetExceeded`` when this round would take anyone past the target ε."""
    if ledger is not None:
        ledger.check_budget(
            sampled, planned(cfg, pool, sampled) if ledger.mode == "dpsgd" else None
        )


def client_dp(ledger: PrivacyLedger | None, secure: bool = False) -> ClientDp | None:
    """What clients of a client-side mode are told (None: central DP or none). Under
    ``secure`` aggregation central DP's clients are told S too: they clip before masking."""
    modes = ("local", "dpsgd", "central") if secure else ("local", "dpsgd")
    if ledger is None or ledger.mode not in modes:
        return None
    return ClientDp(
        ledger.mode, ledger.noise_multiplier, ledger.clip_norm, ledger.delta, ledger.mechanism
    )


def with_client_dp(
    sent: Sequence[Sent], ledger: PrivacyLedger | None, secure: bool = False
) -> list[Sent]:
    """Each instruction with the client's DP settings."""
    dp = client_dp(ledger, secure)
    if dp is None:
        return list(sent)
    text = dp.to_json()
    return [replace(s, instruction=replace(s.instruction, privacy=text)) for s in sent]


def central_generator(seed: int, rnd: int) -> torch.Generator:
    """The central-DP noise of round ``rnd`` (and adaptive clipping's count noise)."""
    return torch.Generator().manual_seed(derive_seed(seed, rnd, _CENTRAL_NOISE))


def account(
    ledger: PrivacyLedger,
    cfg: ExperimentConfig,
    pool: ClientPool,
    records: Sequence[ClientRecord],
    released: bool,
) -> dict[str, float]:
    """Accounts this round's releases and returns what ``metrics.jsonl`` records: ε so far,
    δ, σ and S. Central DP released something only when the globals moved (``released``);
    under local DP and DP-SGD every client that replied released its update (a rejected
    reply too: the server saw it), counted at its reported DP-SGD steps and rate or, where
    they are missing or invalid, the planned ones, and always at the σ it was told."""
    noise, clip = ledger.noise_multiplier, ledger.clip_norm
    if ledger.mode == "central":
        spent = ledger.record([], {}) if released else _so_far(ledger)
    else:
        replied = [r for r in records if r.status in (ClientStatus.OK, ClientStatus.REJECTED)]
        ids = [r.client_id for r in replied]
        metrics = {r.client_id: dict(r.metrics) for r in replied}
        if ledger.mode == "dpsgd":
            for cid, (steps, q) in planned(cfg, pool, ids).items():
                if not _is_release(metrics[cid]):
                    metrics[cid] |= {"dp_steps": steps, "dp_sample_rate": q}
                metrics[cid]["dp_noise_multiplier"] = noise  # the σ the client was told
        spent = ledger.record(ids, metrics)
    return {**spent, "noise_multiplier": noise, "clip_norm": clip}


def _is_release(metrics: dict[str, float]) -> bool:
    """Whether a client's reported DP-SGD steps and Poisson rate can be accounted (a
    whole number of steps ≥ 1, a rate in (0, 1]); a reply's metrics are untrusted."""
    steps, q = metrics.get("dp_steps", 0.0), metrics.get("dp_sample_rate", 0.0)
    return steps >= 1 and steps == int(steps) and 0 < q <= 1


def _so_far(ledger: PrivacyLedger) -> dict[str, float]:
    eps = ledger.server.epsilon(ledger.delta) if ledger.server is not None else 0.0
    return {"epsilon": eps, "delta": ledger.delta}
