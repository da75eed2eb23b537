"""The run's ``summary.json``: final quality, bytes, time and memory in one place."""

from __future__ import annotations

import math
import resource
from typing import Any

from fedpeft.peft.state import without_merged
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
    """The summary of ``rounds`` (``metrics.jsonl`` records). Safe for runs whose rounds
    accepted no update (bytes up 0, fraction of the full model 0) and for runs with no round
    (final and best accuracy None)."""
    bytes_up = sum(r.get("bytes_up", 0) for r in rounds)
    # per client that sent an update (accepted or rejected after it arrived): offline,
    # refused and late clients send nothing, so dividing by the sampled would make full
    # fine-tuning look like a fraction of the model; records from before ``replies``
    # existed are divided by their sampled clients, as they were
    replies = sum(r.get("replies", len(r.get("sampled", ()))) for r in rounds)
    reply_bytes = sum(r.get("reply_bytes_up", r.get("bytes_up", 0)) for r in rounds)
    state = without_merged(state)  # FLoRA's merged sums are not trained (peft/flora.py)
    adapter_bytes = sum(t.numel() * t.element_size() for t in state.values())
    full = full_model_bytes
    up_per_client = reply_bytes / max(replies, 1)
    final = _eval(rounds[-1]) if rounds else {}
    accuracies = [a for r in rounds if (a := _finite(_eval(r).get("accuracy"))) is not None]
    return {
        **extra,
        "rounds_completed": len(rounds),
        "updates_accepted": sum(r.get("accepted", 0) for r in rounds),
        "rounds_without_updates": sum(1 for r in rounds if not r.get("accepted")),
        "rounds_aggregation_failed": sum(1 for r in rounds if r.get("aggregation_failed")),
        "final_accuracy": final.get("accuracy"),
        "final_macro_f1": final.get("macro_f1"),
        "best_accuracy": max(accuracies, default=None),
        "trainable_params": sum(t.numel() for t in state.values()),
        "adapter_tensor_bytes": adapter_bytes,
        "full_model_bytes": full,
        "bytes_up_total": bytes_up,
        "bytes_down_total": sum(r.get("bytes_down", 0) for r in rounds),
        "bytes_up_per_client_round": up_per_client,
        "client_replies": replies,
        "up_fraction_of_full_model": up_per_client / full if full > 0 else None,
        "wall_time_s": wall_time_s,
        "peak_rss_bytes": peak_rss_bytes(),
    }


def _eval(record: dict[str, Any]) -> dict[str, Any]:
    e = record.get("eval")
    return e if isinstance(e, dict) else {}


def _finite(x: object) -> float | None:
    if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
        return None
    return float(x)
