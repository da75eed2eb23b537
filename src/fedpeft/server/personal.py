"""The server half of personalisation: the plan each instruction carries, and the
evaluation of every client on its own held-out share.

Training: the plan (``client/personal.py``) names the adapter key parts that stay on the
clients; ``plan_round`` serves the global without them and replies are validated against
that view, so personal tensors never travel and are never averaged (the rule runs only
over the keys clients send: ``aggregation.hetero.aggregate_partial``). The server's copy of
a personal key keeps its initial value.

Evaluation (``personalization.eval_every`` rounds and after the last): every client is
sent its group's global (a clustered run: its cluster's) and scores its models on its
held-out share (``client/evaluate.py``); replies carry metrics only, bounded like every
reply's (``validate.bounded_metrics``). One row per client goes to ``personal.jsonl``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from fedpeft.client.personal import PersonalPlan, is_personal, shared_view
from fedpeft.compression import CodecError, decode, encode
from fedpeft.config import ExperimentConfig
from fedpeft.errors import FedpeftError
from fedpeft.files import json_kind, read_jsonl_objects
from fedpeft.peft import Architecture
from fedpeft.server.configure import instruction_for
from fedpeft.server.federation import Federation
from fedpeft.server.instruct import task_kind
from fedpeft.server.protocols import EvaluatingPool
from fedpeft.server.state import DEFAULT_GROUP, ServerState
from fedpeft.server.store import PERSONAL
from fedpeft.server.validate import RejectedUpdate, bounded_metrics, check_binding
from fedpeft.types import AdapterState, TrainInstruction

log = logging.getLogger("fedpeft.server")

MODELS = ("global", "personal", "local", "full")  # what a client may score, in this order


def check_personalization(cfg: ExperimentConfig) -> None:
    """What the schema alone cannot refuse: loops and tasks personalisation does not run on."""
    p, measured = cfg.personalization, cfg.data.client_test_fraction > 0
    if p.mode != "none" and cfg.server.mode == "async":
        raise FedpeftError(
            f"`personalization.mode = {p.mode!r}` runs on the synchronous loop only; set "
            "`server.mode = 'sync'`."
        )
    if p.mode != "none" and cfg.allocation.enabled:
        raise FedpeftError(
            f"`personalization.mode = {p.mode!r}` needs one configuration for every client; "
            "it cannot run with `allocation.enabled`."
        )
    if p.mode in ("head", "lora_b") and cfg.server.head_init in ("lda", "ncm"):
        raise FedpeftError(
            f"`server.head_init = {cfg.server.head_init!r}` serves the whole adapter before "
            f"round 1, which would send the tensors `personalization.mode = {p.mode!r}` keeps "
            "local; use 'auto' or 'random'."
        )
    if p.mode in ("head", "lora_b") and cfg.compression.bits_down != 32:
        raise FedpeftError(
            f"`personalization.mode = {p.mode!r}` serves the global without the clients' "
            "personal tensors, which `compression.bits_down` below 32 cannot encode yet; set "
            "`compression.bits_down = 32`."
        )
    if measured and (kind := task_kind(cfg)) != "classify":
        raise FedpeftError(
            "`data.client_test_fraction` scores classifiers on each client's data; a "
            f"`model.task = {kind!r}` run cannot be scored so (set it to 0)."
        )
    if measured and cfg.server.mode == "async":
        raise FedpeftError(
            "`data.client_test_fraction` scores clients between synchronous rounds; set "
            "`server.mode = 'sync'` or the fraction to 0."
        )


def training_plan(
    cfg: ExperimentConfig, arch: Architecture | None, adapters: Mapping[str, AdapterState]
) -> PersonalPlan:
    """What every instruction of this run says the clients keep local."""
    p = cfg.personalization
    parts: tuple[str, ...] = ()
    if p.mode == "head":
        if arch is None:
            raise FedpeftError("`personalization.mode = 'head'` needs the model's architecture.")
        parts = tuple(f".{h}." for h in arch.head_names)
    elif p.mode == "lora_b":
        parts = (".lora_B.",)
    keys = {k for state in adapters.values() for k in state}
    if parts and not any(is_personal(k, parts) for k in keys):
        raise FedpeftError(
            f"`personalization.mode = {p.mode!r}` keeps {parts[0].strip('.')!r} tensors on "
            f"the clients, but `peft.method = {cfg.peft.method!r}` trains none; choose a "
            "method that does (e.g. 'lora')."
        )
    if parts and keys and all(is_personal(k, parts) for k in keys):
        raise FedpeftError(
            f"`personalization.mode = {p.mode!r}` would keep every tensor of "
            f"`peft.method = {cfg.peft.method!r}` local; nothing would be shared."
        )
    return PersonalPlan(
        mode=p.mode,
        parts=parts,
        rank=p.rank if p.mode == "dual" else 0,
        finetune_steps=p.finetune_steps if p.mode == "finetune" else 0,
        head_start=p.head_start if p.mode == "head" else "",
    )


def clients_due(cfg: ExperimentConfig, rnd: int) -> bool:
    """Whether clients are scored after round ``rnd``: every ``eval_every`` rounds and after
    the last, when clients hold data out."""
    if cfg.data.client_test_fraction <= 0:
        return False
    every = cfg.personalization.eval_every
    return rnd == cfg.run.rounds or (every > 0 and rnd % every == 0)


def evaluation_plan(cfg: ExperimentConfig, plan: PersonalPlan, rnd: int) -> PersonalPlan:
    """The training plan, with the baselines' epochs after the last round if asked for."""
    p = cfg.personalization
    if not p.baselines or rnd != cfg.run.rounds:
        return plan
    local = p.local_epochs or cfg.run.rounds * cfg.client.epochs
    return PersonalPlan(
        mode=p.mode,
        parts=plan.parts,
        rank=plan.rank,
        finetune_steps=plan.finetune_steps,
        local_epochs=local,
        full_epochs=p.full_epochs or local,
    )


