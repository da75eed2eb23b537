"""The run's ``summary.json``: final quality, bytes, time and memory in one place."""

from __future__ import annotations

import resource
from typing import Any

from fedpeft.types import AdapterState


def peak_rss_bytes() -> int:
    """This process's peak resident memory so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def build_summary(
    rounds: list[dict[str, Any]],
    full_model_bytes: int,
    state: AdapterState,
    wall_time_s: float,
    extra: dict[str, Any],
) -> dict[str, Any]:
    client_rounds = sum(len(r["sampled"]) for r in rounds)
    bytes_up = sum(r["bytes_up"] for r in rounds)
    adapter_bytes = sum(t.numel() * t.element_size() for t in state.values())
    full = full_model_bytes
    up_per_client = bytes_up / max(client_rounds, 1)
    final = rounds[-1]["eval"] if rounds else {}
    return {
        **extra,
        "rounds_completed": len(rounds),
        "final_accuracy": final.get("accuracy"),
        "final_macro_f1": final.get("macro_f1"),
        "best_accuracy": max(
            (r["eval"]["accuracy"] for r in rounds if "accuracy" in r["eval"]), default=None
        ),
        "trainable_params": sum(t.numel() for t in state.values()),
        "adapter_tensor_bytes": adapter_bytes,
        "full_model_bytes": full,
        "bytes_up_total": bytes_up,
        "bytes_down_total": sum(r["bytes_down"] for r in rounds),
        "bytes_up_per_client_round": up_per_client,
        "up_fraction_of_full_model": up_per_client / full,
        "wall_time_s": wall_time_s,
        "peak_rss_bytes": peak_rss_bytes(),
    }
