"""An experiment file → the runs it means: grid × named axes × variants × seeds.

Keys are applied in this order, later ones winning: the base config file, ``[base]``, the
grid, the named axes, the variant (its preset's keys, then its own), then what the runner
controls (``run.seed``, ``run.output_dir``, ``run.name``, ``run.threads``, ``run.workers``).
An axis whose every key a variant overrides does not apply to it (the centralised reference
under each split) and is labelled ``*``; runs that come out identical are run once.

A run's id names its variant, labels and seed, plus a hash of its keys (without
``run.rounds``, which a resumed run may raise), so changing a key makes a new run and an
unchanged one is found again and skipped or resumed.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, get_args

from pydantic import BaseModel, ValidationError

from fedpeft.config import build_config, read_toml
from fedpeft.errors import FedpeftError
from fedpeft.experiment.columns import COLUMNS
from fedpeft.experiment.presets import Role, Stage, get_preset
from fedpeft.experiment.spec import ExperimentFile, flatten, nest

CONTROLLED = ("run.seed", "run.output_dir", "run.name", "run.threads", "run.workers")
DEFAULT_ROUNDS = 12  # fedpeft's own default of run.rounds


@dataclass(frozen=True)
class Variant:
    name: str
    role: Role
    description: str
    cite: str
    keys: dict[str, Any]
    stages: tuple[Stage, ...] = ()
    needs: str = ""
    masks: frozenset[str] = frozenset()  # keys dropped for it: they mean nothing for it

    def overrides(self, key: str) -> bool:
        return key in self.keys or key in self.masks


@dataclass(frozen=True)
class PlannedRun:
    """One fedpeft run (one stage of a staged variant)."""

    key: str  # its folder under runs/
    run_id: str  # the logical run (stages of one variant share it)
    variant: str
    seed: int
    labels: dict[str, str]  # axis → label
    keys: dict[str, Any]  # fedpeft config keys, dotted (not the runner-controlled ones)
    rounds: int
    stage: int = 0  # 1, 2, … for a staged variant; 0 otherwise
    round_offset: int = 0  # rounds of the stages before it
    after: str | None = None  # the previous stage's key
    from_previous: str | None = None  # the config key set to the previous stage's run folder

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Plan:
    axes: list[str]  # column names: grid keys and named axes, in order
    variants: dict[str, Variant]
    runs: list[PlannedRun] = field(default_factory=list)

    def unused_axes(self) -> list[str]:
        """Axes that apply to no run: every variant sets their keys itself (labelled ``*``)."""
        return [a for a in self.axes if all(r.labels.get(a, "*") == "*" for r in self.runs)]

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Plan:
        """The plan an ``experiment.json`` records (what the tables are rebuilt from and
        the report reads), its types checked: a damaged one is one sentence."""
        try:
            saved = _SavedPlan.model_validate(raw)
        except ValidationError as e:
            where = ".".join(map(str, e.errors()[0]["loc"]))
            raise FedpeftError(
                f"experiment.json does not describe a plan (`{where}`: {e.errors()[0]['msg']}); "
                "run the experiment's command again to rewrite it."
            ) from None
        variants = {
            name: Variant(name, v.role, v.description, v.cite, v.keys)
            for name, v in saved.variants.items()
        }
        return cls(saved.axes, variants, saved.runs)


class _SavedVariant(BaseModel):
    role: Role
    description: str
    cite: str
    keys: dict[str, Any]
    stages: list[dict[str, Any]] = []


class _SavedPlan(BaseModel):
    """What ``experiment.json`` must hold (``cli.experiment.plan_json`` writes it)."""

    axes: list[str]
    variants: dict[str, _SavedVariant]
    runs: list[PlannedRun]
    settings: dict[str, Any] = {}


def resolve_variants(exp: ExperimentFile) -> dict[str, Variant]:
    out = {}
    for name, table in exp.variants.items():
        table = dict(table)
        preset_name = table.pop("preset", name)
        role = table.pop("role", None)
        description = table.pop("description", None)
        if not isinstance(preset_name, str):
            raise FedpeftError(f"variant {name!r}: `preset` must be a name, got {preset_name!r}.")
        if role is not None and role not in get_args(Role):
            raise FedpeftError(
                f"variant {name!r}: `role` must be one of {', '.join(get_args(Role))}, "
                f"got {role!r}."
            )
        keys = flatten(table)
        if preset_name == "none":
            out[name] = Variant(name, role or "other", description or name, "", keys)
            continue
        p = get_preset(preset_name)
        out[name] = Variant(
            name,
            role or p.role,
            description or p.description,
            p.cite,
            {**p.keys, **keys},
            p.stages,
            p.needs,
            p.masks,
        )
    return out


def plan_experiment(exp: ExperimentFile, folder: Path) -> Plan:
    """Every run of ``exp``; ``folder`` is where the experiment file lives (a relative
    ``config`` path is read from there)."""
    base: dict[str, Any] = {}
    if exp.experiment.config is not None:
        base = flatten(read_toml(folder / exp.experiment.config))
    base.update(flatten(exp.base))
    axes: list[tuple[str, list[tuple[str, dict[str, Any]]]]] = [
        (key, [(_label(v), {key: v}) for v in values]) for key, values in exp.grid.items()
    ]
    axes += [
        (name, [(label, flatten(keys)) for label, keys in table.items()])
        for name, table in exp.axes.items()
    ]
    variants = resolve_variants(exp)
    _check_axes(axes)
    _check_exclude(axes, variants, exp.experiment.exclude)
    plan = Plan([name for name, _ in axes], variants)
    seen: set[str] = set()
    for combo in itertools.product(*(values for _, values in axes)):
        labels = {name: label for (name, _), (label, _) in zip(axes, combo, strict=True)}
        for variant in variants.values():
            if _excluded({**labels, "variant": variant.name}, exp.experiment.exclude):
                continue
            for seed in exp.experiment.seeds:
                for run in _runs(base, axes, combo, variant, seed):
                    if run.key not in seen:
                        seen.add(run.key)
                        plan.runs.append(run)
    if not plan.runs:
        raise FedpeftError(
            "the experiment plans no run: `experiment.exclude` leaves out every combination; "
            "narrow its entries."
        )
    return plan


def _check_axes(axes: list[tuple[str, list[tuple[str, dict[str, Any]]]]]) -> None:
    """Each axis has a value, sets no key the runner controls, and is named apart from the
    tables' own columns (its labels are a column of each)."""
    names = [name for name, _ in axes]
    for name, values in axes:
        if names.count(name) > 1:
            raise FedpeftError(f"{name!r} is both a grid key and a named axis; rename the axis.")
        if not values:
            raise FedpeftError(f"axis {name!r} has no values; give it a label or remove it.")
        reserved = next((label for label, _ in values if label in ("", "*")), None)
        if reserved is not None:
            raise FedpeftError(
                f"axis {name!r} has a value labelled {reserved!r}; the tables mark a run the "
                "axis does not apply to `*`, and a label must not be empty: rename it."
            )
        if name in COLUMNS:
            raise FedpeftError(
                f"axis {name!r} has the name of a column of the results tables; rename it."
            )
        controlled = sorted({k for _, keys in values for k in keys if k in CONTROLLED})
        if controlled:
            raise FedpeftError(
                f"axis {name!r} sets `{controlled[0]}`, which the runner sets for each run "
                "(`run.seed` from `experiment.seeds`); remove it from the axis."
            )


