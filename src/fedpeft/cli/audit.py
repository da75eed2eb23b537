"""``fedpeft audit RUN_DIR``: membership inference against a finished run.

Rebuilds the run's data split from its ``config.toml`` (same seed, same partitions) and
its model from the exported ``adapter/``. Members are clients' training examples;
non-members are train-split examples outside the run's seeded ``train_size`` subset — the
same distribution, never trained on (the dev split would differ in distribution: SST-2's
train holds phrases, its dev whole sentences). The two sets are balanced.

Targets: the global adapter, and a few single clients' next updates (one local round from
the global, with the run's privacy settings: what a curious server sees). Attacks (see
``fedpeft.privacy.mia``): loss threshold; reference-calibrated loss, against the round-0
adapter for the global and against the served global for a client; and with
``--shadow N`` (N ≥ 2) LiRA over N shadow federations. Writes ``audit.json`` and
``audit_roc.png`` into the run folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError

from fedpeft.cli.audit_train import RunPrivacy, client_update, run_privacy, shadow_federation
from fedpeft.config import ExperimentConfig, build_config, read_toml
from fedpeft.data import ImageArrays, RawDataset, RawSplit, Split, heldout_train
from fedpeft.data.boxes import DetectionImages
from fedpeft.data.pairs import ImageTexts
from fedpeft.data.questions import QAExamples
from fedpeft.errors import FedpeftError
from fedpeft.models import load_causal_lm
from fedpeft.peft import get_adapter_state, load_adapter, set_adapter_state
from fedpeft.privacy import Accountant
from fedpeft.privacy.mia import Roc, example_losses, lira_scores, loss_scores, reference_scores, roc
from fedpeft.server.instruct import task_kind
from fedpeft.server.task import Task, build_task, image_side, load_base, splits_for
from fedpeft.types import AdapterState

AUDIT_JSON, AUDIT_PNG = "audit.json", "audit_roc.png"


@dataclass(frozen=True)
class AuditOptions:
    max_examples: int = 500  # members (and as many non-members) per target
    clients: int = 2  # single clients' updates to audit
    shadow: int = 0  # LiRA shadow federations (0: no LiRA)
    batch_size: int = 64
    seed: int = 0


@dataclass(frozen=True)
class Pool:
    """The audited examples, tokenised once: members first, then held-out non-members."""

    split: Split
    members: np.ndarray  # positions in ``split`` of the global target's members
    by_client: dict[int, np.ndarray]  # audited client → positions of its examples
    nonmembers: np.ndarray  # positions of the held-out examples


def audit_run(run_dir: Path, options: AuditOptions) -> dict[str, Any]:
    """Runs the audit and writes ``audit.json`` and ``audit_roc.png``; returns the JSON."""
    if (
        options.max_examples < 2
        or options.clients < 0
        or options.shadow not in (0, *range(2, 1000))
    ):
        raise FedpeftError(
            "audit options: --max-examples must be ≥ 2, --clients ≥ 0 and --shadow 0 or ≥ 2 "
            "(LiRA needs shadows with and without each example)."
        )
    cfg = _run_config(run_dir)
    kind = task_kind(cfg)
    if kind not in ("classify", "instruct"):  # CLIP on CIFAR-10 captions is no classifier
        raise FedpeftError(
            f"run {run_dir} is a `model.task = {kind!r}` run; membership audits score "
            "classification runs only (`model.task = 'classify'` or 'instruct')."
        )
    held = heldout_examples(cfg)  # before anything heavy loads
    task = build_task(cfg)
    init = get_adapter_state(task.model)
    final = _exported_state(run_dir, cfg, task, init)
    targets = audit_state(task, held, init, final, options)
    sizes = [len(p) for p in task.data.partitions]
    record = _record(run_dir, cfg, targets, options) | {
        "privacy": _privacy_json(cfg, run_privacy(cfg, sizes), sizes)
    }
    (run_dir / AUDIT_JSON).write_text(json.dumps(record, indent=2) + "\n")
    from fedpeft.report.roc import plot_roc

    curves = {f"{t} / {a}": r for t, attacks in targets.items() for a, r in attacks.items()}
    plot_roc(curves, run_dir / AUDIT_PNG, f"membership inference: {run_dir.name}")
    return record


def audit_state(
    task: Task,
    held: RawSplit | ImageArrays,
    init: AdapterState,
    final: AdapterState,
    options: AuditOptions,
) -> dict[str, dict[str, Roc]]:
    """Every attack on the global ``final`` state (trained from ``init`` on
    ``task.data.partitions``) and on a few clients' next updates; ``held``: the non-members."""
    cfg = task.cfg
    pool = _pool(cfg, task, held, options)
    privacy = run_privacy(cfg, [len(p) for p in task.data.partitions])
    losses = _Losses(task, pool.split, options.batch_size)
    positions, is_member = _balanced(pool.members, pool.nonmembers)
    target = losses(final, positions)
    attacks = {
        "loss": roc(loss_scores(target), is_member),
        "reference_round0": roc(reference_scores(target, losses(init, positions)), is_member),
    }
    if options.shadow:
        train = _Shadows(task, cfg, pool.split, privacy, init)
        attacks["lira"] = _lira(train, losses, positions, is_member, target, options)
    targets = {"global": attacks}
    for cid in pool.by_client:
        targets[f"client_{cid}"] = _client(
            task, cfg, pool, losses, privacy, final, cid, options.seed
        )
    return targets


