"""Devices sized to the model being trained, so heterogeneity binds the way it would for a
large model on real devices (``[profiles] scale = "model"``).

A tier is written as shares of the model's own cost (``RelativeTier``) at the run's
reference workload (batch, length, the mean client's local steps) and the largest
catalogue rank ``r_max``; from the cost model:

- memory ``M_t``: the predicted peak of LoRA ``r_max`` on the top ``k_t = ⌊depth_t·L⌋`` blocks,
  plus half the step to ``k_t + 1`` blocks (5 % over the full-depth peak when ``k_t = L``), so
  the top ``k_t`` blocks fit and one block more does not;
- compute ``F_t = S·FLOPs_step / (η·compute_t·D)``: full-depth LoRA ``r_max`` on the mean
  client takes ``compute_t`` of the deadline ``D``;
- upload ``bw_t = 8·B·(1 + 1/k)/(transfer_t·D)`` with ``B`` the full-depth ``r_max`` update's
  bytes and download ``k = down_up`` times faster: sending it down and up takes
  ``transfer_t`` of the deadline;
- cores and availability as written.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from fedpeft.allocation.catalogue import make_candidate
from fedpeft.allocation.config import make_allocation_config
from fedpeft.allocation.cost import (
    Calibration,
    Workload,
    client_workload,
    peak_memory,
    step_flops,
    update_bytes,
)
from fedpeft.config import ExperimentConfig, RelativeTier
from fedpeft.data.partition import DataProfile
from fedpeft.errors import FedpeftError
from fedpeft.peft import Architecture, MethodSpec
from fedpeft.profiling import ResourceProfile, declared_devices, make_profile, tier_names
from fedpeft.profiling.mix import assign_profiles


def reference_workload(
    profiles: Sequence[DataProfile],
    batch_size: int,
    max_length: int,
    epochs: int = 1,
    steps: int | None = None,
) -> Workload:
    """The mean client's round: the mean of the clients' local steps and mean lengths."""
    if not profiles:
        raise FedpeftError("sizing devices to the model needs at least one client's data.")
    works = [client_workload(p, batch_size, max_length, epochs, steps) for p in profiles]
    mean_steps = max(1, round(sum(w.steps for w in works) / len(works)))
    mean_len = max(1, round(sum(w.mean_seq_len for w in works) / len(works)))
    return Workload(batch_size, max_length, mean_steps, min(mean_len, max_length))


def _lora(rank: int, blocks: int, layers: int) -> MethodSpec:
    opts: dict[str, object] = {"r": rank, "alpha": 2.0 * rank}
    if blocks < layers:
        opts["layers"] = list(range(layers - blocks, layers))
    return make_candidate("lora", opts).spec


def tier_memory(
    arch: Architecture, work: Workload, depth: float, rank: int, calibration: Calibration
) -> int:
    """``M_t``: room for the top ``⌊depth·L⌋`` blocks (at least one), not one block more."""
    layers = arch.layers
    k = max(1, min(layers, math.floor(depth * layers + 1e-9)))

    def peak(blocks: int) -> int:
        return peak_memory(
            arch, _lora(rank, blocks, layers), work.batch_size, work.seq_len, "adamw", calibration
        )

    if k == layers:
        return math.ceil(1.05 * peak(k))
    return math.ceil(peak(k) + 0.5 * (peak(k + 1) - peak(k)))


def model_tiers(
    arch: Architecture,
    work: Workload,
    deadline_s: float,
    table: Mapping[str, RelativeTier],
    rank: int,
    calibration: Calibration | None = None,
) -> dict[str, ResourceProfile]:
    """Every tier of ``table`` in absolute units for this model (module docstring)."""
    cal = calibration or Calibration()
    full = _lora(rank, arch.layers, arch.layers)
    flops = work.steps * step_flops(arch, full, work.batch_size, work.mean_seq_len, cal)
    size = update_bytes(arch, full)
    out = {}
    for name, t in table.items():
        up = 8 * size * (1 + 1 / t.down_up) / (t.transfer * deadline_s)
        raw = {
            "tier": name,
            "memory_bytes": tier_memory(arch, work, t.depth, rank, cal),
            "cores": t.cores,
            "flops_per_s": flops / (cal.flops_efficiency * t.compute * deadline_s),
            "upload_bps": up,
            "download_bps": up * t.down_up,
            "availability": t.availability,
        }
        out[name] = make_profile(raw, name=f"profiles.relative.{name}", source="config")
    return out


def federation_devices(
    cfg: ExperimentConfig,
    arch: Architecture | None,
    data: Sequence[DataProfile],
    calibration: Calibration | None = None,
) -> list[ResourceProfile]:
    """Every client's simulated device: ``[profiles]`` declared tiers, or tiers sized to
    ``arch`` at the run's reference workload (``scale = "model"``)."""
    p = cfg.profiles
    if p.scale == "declared":
        return declared_devices(cfg.data.num_clients, p.mix, cfg.run.seed, p.file)
    if arch is None:
        raise FedpeftError("`profiles.scale = 'model'` needs the model's architecture.")
    alloc = make_allocation_config(cfg.allocation)
    c = cfg.client
    work = reference_workload(data, c.batch_size, cfg.model.max_length, c.epochs, c.steps)
    rank = max(alloc.catalogue.lora_ranks, default=8)
    tiers = model_tiers(arch, work, alloc.deadline_s, p.relative, rank, calibration)
    return assign_profiles(cfg.data.num_clients, p.mix, cfg.run.seed, tiers)


def client_groups(cfg: ExperimentConfig) -> list[int]:
    """Each client's device rank, 0 for the weakest tier (what ``data.partition =
    'natural'`` correlates data with): declared tiers by (memory, FLOP/s), model-relative
    ones by (depth, 1/compute). Only the tier names are needed, not the model."""
    p = cfg.profiles
    names = tier_names(cfg.data.num_clients, p.mix, cfg.run.seed)
    if p.scale == "model":
        missing = sorted(set(names) - set(p.relative))
        if missing:
            raise FedpeftError(
                f"tier {missing[0]!r} is in `profiles.mix` but not in `profiles.relative` "
                f"(defined: {', '.join(sorted(p.relative))})."
            )
        keys = {n: (p.relative[n].depth, -p.relative[n].compute) for n in set(names)}
    else:
        devices = declared_devices(cfg.data.num_clients, p.mix, cfg.run.seed, p.file)
        keys = {d.tier: (d.memory_bytes, d.flops_per_s) for d in devices}
    order = sorted(set(keys), key=lambda n: (keys[n], n))
    return [order.index(n) for n in names]