def _check_exclude(
    axes: list[tuple[str, list[tuple[str, dict[str, Any]]]]],
    variants: dict[str, Variant],
    rules: list[dict[str, str | list[str]]],
) -> None:
    """Each ``exclude`` entry names axes (or ``variant``) and, for each, a value it has: a
    misspelt one would leave nothing out, silently."""
    known = {name: {label for label, _ in values} for name, values in axes}
    known["variant"] = set(variants)
    for rule in rules:
        if not rule:
            raise FedpeftError(
                "`experiment.exclude` has an empty entry, which would leave out every run; "
                "remove it."
            )
        for key, value in rule.items():
            if key not in known:
                raise FedpeftError(
                    f"`experiment.exclude` entry {rule}: {key!r} is neither an axis nor "
                    f"`variant`; an entry takes {', '.join(known)}."
                )
            values = value if isinstance(value, list) else [value]
            if not set(values) & known[key]:
                raise FedpeftError(
                    f"`experiment.exclude` entry {rule}: {key!r} has no value "
                    f"{', '.join(map(str, values))}; it has {', '.join(sorted(known[key]))}."
                )


def _runs(
    base: dict[str, Any],
    axes: list[tuple[str, Any]],
    combo: tuple[tuple[str, dict[str, Any]], ...],
    variant: Variant,
    seed: int,
) -> list[PlannedRun]:
    keys, labels = dict(base), {}
    for (axis, _), (label, axis_keys) in zip(axes, combo, strict=True):
        keys.update(axis_keys)
        overridden = axis_keys and all(variant.overrides(k) for k in axis_keys)
        labels[axis] = "*" if overridden else label
    keys.update(variant.keys)
    for k in variant.masks:
        keys.pop(k, None)
    for k in CONTROLLED:
        keys.pop(k, None)
    rounds = keys.get("run.rounds", DEFAULT_ROUNDS)
    if not isinstance(rounds, int) or isinstance(rounds, bool) or rounds < 1:
        raise FedpeftError(f"`run.rounds` must be a positive integer, got {rounds!r}.")
    run_id = _run_id(variant.name, labels, seed, keys, staged=bool(variant.stages))
    if not variant.stages:
        return [PlannedRun(run_id, run_id, variant.name, seed, labels, keys, rounds)]
    return _stages(run_id, variant, seed, labels, keys, rounds)


