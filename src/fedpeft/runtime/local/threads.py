"""Threads set deliberately: how many clients train at once, with how many threads each.

On a CPU, one intra-op thread trains a MiniLM client about as fast per core as a larger
batch or more threads do, so a second core pays only as a second client in parallel: the
default is one forked worker per usable core (at most the clients of a round), one thread
each. The server process keeps ``run.threads`` (0: every usable core) for what it runs
itself: evaluation, aggregation, and training when there is one worker. On an accelerator
every client trains in the server process. The choice is logged once.

OpenMP's wait policy must be chosen before torch loads its OpenMP runtime: ``import
fedpeft`` sets ``OMP_WAIT_POLICY=PASSIVE`` unless it is set (idle threads sleep instead
of spinning, which otherwise starves other processes on a busy machine).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass

import torch

import fedpeft
from fedpeft.config import ExperimentConfig

log = logging.getLogger("fedpeft.runtime.local")

FORK = hasattr(os, "fork")  # forked workers need it (not on Windows)
AUTO_PER_PASS = 16  # clients per pass on an accelerator when ``run.clients_per_pass`` is 0


@dataclass(frozen=True)
class ThreadPlan:
    workers: int  # clients trained at once (1: in the server process)
    worker_threads: int  # intra-op threads of each forked worker
    server_threads: int  # intra-op threads of the server process
    cores: int  # usable cores of this process
    wait_policy: str  # OpenMP's wait policy in effect
    clients_per_pass: int = 1  # clients trained together in one pass (grouped LoRA)

    def describe(self) -> str:
        training = (
            f"{self.workers} forked workers × {self.worker_threads} thread"
            if self.workers > 1
            else f"in the server process with {self.server_threads} thread(s)"
        )
        if self.clients_per_pass > 1:
            training += f", up to {self.clients_per_pass} per pass over the base"
        return (
            f"threads: clients train {training}; the server uses {self.server_threads} "
            f"thread(s); {self.cores} usable core(s); OMP_WAIT_POLICY={self.wait_policy}"
        )


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask, not the machine's count)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def clients_per_round(cfg: ExperimentConfig) -> int:
    """How many clients a synchronous round samples (``server/sampling.py``'s count)."""
    n, s = cfg.data.num_clients, cfg.server
    return min(n, max(s.min_clients, math.ceil(s.fraction * n)))


def plan_threads(cfg: ExperimentConfig, device: torch.device) -> ThreadPlan:
    """Workers × threads for this run: ``run.workers`` (0: one per usable core, at most
    the clients of a round; always 1 on an accelerator or for an asynchronous server),
    and ``run.clients_per_pass`` (0: 16 on an accelerator, 1 on a CPU; always 1 with
    secure aggregation)."""
    cores = usable_cores()
    server = cfg.run.threads or cores
    per_round = clients_per_round(cfg)
    per_pass = cfg.run.clients_per_pass or (AUTO_PER_PASS if device.type == "cuda" else 1)
    # grouped passes train a batch of `train` instructions; secure aggregation's are staged
    alone = cfg.server.mode == "async" or cfg.privacy.secure_aggregation
    per_pass = 1 if alone else min(per_pass, per_round)
    if device.type != "cpu" or cfg.server.mode == "async" or per_pass > 1 or not FORK:
        workers = 1
    else:
        workers = min(cfg.run.workers or cores, per_round)
    policy = fedpeft.omp_wait_policy()
    return ThreadPlan(max(1, workers), 1, server, cores, policy, max(1, per_pass))


def apply_plan(plan: ThreadPlan) -> None:
    """The server process's threads, and the log line that says what was chosen."""
    torch.set_num_threads(plan.server_threads)
    log.info(plan.describe())
