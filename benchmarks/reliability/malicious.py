"""Malicious updates: client 0's reply tampered with, one kind per run, through a pool
around the real in-process ``LocalClientPool`` (as ``tests/test_guards.py``'s ``_Tamper``),
with the norm guard on (the default) and off (``server.norm_guard = 0``).

Per kind: the status and reason client 0's reply got each round, whether a tampered
reply was accepted, whether the run went on to its last round, how far its final adapter
is from an honest run's (relative L2 distance), and whether it is bitwise the adapter of a
run in which client 0 sent nothing (it crashed every round): a refused reply leaves no
trace.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .common import TINY, merged, read_jsonl

ROUNDS = 3
EXTRA = ("data.num_clients=4", f"run.rounds={ROUNDS}", "data.partition='iid'")
Reply = tuple[dict[str, torch.Tensor], dict[str, Any]]


def _first(state: dict[str, torch.Tensor]) -> str:
    return sorted(state)[0]


def _fill(value: float) -> Callable[[Reply, dict[str, torch.Tensor]], None]:
    def change(reply: Reply, start: dict[str, torch.Tensor]) -> None:
        state, _ = reply
        state[_first(state)] = torch.full_like(state[_first(state)], value)

    return change


def _scale(
    factor: float | None, norm: float | None = None
) -> Callable[[Reply, dict[str, torch.Tensor]], None]:
    """Δ scaled by ``factor``, or to a total L2 norm of ``norm``."""

    def change(reply: Reply, start: dict[str, torch.Tensor]) -> None:
        state, _ = reply
        delta = {k: v.double() - start[k].double() for k, v in state.items()}
        total = math.sqrt(sum(float(d.pow(2).sum()) for d in delta.values()))
        f = factor if factor is not None else (norm or 0.0) / total
        for k, d in delta.items():
            state[k] = (start[k].double() + f * d).to(state[k].dtype)

    return change


def _meta(**changes: Any) -> Callable[[Reply, dict[str, torch.Tensor]], None]:
    def change(reply: Reply, start: dict[str, torch.Tensor]) -> None:
        for key, value in changes.items():
            if value is _DROP:
                reply[1].pop(key, None)
            else:
                reply[1][key] = value

    return change


def _state(
    fn: Callable[[dict[str, torch.Tensor]], None],
) -> Callable[[Reply, dict[str, torch.Tensor]], None]:
    return lambda reply, start: fn(reply[0])


_DROP = object()


def _reshape(s: dict[str, torch.Tensor]) -> None:
    s[_first(s)] = torch.zeros(s[_first(s)].numel() + 1)


def _retype(s: dict[str, torch.Tensor]) -> None:
    s[_first(s)] = s[_first(s)].double()


def _drop(s: dict[str, torch.Tensor]) -> None:
    del s[_first(s)]


def _add(name: str, numel: int) -> Callable[[dict[str, torch.Tensor]], None]:
    def add(s: dict[str, torch.Tensor]) -> None:
        s[name] = torch.zeros(numel)

    return add


def _lora_a(s: dict[str, torch.Tensor]) -> None:
    key = sorted(k for k in s if "lora_A" in k)[0]
    s[key] = s[key] + 0.01


METRICS_KIND = "metrics 1e300 and a 100-character key"  # the update itself is honest

# kind → a change of the decoded reply (state, metadata) given the state it was sent
DECODED: dict[str, Callable[[Reply, dict[str, torch.Tensor]], None]] = {
    "NaN in a tensor": _fill(math.nan),
    "Inf in a tensor": _fill(math.inf),
    "a tensor of the wrong shape": _state(_reshape),
    "a missing tensor": _state(_drop),
    "an extra tensor": _state(_add("classifier.extra", 4)),
    "a float64 tensor": _state(_retype),
    "update boosted ×1000": _scale(1000.0),
    "update of norm 1e30": _scale(None, 1e30),
    "claims to be client 1": _meta(client_id=1),
    "answers another round": _meta(round=99),
    "no nonce": _meta(nonce=_DROP),
    "num_examples 0": _meta(num_examples=0),
    "num_examples -1": _meta(num_examples=-1),
    "num_examples 10^9": _meta(num_examples=10**9),
    "num_examples 10^400": _meta(num_examples=10**400),
    "num_examples 15.0 (float)": _meta(num_examples=15.0),
    "num_examples true (bool)": _meta(num_examples=True),
    "num_examples '16' (string)": _meta(num_examples="16"),
    "num_examples missing": _meta(num_examples=_DROP),
    METRICS_KIND: _meta(metrics={"loss": 1e300, "k" * 100: 1.0}),
    "oversized metadata (128 KiB)": _meta(junk="x" * (128 << 10)),
    "an extra 64 MB tensor": _state(_add("smuggled", 16 << 20)),
    "frozen lora_A changed (ffa_lora)": _state(_lora_a),
}
RAW = (
    "garbage bytes",
    "empty reply",
    "truncated reply",
    "relabelled: client 1's reply as client 0's",
    "replayed: its own earlier reply, round updated",
    "replayed verbatim",
    "the client raises",
)
KINDS = (*DECODED, *RAW)


class Tamper:
    """The real pool; client 0's reply altered on its way back."""

    def __init__(self, inner: Any, kind: str, seed: int = 0) -> None:
        self.inner, self.kind = inner, kind
        self.rng = np.random.default_rng(seed)
        self.last: dict[int, bytes] = {}
        self.tampered: dict[int, bool] = {}  # round → was client 0's reply altered

    def num_examples(self, client_id: int) -> int | None:
        return self.inner.num_examples(client_id)

    def fit(self, instruction: Any, payload: bytes) -> bytes:
        from fedpeft.compression import decode, encode

        cid, rnd = instruction.client_id, instruction.round
        if cid == 0 and self.kind.startswith("the client raises"):
            self.tampered[rnd] = True
            raise RuntimeError("client 0 crashed")
        reply = self.inner.fit(instruction, payload)
        previous, self.last[cid] = self.last.get(cid), reply
        if cid != 0 or self.kind.startswith("none"):
            return reply
        self.tampered[rnd] = True
        if self.kind in DECODED:
            state, meta = decode(reply)
            start, _ = decode(payload)
            DECODED[self.kind]((state, meta), start)
            return encode(state, meta)
        if self.kind == "garbage bytes":
            return self.rng.integers(0, 256, 1000, dtype=np.uint8).tobytes()
        if self.kind == "empty reply":
            return b""
        if self.kind == "truncated reply":
            return reply[: len(reply) // 2]
        other = self.last.get(1) if self.kind.startswith("relabelled") else previous
        if other is None:  # round 1: nothing earlier to replay
            self.tampered[rnd] = False
            return reply
        if self.kind == "replayed verbatim":
            return other
        state, meta = decode(other)
        meta.update(client_id=0, round=rnd)
        return encode(state, meta)


def _distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    num = sum(float((a[k].double() - b[k].double()).pow(2).sum()) for k in b)
    den = sum(float(b[k].double().pow(2).sum()) for k in b)
    return math.sqrt(num / den) if den else math.nan


def one(
    kind: str, guard: float | None, out: Path, honest: dict[str, torch.Tensor] | None
) -> tuple[dict[str, Any], dict[str, torch.Tensor] | None]:
    """One run with ``kind`` of tampering: its row, and its final adapter."""
    from fedpeft.config import load_config
    from fedpeft.errors import FedpeftError
    from fedpeft.runtime.local import LocalClientPool, run_local

    extra = [*TINY, *EXTRA, f"run.output_dir={str(out)!r}"]
    if guard is not None:
        extra.append(f"server.norm_guard={guard}")
    if "ffa_lora" in kind:
        extra.append("server.aggregator='ffa_lora'")
    pools: list[Tamper] = []

    def pool(task: Any) -> Tamper:
        pools.append(Tamper(LocalClientPool(task), kind))
        return pools[-1]

    row: dict[str, Any] = {"kind": kind}
    try:
        result = run_local(load_config(overrides=extra), pool=pool)
    except FedpeftError as e:
        return {**row, "went_on": False, "stopped": str(e)}, None
    clients = read_jsonl(result.run_dir / "clients.jsonl")
    mine = [c for c in clients if c["client_id"] == 0]
    tampered = pools[0].tampered
    finite = all(bool(torch.isfinite(v).all()) for v in result.state.values())
    accepted = sum(1 for c in mine if tampered.get(c["round"]) and c["status"] == "ok")
    row.update(
        client0=[
            {"round": c["round"], "status": c["status"], "reason": c["reason"][:300]} for c in mine
        ],
        client0_metrics_logged=sorted(mine[0]["metrics"]) if mine else [],
        tampered_accepted=accepted,
        altered_updates_accepted=0 if kind == METRICS_KIND else accepted,
        tampered_rounds=sum(tampered.values()),
        others_ok=all(c["status"] == "ok" for c in clients if c["client_id"] != 0),
        went_on=[r["round"] for r in result.rounds] == list(range(1, ROUNDS + 1)),
        final_finite=finite,
        final_accuracy=result.rounds[-1]["eval"]["accuracy"],
        max_abs=max(float(v.abs().max()) for v in result.state.values()),
    )
    if honest is not None:
        row["distance_to_honest"] = _distance(result.state, honest)
    return row, result.state


def study(work: Path, quick: bool = False) -> dict[str, Any]:
    kinds = ("update boosted ×1000", "no nonce", "garbage bytes") if quick else KINDS
    table: dict[str, Any] = {}
    for label, guard in (("norm_guard_default", None), ("norm_guard_off", 0.0)):
        refs: dict[bool, tuple[Any, Any]] = {}  # ffa_lora? → (honest, client 0 absent)
        rows = []
        for i, kind in enumerate(kinds):
            ffa = "ffa_lora" in kind
            if ffa not in refs:
                tag = f"{label}/{'ffa' if ffa else 'fedavg'}"
                suffix = " (ffa_lora)" if ffa else ""
                _, honest = one(f"none{suffix}", guard, work / tag / "honest", None)
                _, absent = one(f"the client raises{suffix}", guard, work / tag / "absent", None)
                refs[ffa] = (honest, absent)
            honest, absent = refs[ffa]
            row, state = one(kind, guard, work / label / f"k{i:02d}", honest)
            row["same_as_without_client0"] = (
                state is not None
                and absent is not None
                and all(torch.equal(state[k], absent[k]) for k in absent)
            )
            print(f"{label} {kind}: {[c['status'] for c in row.get('client0', [])]}", flush=True)
            rows.append(row)
        table[label] = {
            "kinds": len(rows),
            "altered_updates_accepted": sum(r.get("altered_updates_accepted", 0) for r in rows),
            "runs_that_went_on": sum(1 for r in rows if r.get("went_on")),
            "rows": rows,
        }
    return {"config": merged(TINY, EXTRA), "tampered_client": 0, **table}