def _stages(
    run_id: str,
    variant: Variant,
    seed: int,
    labels: dict[str, str],
    keys: dict[str, Any],
    rounds: int,
) -> list[PlannedRun]:
    n = len(variant.stages)
    if rounds < n:
        raise FedpeftError(
            f"variant {variant.name!r} runs {n} stages, so it needs `run.rounds` ≥ {n}, "
            f"got {rounds}."
        )
    shares = [max(1, round(rounds * s.fraction)) for s in variant.stages[:-1]]
    shares.append(rounds - sum(shares))
    if shares[-1] < 1:
        raise FedpeftError(f"variant {variant.name!r}: {rounds} rounds leave its last stage none.")
    out, offset, previous = [], 0, None
    for i, (stage, share) in enumerate(zip(variant.stages, shares, strict=True), start=1):
        stage_keys = {**keys, **stage.keys, "run.rounds": share}
        key = f"{run_id}~{i}"
        out.append(
            PlannedRun(
                key, run_id, variant.name, seed, labels, stage_keys, share,
                i, offset, previous, stage.from_previous,
            )
        )  # fmt: skip
        offset, previous = offset + share, key
    return out


def select_runs(plan: Plan, only: list[str]) -> Plan:
    """The plan's runs that every ``AXIS=VALUE[,VALUE…]`` filter admits (a run labelled
    ``*`` on an axis — the centralised reference under every split — matches any value)."""
    if not only:
        return plan
    seeds = {str(r.seed) for r in plan.runs}
    known: dict[str, set[str]] = {"variant": set(plan.variants), "seed": seeds}
    for axis in plan.axes:
        known[axis] = {r.labels[axis] for r in plan.runs if r.labels.get(axis, "*") != "*"}
    wanted: dict[str, set[str]] = {}
    for item in only:
        axis, sep, values = item.partition("=")
        axis = axis.strip()
        chosen = {v.strip() for v in values.split(",") if v.strip()}
        if not sep or not chosen:
            raise FedpeftError(f"--only takes AXIS=VALUE[,VALUE…], got {item!r}.")
        if axis not in known:
            raise FedpeftError(
                f"--only {item!r}: {axis!r} is not an axis of this experiment; "
                f"its axes are {', '.join(known)}."
            )
        if not known[axis]:
            raise FedpeftError(
                f"--only {item!r}: {axis!r} applies to none of the plan's runs (every variant "
                "sets its keys itself), so it cannot choose among them; drop this filter."
            )
        unknown = sorted(chosen - known[axis])
        if unknown:
            raise FedpeftError(
                f"--only {item!r}: {', '.join(unknown)} is not a value of {axis!r}; "
                f"it has {', '.join(sorted(known[axis]))}."
            )
        wanted[axis] = wanted.get(axis, set()) | chosen

    def admits(run: PlannedRun) -> bool:
        values = {"variant": run.variant, "seed": str(run.seed), **run.labels}
        return all(values.get(a) == "*" or values.get(a) in v for a, v in wanted.items())

    runs = [r for r in plan.runs if admits(r)]
    if not runs:
        raise FedpeftError(f"--only {' '.join(only)} selects none of the plan's runs.")
    return Plan(plan.axes, plan.variants, runs)


