"""Training the audit redoes, with the run's privacy settings: one client's next update
(what a curious server would see from it) and LiRA's shadow federations.

Both reuse the real parts: ``client.train`` (with DP-SGD when the run used it),
``privacy.privatize_local`` (local DP) and ``privacy.dp_fedavg`` (central DP) or FedAvg.
A shadow federation is the run's federation in miniature: its examples split IID among
``data.num_clients`` clients, ``run.rounds`` rounds, the run's client sampling, local
training and aggregation, started from the same round-0 adapter.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from fedpeft.aggregation import client_freeze, fedavg
from fedpeft.client.train import ClientData, train
from fedpeft.config import ExperimentConfig
from fedpeft.data import Split
from fedpeft.peft import set_adapter_state
from fedpeft.privacy import delta, dp_fedavg, dp_plan, dpsgd_noise, l2_norm, privatize_local
from fedpeft.privacy.dpsgd import DpSgd
from fedpeft.server.configure import instruction_for
from fedpeft.server.sampling import sample_clients
from fedpeft.server.task import Task
from fedpeft.types import AdapterState

log = logging.getLogger("fedpeft.audit")


@dataclass(frozen=True)
class RunPrivacy:
    """The run's DP as the audit reproduces it (``mode`` "none": no DP)."""

    mode: str
    noise_multiplier: float = 0.0
    clip_norm: float = 1.0
    delta: float = 1e-5
    accountant: str = "rdp"


def run_privacy(cfg: ExperimentConfig, client_sizes: list[int]) -> RunPrivacy:
    p = cfg.privacy
    if p.mode == "none":
        return RunPrivacy("none")
    sigma = dpsgd_noise(cfg, client_sizes) if p.mode == "dpsgd" else dp_plan(cfg).noise_multiplier
    return RunPrivacy(p.mode, sigma, p.clip_norm, p.delta, p.accountant)


def client_update(
    task: Task,
    cfg: ExperimentConfig,
    privacy: RunPrivacy,
    client_id: int,
    data: tuple[Split, np.ndarray],
    served: AdapterState,
    rnd: int,
    generator: torch.Generator,
) -> AdapterState:
    """The state client ``client_id`` sends after training on ``data`` from ``served``."""
    set_adapter_state(task.model, served)
    ins = instruction_for(cfg, rnd, client_id, client_freeze(cfg.server.aggregator))
    dp = None
    if privacy.mode == "dpsgd":
        dp = DpSgd(privacy.noise_multiplier, privacy.clip_norm, privacy.delta, "rdp")
    state = train(task.model, ins, ClientData(*data), task.device, dp).state
    if privacy.mode != "local":
        return state
    d = privatize_local(
        delta(state, served), privacy.clip_norm, privacy.noise_multiplier, generator
    )
    return {k: (v.to(torch.float64) + d[k]).to(v.dtype) for k, v in served.items()}


def shadow_federation(
    task: Task,
    cfg: ExperimentConfig,
    privacy: RunPrivacy,
    split: Split,
    indices: np.ndarray,
    init: AdapterState,
    seed: int,
) -> AdapterState:
    """The global adapter of a federation like the run's, trained on ``split[indices]``
    split IID among ``data.num_clients`` clients."""
    rng = np.random.default_rng([seed, 0x5AD])
    parts = np.array_split(rng.permutation(indices), cfg.data.num_clients)
    return federation(task, cfg, privacy, split, parts, init, seed).state


@dataclass(frozen=True)
class Federation:
    state: AdapterState  # the final global adapter
    norms: list[list[float]]  # per round: each client's ‖Δ_c‖₂ before clipping


def federation(
    task: Task,
    cfg: ExperimentConfig,
    privacy: RunPrivacy,
    split: Split,
    parts: list[np.ndarray],
    init: AdapterState,
    seed: int,
) -> Federation:
    """``run.rounds`` rounds over the clients' ``parts`` of ``split``: the run's client
    sampling and local training, then DP-FedAvg (central DP) or FedAvg by example counts
    (local DP clients noise their own updates)."""
    run_cfg = cfg.model_copy(update={"run": cfg.run.model_copy(update={"seed": seed})})
    gen = torch.Generator().manual_seed(seed)
    state, norms = init, []
    s, n = cfg.server, len(parts)
    for rnd in range(1, cfg.run.rounds + 1):
        sampled = sample_clients(n, s.fraction, s.min_clients, seed, rnd)
        updates = [
            (client_update(task, run_cfg, privacy, c, (split, parts[c]), state, rnd, gen), c)
            for c in sampled
            if len(parts[c])
        ]
        norms.append([l2_norm(delta(u, state)) for u, _ in updates])
        if privacy.mode == "central":
            states = [u for u, _ in updates]
            state, _ = dp_fedavg(
                state, states, privacy.clip_norm, privacy.noise_multiplier, gen, len(sampled)
            )
        elif updates:
            state = fedavg([(u, float(len(parts[c]))) for u, c in updates])
        log.info("replayed round %d of %d (%s)", rnd, cfg.run.rounds, privacy.mode)
    return Federation(state, norms)
