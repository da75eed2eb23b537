"""Adaptive bit width per client (``compression.bits_up = "adaptive"``): the proposal's
``θ̂_c = Quantize(θ_c, b_c)`` with ``b_c`` chosen from the client's upload bandwidth.

``b_c = max{b ∈ B : 8·bytes(b)/bw_up ≤ τ}``, else ``min B`` when no width fits: the most
precise width whose upload fits the budget ``τ = min(ρ·T_max, T_max − T_busy)`` — the share
``ρ`` (``deadline_share``) of the round deadline ``T_max``, and never more than the
predicted compute and download time ``T_busy`` leave of it. ``bytes(b)`` is the exact
message size (``message_bytes``), so the prediction is what will travel, header included.
Every decision says why, like the PEFT allocation's, and lists every width with its bytes
and upload time. It lives with the server, which combines the allocation's cost model with the
compression's exact message sizes (the three pure cores do not import each other).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from fedpeft.allocation.cost import Cost
from fedpeft.allocation.explain import format_table
from fedpeft.compression import CompressionScheme, DeltaLayout, configured, message_bytes
from fedpeft.config.schema import CompressionConfig
from fedpeft.errors import FedpeftError
from fedpeft.profiling import ResourceProfile


@dataclass(frozen=True)
class BitsOption:
    """One bit width priced for one client."""

    bits: int
    bytes_up: int
    upload_seconds: float
    fits: bool

    def to_json(self) -> dict[str, object]:
        return {
            "bits": self.bits,
            "bytes_up": self.bytes_up,
            "upload_s": round(self.upload_seconds, 4),
            "fits": self.fits,
        }


@dataclass(frozen=True)
class BitsChoice:
    """A client's bit width, the budget it was chosen for, why, and every width priced."""

    bits: int
    scheme: CompressionScheme
    bytes_up: int
    budget_seconds: float
    reason: str
    options: tuple[BitsOption, ...]

    def to_json(self) -> dict[str, object]:
        return {
            "bits": self.bits,
            "scheme": self.scheme.name,
            "bytes_up": self.bytes_up,
            "budget_s": round(self.budget_seconds, 4),
            "reason": self.reason,
            "options": [o.to_json() for o in self.options],
        }


def upload_seconds(nbytes: int, upload_bps: float) -> float:
    """``8·B / bw_up`` (bandwidth in bits per second)."""
    return 8 * nbytes / upload_bps


def choose_bits(
    layout: DeltaLayout,
    base: CompressionScheme,
    upload_bps: float,
    budget_seconds: float,
    choices: Sequence[int] = (32, 16, 8, 4, 2),
    meta: Mapping[str, object] | None = None,
) -> BitsChoice:
    """``b_c``: the most bits among ``choices`` whose message (``base`` at that width)
    uploads within ``budget_seconds``, else the fewest bits."""
    if not choices:
        raise FedpeftError("`compression.adaptive_bits` is empty; list widths such as [8, 4, 2].")
    if upload_bps <= 0 or budget_seconds < 0:
        raise FedpeftError(
            f"adaptive bits need a positive upload bandwidth and a budget >= 0, "
            f"got {upload_bps!r} bit/s and {budget_seconds!r} s."
        )
    options = []
    for bits in sorted(set(choices), reverse=True):
        nbytes = message_bytes(layout, replace(base, bits=bits), meta)
        seconds = upload_seconds(nbytes, upload_bps)
        options.append(BitsOption(bits, nbytes, seconds, seconds <= budget_seconds))
    fitting = [o for o in options if o.fits]
    best = fitting[0] if fitting else options[-1]
    return BitsChoice(
        best.bits,
        replace(base, bits=best.bits),
        best.bytes_up,
        budget_seconds,
        _reason(best, options, budget_seconds, bool(fitting)),
        tuple(options),
    )


def _reason(best: BitsOption, options: list[BitsOption], budget: float, fits: bool) -> str:
    head = f"{best.bits} bits: {best.bytes_up:,} B up in {best.upload_seconds:.2f} s"
    if not fits:
        return f"{head} > budget {budget:.2f} s, the fewest bits offered (no width fits)"
    wider = [o for o in options if o.bits > best.bits]
    if not wider:
        return f"{head} <= budget {budget:.2f} s (the most bits offered)"
    over = ", ".join(f"{o.bits} bits {o.upload_seconds:.2f} s" for o in wider)
    return f"{head} <= budget {budget:.2f} s; more bits break it ({over})"


def upload_budget(deadline_s: float, share: float, busy_s: float = 0.0) -> float:
    """``min(ρ·T_max, T_max − T_busy)``, at least 0: the upload's share of the deadline, and
    never more than what the predicted compute and download (``busy_s``) leave of it."""
    if not (deadline_s > 0 and 0 < share <= 1 and busy_s >= 0):
        raise FedpeftError(
            f"the upload budget needs a deadline > 0, a share in (0, 1] and busy seconds "
            f">= 0, got {deadline_s!r} s, {share!r} and {busy_s!r} s."
        )
    return max(0.0, min(share * deadline_s, deadline_s - busy_s))


def adaptive_bits(
    layout: DeltaLayout,
    cfg: CompressionConfig,
    profile: ResourceProfile,
    deadline_s: float,
    cost: Cost | None = None,
    meta: Mapping[str, object] | None = None,
) -> BitsChoice:
    """``compression.bits_up = "adaptive"`` for one client: ``choose_bits`` over
    ``adaptive_bits`` with the budget ``upload_budget(deadline_s, deadline_share, T_busy)``,
    ``T_busy = S·t_step + 8·B_down/bw_down`` from the allocation's ``cost`` (0 without)."""
    busy = 0.0
    if cost is not None:
        busy = cost.compute_seconds + 8 * cost.bytes_down / profile.download_bps
    budget = upload_budget(deadline_s, cfg.deadline_share, busy)
    base = configured(cfg, 32)
    return choose_bits(layout, base, profile.upload_bps, budget, cfg.adaptive_bits, meta)


def with_message_bytes(
    cost: Cost, profile: ResourceProfile, bytes_down: int, bytes_up: int
) -> Cost:
    """``cost`` with the real message bytes both ways and the transfer time they take,
    ``8·B_down/bw_down + 8·B_up/bw_up`` (the cost model's formula)."""
    transfer = 8 * bytes_down / profile.download_bps + 8 * bytes_up / profile.upload_bps
    return replace(cost, bytes_down=bytes_down, bytes_up=bytes_up, transfer_seconds=transfer)


def explain_bits(client_id: int, choice: BitsChoice) -> str:
    """The decision and every width priced, most bits first, as a plain-text table."""
    rows: list[dict[str, object]] = [
        {
            "bits": o.bits,
            "status": "chosen" if o.bits == choice.bits else ("fits" if o.fits else "rejected"),
            "bytes_up": o.bytes_up,
            "upload_s": round(o.upload_seconds, 3),
        }
        for o in choice.options
    ]
    head = f"client {client_id}: {choice.scheme.name} — {choice.reason}"
    return head + "\n" + format_table(rows, ["bits", "status", "bytes_up", "upload_s"])
