"""A measured profile for the device this process runs on.

Memory and cores come from ``psutil``/``os``; FLOP/s from a short float32 matmul probe.
Bandwidth cannot be measured without a peer to send to, so the caller declares it.
"""

from __future__ import annotations

import os
import time

from fedpeft.errors import FedpeftError
from fedpeft.profiling.profile import ResourceProfile, make_profile


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def measure_flops(seconds: float = 0.25, size: int | None = None, device: str = "cpu") -> float:
    """Sustained float32 matmul FLOP/s: ``k·2n³ / t`` for ``k`` products of ``n×n`` matrices
    run back to back for about ``seconds`` after one warm-up (torch's current thread count).

    ``n`` defaults to 512 on CPU and 4096 on CUDA, big enough to be compute-bound.
    """
    import torch

    if not seconds > 0:
        raise FedpeftError(f"`seconds` must be positive, got {seconds}.")
    n = size or (4096 if device.startswith("cuda") else 512)
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, generator=gen, device=device)
    b = torch.randn(n, n, generator=gen, device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    with torch.inference_mode():
        torch.mm(a, b)  # warm-up: allocator, kernels, thread pool
        sync()
        k, start = 0, time.perf_counter()
        while k < 2 or time.perf_counter() - start < seconds:
            torch.mm(a, b)
            k += 1
            sync()
        elapsed = time.perf_counter() - start
    return k * 2 * n**3 / elapsed


def free_memory(device: str = "cpu") -> int:
    """Bytes available now: free RAM on CPU (``psutil``), free device memory on CUDA."""
    if device.startswith("cuda"):
        import torch

        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    import psutil

    return int(psutil.virtual_memory().available)


def measured_profile(
    upload_bps: float | str,
    download_bps: float | str,
    availability: float = 1.0,
    seconds: float = 0.25,
    device: str = "cpu",
    tier: str = "measured",
) -> ResourceProfile:
    """This device's profile: free memory, usable cores and probed FLOP/s are measured;
    ``upload_bps``/``download_bps`` (bits/s, or e.g. ``"20 Mbps"``) and ``availability``
    are declared: bandwidth cannot be measured without a peer."""
    return make_profile(
        {
            "tier": tier,
            "memory_bytes": free_memory(device),
            "cores": usable_cores(),
            "flops_per_s": measure_flops(seconds, device=device),
            "upload_bps": upload_bps,
            "download_bps": download_bps,
            "availability": availability,
        },
        name="measured",
    )
