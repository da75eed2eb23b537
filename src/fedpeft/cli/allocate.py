"""``fedpeft allocate``: which PEFT configuration each simulated client would get, and why.

Builds the clients exactly as ``fedpeft run`` would (data partitions and their profiles,
device tiers from ``[profiles]``), prices every candidate with the cost model from the
model's config alone (no weights are loaded), and applies ``[allocation]``'s policy.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fedpeft.config import ExperimentConfig


def allocation_report(cfg: ExperimentConfig) -> tuple[list[Any], dict[str, Any]]:
    """(allocations, JSON record) for the configured federation."""
    from fedpeft.allocation import (
        ClientInfo,
        allocate,
        allocation_to_json,
        build_problem,
        client_workload,
        make_allocation_config,
    )
    from fedpeft.models import load_model_config
    from fedpeft.peft import architecture
    from fedpeft.profiling import assign_profiles, load_profiles
    from fedpeft.server.instruct import task_kind
    from fedpeft.server.task import build_data

    alloc_cfg = make_allocation_config(cfg.allocation)
    data = build_data(cfg)
    n = data.dataset.num_labels
    causal_lm = task_kind(cfg, data.spec) == "instruct"
    arch = architecture(load_model_config(data.spec, n), n, causal_lm=causal_lm)
    tiers = load_profiles(Path(cfg.profiles.file)) if cfg.profiles.file else None
    devices = assign_profiles(cfg.data.num_clients, cfg.profiles.mix, cfg.run.seed, tiers)
    c = cfg.client
    clients = [
        ClientInfo(
            i,
            devices[i],
            client_workload(
                data.profiles[i], c.batch_size, cfg.model.max_length, c.epochs, c.steps
            ),
            data.profiles[i],
        )
        for i in range(cfg.data.num_clients)
    ]
    allocations = allocate(build_problem(arch, alloc_cfg), clients)
    record = {
        "model": data.spec.name,
        "policy": alloc_cfg.policy,
        "alpha": alloc_cfg.alpha,
        "beta": alloc_cfg.beta,
        "gamma": alloc_cfg.gamma,
        "deadline_s": alloc_cfg.deadline_s,
        "clients": [allocation_to_json(a) for a in allocations],
    }
    return allocations, record


def write_record(record: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, default=str) + "\n")