def _run_config(run_dir: Path) -> ExperimentConfig:
    if not (run_dir / "summary.json").is_file() or not (run_dir / "adapter").is_dir():
        raise FedpeftError(
            f"{run_dir} has no summary.json or adapter/; audit a finished fedpeft run folder."
        )
    return build_config(read_toml(run_dir / "config.toml"), source=f"config {run_dir}")


def _exported_state(
    run_dir: Path, cfg: ExperimentConfig, task: Task, init: AdapterState
) -> AdapterState:
    """The exported adapter, loaded as a user would, as the shared model's state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.run.seed)
        base = (
            load_causal_lm(task.data.spec, cfg.run.seed)
            if task.kind == "instruct"
            else load_base(cfg, task.data.spec, task.data.dataset)
        )
    try:
        state = get_adapter_state(load_adapter(base, run_dir / "adapter"))
    except torch.OutOfMemoryError:  # a RuntimeError, but the device is full, not the adapter bad
        raise
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as e:
        raise FedpeftError(
            f"the adapter in {run_dir / 'adapter'} cannot be loaded ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:120] if str(e) else 'no detail'}); it is damaged or "
            "incomplete: export it again with "
            f"`fedpeft run --resume {run_dir}`, then audit."
        ) from None
    if state.keys() != init.keys():
        raise FedpeftError(
            f"the adapter in {run_dir / 'adapter'} does not match the run's configuration "
            "(other tensors); was it produced by this run?"
        )
    return {k: v.to(init[k].device) for k, v in state.items()}


def heldout_examples(cfg: ExperimentConfig) -> RawSplit | ImageArrays:
    """The audit's non-member source: the train split's examples the run never used."""
    held = heldout_train(cfg.data, cfg.run.seed, image_side(cfg))
    if len(held) < 2:
        raise FedpeftError(
            "the run trained on the whole train split, so no held-out examples of the same "
            "distribution are left as non-members; audit a run with a smaller `data.train_size`."
        )
    return held


def _pool(
    cfg: ExperimentConfig, task: Task, held: RawSplit | ImageArrays, options: AuditOptions
) -> Pool:
    rng = np.random.default_rng([options.seed, 0xA0D])
    pooled = np.concatenate(task.data.partitions)
    k = min(options.max_examples, len(pooled), len(held))
    chosen = {int(i) for i in rng.choice(pooled, size=k, replace=False)}
    audited = [int(c) for c in rng.permutation(len(task.data.partitions))[: options.clients]]
    own = {c: task.data.partitions[c][: options.max_examples] for c in audited}
    rows = sorted(chosen.union(*[set(map(int, v)) for v in own.values()]))
    where = {r: i for i, r in enumerate(rows)}
    n_non = max([k, *(len(v) for v in own.values())])
    train = task.data.dataset.train
    if isinstance(train, QAExamples | ImageTexts | DetectionImages):
        raise FedpeftError(
            "membership audits score classification runs only, not QA, image–text or "
            "detection runs."
        )
    fresh = _not_trained_on(held, train)
    non = rng.choice(fresh, size=min(n_non, len(fresh)), replace=False)  # a random order
    raw = _concat(train.take(np.asarray(rows)), held.take(non))
    dataset = RawDataset(
        task.data.dataset.name, raw, raw.take(np.arange(1)), task.data.dataset.label_names, ""
    )
    split, _ = splits_for(cfg, task.data.spec, dataset)
    return Pool(
        split,
        np.asarray([where[r] for r in sorted(chosen)]),
        {c: np.asarray([where[int(r)] for r in v]) for c, v in own.items()},
        len(rows) + np.arange(len(non)),
    )


def _not_trained_on(held: RawSplit | ImageArrays, train: RawSplit | ImageArrays) -> np.ndarray:
    """Held-out positions whose text is not also in the run's training data (SST-2 repeats
    some phrases: such a duplicate is a member in all but name)."""
    if not isinstance(held, RawSplit) or not isinstance(train, RawSplit):
        return np.arange(len(held))
    seen = set(train.texts)
    return np.asarray([i for i, t in enumerate(held.texts) if t not in seen], dtype=np.int64)


def _concat(a: RawSplit | ImageArrays, b: RawSplit | ImageArrays) -> RawSplit | ImageArrays:
    labels = np.concatenate([a.labels, b.labels])
    if isinstance(a, RawSplit) and isinstance(b, RawSplit):
        return RawSplit(a.texts + b.texts, labels)
    assert isinstance(a, ImageArrays) and isinstance(b, ImageArrays)
    return ImageArrays(np.concatenate([a.images, b.images]), labels)


class _Losses:
    """Per-example losses of adapter states on the pool (the shared model, swapped)."""

    def __init__(self, task: Task, split: Split, batch_size: int) -> None:
        self.task, self.split, self.batch_size = task, split, batch_size

    def __call__(self, state: AdapterState, positions: np.ndarray) -> np.ndarray:
        set_adapter_state(self.task.model, state)
        return example_losses(
            self.task.model, self.split, positions, self.batch_size, self.task.device
        )


def _balanced(members: np.ndarray, nonmembers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = min(len(members), len(nonmembers))
    positions = np.concatenate([members[:n], nonmembers[:n]])
    return positions, np.concatenate([np.ones(n, bool), np.zeros(n, bool)])


def _client(
    task: Task,
    cfg: ExperimentConfig,
    pool: Pool,
    losses: _Losses,
    privacy: RunPrivacy,
    final: AdapterState,
    cid: int,
    seed: int,
) -> dict[str, Roc]:
    """Client ``cid``'s update from the final global; reference: the global it was served."""
    gen = torch.Generator().manual_seed(seed + cid)
    data = (task.data.train, task.data.partitions[cid])
    update = client_update(task, cfg, privacy, cid, data, final, cfg.run.rounds + 1, gen)
    positions, is_member = _balanced(pool.by_client[cid], pool.nonmembers)
    target, served = losses(update, positions), losses(final, positions)
    return {
        "loss": roc(loss_scores(target), is_member),
        "reference_served": roc(reference_scores(target, served), is_member),
    }


