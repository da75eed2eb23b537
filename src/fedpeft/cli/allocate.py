"""``fedpeft allocate``: which PEFT configuration each simulated client would get, and why.

Builds the clients exactly as ``fedpeft run`` would (data partitions and their profiles,
device tiers from ``[profiles]``, declared or sized to the model), prices every candidate
with the cost model from the model's config alone (no weights are loaded), and applies
``[allocation]``'s policy.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fedpeft.config import ExperimentConfig


def allocation_report(cfg: ExperimentConfig) -> tuple[list[Any], dict[str, Any]]:
    """(allocations, JSON record) for the configured federation."""
    from fedpeft.allocation import (
        allocate,
        allocation_to_json,
        build_problem,
        federation_devices,
        make_allocation_config,
    )
    from fedpeft.models import load_model_config
    from fedpeft.peft import architecture
    from fedpeft.server.assign import client_infos
    from fedpeft.server.detection import DETECT_TASK, detector_config
    from fedpeft.server.instruct import head_kind, task_kind
    from fedpeft.server.multimodal import PAIR_TASKS, pair_model_config
    from fedpeft.server.task import build_data, input_side

    alloc_cfg = make_allocation_config(cfg.allocation)
    data = build_data(cfg)
    kind = task_kind(cfg, data.spec)
    causal_lm, span = head_kind(kind, data.spec)
    n = 2 if span else data.dataset.num_labels  # a span head: start and end
    if kind in PAIR_TASKS:  # CLIP matching (no head) or ViLT's answer head
        arch = architecture(pair_model_config(data.spec, n), n, matching=kind == "itm")
    elif kind == DETECT_TASK:  # YOLOS' class and box heads, at the run's input side
        config = detector_config(data.spec, n)
        arch = architecture(config, n, image_size=input_side(cfg, data.spec, kind))
    else:
        arch = architecture(load_model_config(data.spec, n), n, causal_lm=causal_lm, qa=span)
    devices = federation_devices(cfg, arch, data.profiles)
    clients = client_infos(cfg, range(cfg.data.num_clients), devices, data.profiles)
    problem = build_problem(arch, alloc_cfg, round=1, seed=cfg.run.seed)
    allocations = allocate(problem, clients)
    record = {
        "model": data.spec.name,
        "policy": alloc_cfg.policy,
        "alpha": alloc_cfg.alpha,
        "beta": alloc_cfg.beta,
        "gamma": alloc_cfg.gamma,
        "deadline_s": alloc_cfg.deadline_s,
        "devices": {d.tier: d.to_json() for d in devices},
        "clients": [allocation_to_json(a) for a in allocations],
    }
    return allocations, record


def write_record(record: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, default=str) + "\n")
