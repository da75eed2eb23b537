"""Simulated devices for the in-process runtime: each client trains within its profile.

- availability: a client is online in a round with probability ``a`` (its profile's), drawn
  from a generator seeded by (run seed, round, client), so a resumed run draws the same;
- memory: the cost model's predicted peak for the client's configuration must fit its
  memory, else the configuration is refused with both numbers (a policy never assigns such
  a configuration; a forced one, e.g. ``[peft]`` for everyone, can be refused);
- time: ``T = S·t_step(FLOP/s) + 8·B_down/bw_down + 8·B_up/bw_up`` with the cost model's step
  time at the device's FLOP/s for the S steps it takes and the real payload sizes; a client
  whose predicted ``T`` exceeds ``allocation.deadline_s`` is a straggler: the server stops
  waiting at the deadline, so it is not trained and its update never arrives;
- threads: torch trains it with ``min(cores, this machine's cores)`` threads.

Simulated time is predicted, not measured: it is reproducible and independent of how busy
this machine is. Real wall time is still recorded next to it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from fedpeft.allocation import Calibration, Workload, peak_memory, step_seconds
from fedpeft.errors import ClientSkipped
from fedpeft.peft import Architecture, MethodSpec
from fedpeft.profiling import GiB, ResourceProfile
from fedpeft.types import ClientStatus


@dataclass(frozen=True)
class DeviceSim:
    """The simulation rules of one run."""

    seed: int
    deadline_s: float
    availability: bool = True
    thread_cap: bool = True
    calibration: Calibration = Calibration()

    def online(self, profile: ResourceProfile, rnd: int, client_id: int) -> bool:
        if not self.availability or profile.availability >= 1.0:
            return True
        rng = np.random.default_rng([self.seed, rnd, client_id, 0xA7A1])
        return bool(rng.random() < profile.availability)

    def check_memory(
        self, profile: ResourceProfile, arch: Architecture, spec: MethodSpec, work: Workload
    ) -> None:
        need = peak_memory(arch, spec, work.batch_size, work.seq_len, "adamw", self.calibration)
        if need > profile.memory_bytes:
            raise ClientSkipped(
                ClientStatus.REFUSED,
                f"its configuration needs {need / GiB:.2f} GiB (predicted peak) but the "
                f"{profile.tier} device has {profile.memory_bytes / GiB:.2f} GiB",
            )

    def seconds(
        self,
        profile: ResourceProfile,
        arch: Architecture,
        spec: MethodSpec,
        work: Workload,
        bytes_down: int,
        bytes_up: int,
    ) -> float:
        """``S·t_step + 8·B_down/bw_down + 8·B_up/bw_up`` on this device."""
        step = step_seconds(
            arch, spec, work.batch_size, work.mean_seq_len, profile.flops_per_s, self.calibration
        )
        transfer = 8 * bytes_down / profile.download_bps + 8 * bytes_up / profile.upload_bps
        return work.steps * step + transfer

    def check_deadline(self, seconds: float) -> None:
        if seconds > self.deadline_s:
            raise ClientSkipped(
                ClientStatus.STRAGGLER,
                f"predicted {seconds:.1f} s on its device, past the {self.deadline_s:g} s "
                "round deadline",
                seconds,
            )


@contextmanager
def thread_cap(cores: int | None) -> Iterator[None]:
    """torch's intra-op threads capped at ``cores`` while the block runs (then restored)."""
    before = torch.get_num_threads()
    if cores is not None:
        torch.set_num_threads(max(1, min(cores, before)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def round_seconds(finished: list[float], stragglers: int, deadline_s: float) -> float:
    """The round lasts until the last finished client, or the deadline if one straggles."""
    longest = max(finished, default=0.0)
    return deadline_s if stragglers else longest if math.isfinite(longest) else deadline_s