def evaluating_pool(fed: Federation) -> EvaluatingPool:
    """The federation's pool, which must be able to score clients on their own data."""
    if not isinstance(fed.pool, EvaluatingPool):
        raise FedpeftError(
            "`data.client_test_fraction` asks clients to score their models on their own data, "
            "which this runtime's clients cannot; set it to 0."
        )
    return fed.pool


def evaluate_clients(fed: Federation, state: ServerState, rnd: int) -> list[dict[str, Any]]:
    """Every client's scores on its own held-out share, one row each."""
    pool = evaluating_pool(fed)
    plan = evaluation_plan(fed.cfg, training_plan(fed.cfg, fed.arch, state.adapters), rnd)
    payloads: dict[str, bytes] = {}  # one encoding per group, shared by its clients
    sent: list[tuple[TrainInstruction, bytes, str]] = []
    for cid in range(fed.cfg.data.num_clients):
        assigned: str = state.group_of(cid, DEFAULT_GROUP)
        group = assigned if assigned in state.adapters else state.main
        if group not in payloads:
            view = shared_view(state.adapters[group], plan)
            payloads[group] = encode(view, {"round": rnd})
        ins = instruction_for(fed.cfg, rnd, cid, run_id=fed.store.root.name, personal=plan)
        ins = replace(ins, compression="", compression_down="")  # plain both ways: metrics back
        sent.append((ins, payloads[group], group))
    replies = pool.evaluate_many([(ins, payload) for ins, payload, _ in sent])
    return [
        _row(ins, group, len(payload), reply)
        for (ins, payload, group), reply in zip(sent, replies, strict=True)
    ]


def check_evaluation(reply: bytes, instruction: TrainInstruction) -> tuple[int, dict[str, float]]:
    """(held-out examples, metrics) of an evaluation reply; it must carry no tensor, answer
    ``instruction`` and claim a non-negative count."""
    try:
        _, meta = decode(reply, expected={})
    except CodecError as e:
        raise RejectedUpdate(str(e)) from None
    check_binding(meta, instruction)
    n = meta.get("num_examples")
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise RejectedUpdate(f"num_examples must be a non-negative integer, got {n!r}")
    return n, bounded_metrics(meta.get("metrics"))