def _excluded(labels: dict[str, str], rules: list[dict[str, str | list[str]]]) -> bool:
    def hit(key: str, value: str | list[str]) -> bool:
        return labels.get(key) in (value if isinstance(value, list) else [value])

    return any(all(hit(k, v) for k, v in rule.items()) for rule in rules)


def _run_id(
    variant: str, labels: dict[str, str], seed: int, keys: dict[str, Any], staged: bool
) -> str:
    hashed = {k: v for k, v in keys.items() if staged or k != "run.rounds"}
    digest = hashlib.sha256(json.dumps(hashed, sort_keys=True).encode()).hexdigest()[:8]
    parts = [variant, *("all" if v == "*" else v for v in labels.values()), f"s{seed}", digest]
    return "-".join(re.sub(r"[^A-Za-z0-9_.]+", "_", p) for p in parts)


def _label(value: Any) -> str:
    if isinstance(value, str | int | float | bool):
        return str(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def same_configuration(plan: Plan) -> list[tuple[str, str]]:
    """Pairs of variants whose runs have identical keys in every cell and seed both run:
    two names for one configuration, whose rows would be the same numbers twice (in the
    full study a ``flora`` preset resolved to the proposed variant's keys unnoticed)."""
    runs: dict[str, dict[tuple[str, int, int], str]] = {}
    for run in plan.runs:
        where = (json.dumps(run.labels, sort_keys=True), run.seed, run.stage)
        runs.setdefault(run.variant, {})[where] = json.dumps(run.keys, sort_keys=True)
    names = list(runs)
    pairs = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            common = runs[a].keys() & runs[b].keys()
            if common and all(runs[a][k] == runs[b][k] for k in common):
                pairs.append((a, b))
    return pairs


def check_plan(plan: Plan, hub: bool = True) -> None:
    """Every run's config is valid and every variant can run in this build (before any
    run starts): one sentence naming the variant and its labels otherwise. ``hub=False``:
    hub models need not be at hand (``check_runnable`` checks those of the runs to run)."""
    from fedpeft.server.config_checks import check_names

    for variant in plan.variants.values():
        _check_needs(variant)
    checked: set[str] = set()
    for run in plan.runs:
        probe = json.dumps({k: v for k, v in run.keys.items() if k != "run.seed"}, sort_keys=True)
        if probe in checked:
            continue
        checked.add(probe)
        try:
            check_names(build_config(nest(run.keys), source="config"), hub=hub)
        except FedpeftError as e:
            where = ", ".join(f"{a}={v}" for a, v in run.labels.items())
            raise FedpeftError(f"variant {run.variant!r} ({where}): {e}") from None


def check_runnable(runs: list[PlannedRun]) -> None:
    """The models of ``runs`` are at hand on this machine (a hub model offline and not
    cached fails here, naming the first run that needs it)."""
    from fedpeft.models import check_available, get_model_spec

    seen: set[str] = set()
    for run in runs:
        name = build_config(nest(run.keys), source="config").model.name
        if name not in seen:
            seen.add(name)
            try:
                check_available(get_model_spec(name))
            except FedpeftError as e:
                raise FedpeftError(f"run {run.key}: {e}") from None


def _check_needs(variant: Variant) -> None:
    kind, _, name = variant.needs.partition(":")
    if kind == "aggregator":
        from fedpeft.aggregation import aggregator_names

        if name not in aggregator_names():
            raise FedpeftError(
                f"variant {variant.name!r} needs the aggregator {name!r}, which this build "
                "does not have yet; remove the variant from [variants]."
            )
    if kind == "config":
        from fedpeft.config import ExperimentConfig

        if name not in ExperimentConfig.model_fields:
            raise FedpeftError(
                f"variant {variant.name!r} needs the config section `[{name}]`, which this "
                "build does not have yet; remove the variant from [variants]."
            )
