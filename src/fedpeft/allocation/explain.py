"""Allocations for people and files: JSON-ready dicts and a plain-text table."""

from __future__ import annotations

from collections.abc import Sequence

from fedpeft.allocation.utility import Allocation, Evaluation
from fedpeft.profiling import MiB


def candidate_status(allocation: Allocation, ev: Evaluation) -> str:
    """``chosen``, ``rejected`` (breaks a hard limit) or ``considered`` (fits, lower U)."""
    if allocation.chosen is not None and ev.candidate.name == allocation.chosen.name:
        return "chosen"
    return "considered" if ev.feasible else "rejected"


def evaluation_to_json(allocation: Allocation, ev: Evaluation) -> dict[str, object]:
    return {
        "candidate": ev.candidate.name,
        "status": candidate_status(allocation, ev),
        **ev.terms.to_json(),
        "steps": ev.steps,
        "full_steps": ev.full_steps,
        "memory_bytes": ev.cost.memory_bytes,
        "round_seconds": round(ev.cost.round_seconds, 3),
        "transfer_seconds": round(ev.cost.transfer_seconds, 3),
        "bytes_down": ev.cost.bytes_down,
        "bytes_up": ev.cost.bytes_up,
        "violations": [v.describe() for v in ev.violations],
    }


def allocation_to_json(allocation: Allocation) -> dict[str, object]:
    """Everything about one decision (the run folder's ``clients.jsonl`` can hold it)."""
    return {
        "client": allocation.client_id,
        "tier": allocation.tier,
        "policy": allocation.policy,
        "chosen": allocation.chosen.to_json() if allocation.chosen else None,
        "steps": allocation.steps,
        "terms": allocation.terms.to_json() if allocation.terms else None,
        "reason": allocation.reason,
        "candidates": [evaluation_to_json(allocation, ev) for ev in allocation.evaluations],
    }


def allocation_rows(allocations: Sequence[Allocation]) -> list[dict[str, object]]:
    """One summary row per client: the choice, its terms and predicted cost."""
    rows = []
    for a in allocations:
        chosen = next((ev for ev in a.evaluations if candidate_status(a, ev) == "chosen"), None)
        rejected = sum(not ev.feasible for ev in a.evaluations)
        row: dict[str, object] = {"client": a.client_id, "tier": a.tier, "policy": a.policy}
        row["chosen"] = a.chosen.name if a.chosen else None
        row |= {k: getattr(a.terms, k) for k in "RCEU"} if a.terms else dict.fromkeys("RCEU")
        row["steps"] = f"{chosen.steps}/{chosen.full_steps}" if chosen else None
        row["memory_mib"] = round(chosen.cost.memory_bytes / MiB, 1) if chosen else None
        row["round_s"] = round(chosen.cost.round_seconds, 2) if chosen else None
        row["bytes_up"] = chosen.cost.bytes_up if chosen else None
        row["rejected"] = f"{rejected}/{len(a.evaluations)}"
        row["reason"] = a.reason
        rows.append(row)
    return rows


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def format_table(rows: Sequence[dict[str, object]], columns: Sequence[str]) -> str:
    """Left-aligned plain-text columns, header first."""
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c), *(len(line[i]) for line in cells)]) for i, c in enumerate(columns)]
    lines = [list(columns), *cells]
    return "\n".join(
        "  ".join(v.ljust(w) for v, w in zip(x, widths, strict=True)).rstrip() for x in lines
    )


def format_allocations(allocations: Sequence[Allocation]) -> str:
    """The per-client table the CLI prints (without the reason column)."""
    columns = ["client", "tier", "chosen", "R", "C", "E", "U", "steps", "memory_mib", "round_s"]
    return format_table(allocation_rows(allocations), [*columns, "bytes_up", "rejected"])


PARTS = {  # explain's column → Terms.parts key
    "prior": "R.prior",
    "kappa": "R.capacity",
    "credit": "R.credit",
    "data": "R.data",
    "work": "R.work",
    "c_time": "C.time",
    "c_mem": "C.memory",
    "c_bytes": "C.bytes",
    "c_risk": "C.risk",
}


def explain(allocation: Allocation) -> str:
    """Every candidate one client's policy priced, best ``U`` first, with its status, what
    ``R`` (method prior μ, capacity κ, credit δ, data d, work s/S) and ``C`` (time added τ,
    memory μ, bytes at its bandwidth χ, deadline risk ε) are made of, its local steps and,
    when rejected, the limit it breaks and by how much."""
    head = (
        f"client {allocation.client_id} ({allocation.tier}, {allocation.policy}): "
        f"{allocation.chosen.name if allocation.chosen else 'no assignment'} — "
        f"{allocation.reason}"
    )
    ranked = sorted(allocation.evaluations, key=lambda ev: -ev.terms.U)
    rows = [
        {
            "candidate": ev.candidate.name,
            "status": candidate_status(allocation, ev),
            **{k: getattr(ev.terms, k) for k in "RCEU"},
            **{col: ev.terms.parts.get(key) for col, key in PARTS.items()},
            "steps": f"{ev.steps}/{ev.full_steps}",
            "memory_mib": round(ev.cost.memory_bytes / MiB, 1),
            "round_s": round(ev.cost.round_seconds, 2),
            "why": "; ".join(v.describe() for v in ev.violations),
        }
        for ev in ranked
    ]
    columns = ["candidate", "status", "U", "R", "C", "E", *PARTS, "steps", "memory_mib"]
    columns += ["round_s", "why"]
    return head + "\n" + format_table(rows, columns)