@dataclass(frozen=True)
class _Shadows:
    """Trains one shadow federation on given pool positions."""

    task: Task
    cfg: ExperimentConfig
    split: Split
    privacy: RunPrivacy
    init: AdapterState

    def __call__(self, positions: np.ndarray, seed: int) -> AdapterState:
        return shadow_federation(
            self.task, self.cfg, self.privacy, self.split, positions, self.init, seed
        )


def _lira(
    train: _Shadows,
    losses: _Losses,
    positions: np.ndarray,
    is_member: np.ndarray,
    target: np.ndarray,
    options: AuditOptions,
) -> Roc:
    """Online LiRA: each audited example is in the data of half the shadow federations."""
    rng = np.random.default_rng([options.seed, 0x11A])
    n = options.shadow
    included = np.zeros((n, len(positions)), dtype=bool)
    for j in range(len(positions)):
        included[rng.permutation(n)[: n // 2], j] = True
    shadow = np.stack(
        [losses(train(positions[included[s]], options.seed + 1 + s), positions) for s in range(n)]
    )
    return roc(lira_scores(target, shadow, included), is_member)


def _record(
    run_dir: Path,
    cfg: ExperimentConfig,
    targets: dict[str, dict[str, Roc]],
    options: AuditOptions,
) -> dict[str, Any]:
    return {
        "run": str(run_dir),
        "model": cfg.model.name,
        "dataset": cfg.data.dataset,
        "method": cfg.peft.method,
        "rounds": cfg.run.rounds,
        "members": "clients' training examples (a seeded sample, balanced per target)",
        "nonmembers": "train-split examples outside the run's train_size subset",
        "shadow_federations": options.shadow,
        "targets": {
            t: {a: r.to_json() for a, r in attacks.items()} for t, attacks in targets.items()
        },
    }


def _privacy_json(cfg: ExperimentConfig, privacy: RunPrivacy, sizes: list[int]) -> dict[str, Any]:
    """The run's DP and its ε, accounted from the configuration for the rounds it ran."""
    out: dict[str, Any] = {
        "mode": privacy.mode,
        "secure_aggregation": cfg.privacy.secure_aggregation,
    }
    if privacy.mode in ("central", "local"):
        from fedpeft.privacy import dp_plan

        plan = dp_plan(cfg)
        acc = Accountant(cfg.privacy.accountant)
        acc.step(plan.noise_multiplier, plan.sample_rate, plan.releases)
        out |= {"noise_multiplier": plan.noise_multiplier, "epsilon": acc.epsilon(plan.delta)}
        out |= {"delta": plan.delta, "clip_norm": privacy.clip_norm}
    elif privacy.mode == "dpsgd":
        out |= {"noise_multiplier": privacy.noise_multiplier, "delta": privacy.delta}
        out |= {"clip_norm": privacy.clip_norm, "epsilon": _dpsgd_epsilon(cfg, privacy, min(sizes))}
    return out


def _dpsgd_epsilon(cfg: ExperimentConfig, privacy: RunPrivacy, n: int) -> float:
    """The smallest client's sample-level ε had it trained in every round (the worst case)."""
    from fedpeft.privacy.dpsgd import sample_rate, steps_per_epoch

    b = cfg.client.batch_size
    local = cfg.client.steps or cfg.client.epochs * steps_per_epoch(n, b)
    acc = Accountant(cfg.privacy.accountant)
    acc.step(privacy.noise_multiplier, sample_rate(n, b), cfg.run.rounds * local)
    return acc.epsilon(privacy.delta)