def _row(ins: TrainInstruction, group: str, down: int, reply: bytes | Exception) -> dict[str, Any]:
    row: dict[str, Any] = {
        "round": ins.round,
        "client_id": ins.client_id,
        "group": group,
        "bytes_down": down,
        "bytes_up": len(reply) if isinstance(reply, bytes) else 0,
    }
    where = f"round {ins.round}: client {ins.client_id}'s evaluation"
    if isinstance(reply, Exception):
        log.warning("%s failed: %s: %s", where, type(reply).__name__, reply)
        return row | {"status": "failed", "reason": f"{type(reply).__name__}: {reply}"}
    try:
        n, metrics = check_evaluation(reply, ins)
    except RejectedUpdate as e:
        log.warning("%s rejected: %s", where, e)
        return row | {"status": "rejected", "reason": str(e)}
    scores = {
        model: {
            m: metrics[f"{model}.{m}"] for m in ("accuracy", "loss") if f"{model}.{m}" in metrics
        }
        for model in MODELS
    }
    row |= {"status": "ok", "num_test": n, "models": {k: v for k, v in scores.items() if v}}
    if "personal_params" in metrics:
        row["personal_params"] = int(metrics["personal_params"])
    return row


def read_personal(root: Path) -> list[dict[str, Any]]:
    """The rows of a run folder's ``personal.jsonl`` ([] when it has none), each verified:
    a line that is not a row as ``_row`` writes it is refused with one sentence."""
    path = root / PERSONAL
    return read_jsonl_objects(path, check=_personal_problem) if path.is_file() else []


def _personal_problem(row: dict[str, Any]) -> str | None:
    """What is wrong with a ``personal.jsonl`` row (None: nothing the readers rely on)."""
    if not all(_is_int(row.get(k)) for k in ("round", "client_id")):
        return "has no whole-number `round` and `client_id`"
    models = row.get("models", {})
    if not isinstance(models, dict) or not all(isinstance(m, dict) for m in models.values()):
        return "has `models` that is not an object of per-model scores"
    for scores in models.values():
        acc = scores.get("accuracy")
        if "accuracy" in scores and (isinstance(acc, bool) or not isinstance(acc, int | float)):
            return f"has an accuracy that is a {json_kind(acc)}, not a number"
    if not _is_int(row.get("personal_params", 0)) or not _is_int(row.get("num_test", 0)):
        return "has a `personal_params` or `num_test` that is not a whole number"
    return None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def personal_summary(rows: list[dict[str, Any]], rnd: int | None = None) -> dict[str, Any] | None:
    """One evaluated round (``rnd``; None: the last) over its clients: for each scored model
    the mean client accuracy (every client counts once), the worst 10 % (the mean of the
    lowest ``⌈0.1·n⌉``), the spread (population standard deviation), min and max; and
    ``personal_over_full``, the mean personalised accuracy over the mean fully personalised
    one (the proposal's 90–95 % target). Where no personal model was scored (mode ``none``,
    e.g. clustered aggregation) the personal model is the client's global."""
    if not rows:
        return None
    last = max(int(r["round"]) for r in rows) if rnd is None else rnd
    ok = [r for r in rows if r["round"] == last and r.get("status") == "ok" and r.get("num_test")]
    models: dict[str, dict[str, float]] = {}
    for name in MODELS:
        accs = [r["models"][name]["accuracy"] for r in ok if name in r.get("models", {})]
        if accs:
            models[name] = spread(accs)
    out: dict[str, Any] = {
        "round": last,
        "clients_scored": len(ok),
        "clients_failed": sum(1 for r in rows if r["round"] == last and r.get("status") != "ok"),
        "personal_is_global": "personal" not in models and "global" in models,
        "models": models,
    }
    personal = models.get("personal", models.get("global"))
    full = models.get("full")
    out["personal_over_full"] = (
        personal["mean"] / full["mean"] if personal and full and full["mean"] > 0 else None
    )
    params = [r["personal_params"] for r in ok if "personal_params" in r]
    out["personal_params"] = max(params) if params else 0
    return out


def spread(values: list[float]) -> dict[str, float]:
    """Mean, worst 10 % (mean of the lowest ``max(1, ⌈0.1·n⌉)``), population std, min, max."""
    xs = sorted(values)
    n = len(xs)
    mean = sum(xs) / n
    k = max(1, -(-n // 10))
    return {
        "mean": mean,
        "worst10": sum(xs[:k]) / k,
        "std": (sum((x - mean) ** 2 for x in xs) / n) ** 0.5,
        "min": xs[0],
        "max": xs[-1],
        "clients": n,
    }
