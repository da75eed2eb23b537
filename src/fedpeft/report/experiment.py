"""An experiment folder → ``report.md`` and a self-contained ``report.html`` (plots embedded):
the plan, the five expected outcomes computed from the runs, per cell the variants' final
accuracy (mean ± std over seeds) with costs and plots, per-tier participation, the
personalisation and privacy columns the runs recorded, and what failed."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedpeft.files import write_atomic
from fedpeft.report.doc import (
    Block,
    Bullets,
    Code,
    Heading,
    Image,
    Para,
    Table,
    to_html,
    to_markdown,
)
from fedpeft.report.exp_plots import plot_cell
from fedpeft.report.outcomes import Study, label, outcomes, summary_rows
from fedpeft.report.tables import (
    RunFigures,
    cells,
    client_clock,
    in_cell,
    read_csv,
    read_plan,
    run_figures,
    stat,
)

EXTRA_MARKS = ("personal", "epsilon", "mia", "privacy", "auc")
# clients scored on their own data (experiment.table): each model's mean, then the ratio
PERSONAL_COLUMNS = [
    *(f"personal.{m}_accuracy" for m in ("global", "personal", "local", "full")),
    "personal.over_full",
    "personal.clients",
]


def write_experiment_report(root: Path) -> Path:
    """Writes ``report.md``, ``report.html`` and ``plots/``; returns the Markdown's path."""
    plan = read_plan(root)
    blocks = build_report(root, plan)
    title = plan.get("title") or f"fedpeft experiment {plan.get('name')}"
    write_atomic(root / "report.md", to_markdown(blocks).encode())
    write_atomic(root / "report.html", to_html(blocks, title, root).encode())
    return root / "report.md"


def build_report(root: Path, plan: dict[str, Any]) -> list[Block]:
    axes: list[str] = list(plan.get("axes", []))
    runs_table = read_csv(root / "runs.csv")
    done = {r["run"] for r in runs_table if r.get("state") == "done"}
    figures = run_figures(read_csv(root / "results.csv"), axes, done)
    variants: list[str] = list(plan["variants"])
    roles = {v: str(plan["variants"][v]["role"]) for v in variants}
    keys: dict[str, dict[str, Any]] = {}
    planned: dict[tuple[tuple[str, str], ...], dict[str, Any]] = {}  # each cell, one run's keys
    for r in plan.get("runs", []):
        keys[r["run_id"]] = {**keys.get(r["run_id"], {}), **r["keys"]}
        labels = {a: str(v) for a, v in r.get("labels", {}).items()}
        if labels and "*" not in labels.values():
            planned.setdefault(tuple(sorted(labels.items())), r["keys"])
    grid = cells(figures, axes)
    study = Study(
        figures,
        grid,
        roles,
        keys,
        plan.get("proposed"),
        plan.get("personalised"),
        tuple((dict(c), k) for c, k in planned.items()),
    )
    blocks: list[Block] = [Heading(1, plan.get("title") or f"Experiment `{plan.get('name')}`")]
    blocks += _header(plan, runs_table, done)
    blocks += _outcomes(study)
    blocks += _results(root, grid, figures, variants, roles)
    blocks += _participation(root, done, variants)
    blocks += _extras(figures, grid, variants)
    blocks += _variants(plan)
    blocks += _problems(runs_table)
    return blocks


def _header(plan: dict[str, Any], runs: list[dict[str, Any]], done: set[str]) -> list[Block]:
    settings = plan.get("settings", {})
    seeds = settings.get("seeds", [])
    states: dict[str, int] = {}
    for r in runs:
        states[str(r.get("state"))] = states.get(str(r.get("state")), 0) + 1
    counts = ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
    return [
        Para(
            f"Plan written {plan.get('written', '')} from `{plan.get('source', '')}`: "
            f"{len(plan['variants'])} variants, seeds {seeds}, {len(runs)} runs ({counts}). "
            "Every number below is computed from the runs' own logs (`results.csv`, "
            "`clients.csv`, `runs.csv` beside this report); means ± sample standard "
            "deviations are over seeds."
        ),
        Code(str(plan.get("command") or "fedpeft experiment FILE.toml")),
    ]


def _outcomes(study: Study) -> list[Block]:
    if study.proposed is None:  # every outcome compares the proposed variant: none to show
        return [
            Para(
                "The proposal's expected outcomes are left out: the experiment names no "
                'proposed variant (set `proposed = "VARIANT"` under `[experiment]`).'
            )
        ]
    results = outcomes(study)
    blocks: list[Block] = [
        Heading(2, "The proposal's expected outcomes"),
        Para(
            f"Computed for the proposed variant `{study.proposed}` (outcome 4 for "
            f"`{study.personalised or study.proposed}`, the proposed system personalised); "
            "the rule of each is stated."
        ),
        Table(["#", "expected", "measured", "verdict"], summary_rows(results)),
    ]
    for o in results:
        items = [f"rule: {o.rule}" if o.rule else "rule: —", *o.details]
        blocks += [Para(f"**{o.number}. {o.claim}** — {o.verdict}: {o.measured}"), Bullets(items)]
    return blocks


def _results(
    root: Path,
    grid: list[dict[str, str]],
    figures: list[RunFigures],
    variants: list[str],
    roles: dict[str, str],
) -> list[Block]:
    blocks: list[Block] = [Heading(2, "Results per cell")]
    personal = [f"`{v}`" for v in variants if roles.get(v) == "personal"]
    if personal:  # their central score is of the shared part alone; readers took it for theirs
        blocks.append(
            Para(
                f"{', '.join(personal)} "
                + ("keeps" if len(personal) == 1 else "keep")
                + " part of each client's model local: the central evaluation scores the shared "
                "global alone, which is not the model any client uses; the clients' own "
                "accuracy is in *Personalisation and privacy* below."
            )
        )
    for i, cell in enumerate(grid, start=1):
        runs = [f for f in figures if in_cell(f, cell)]
        clock = client_clock(runs)  # one clock for the cell's table
        cpu = clock == "client_train_cpu_mean_s"
        header = [
            "variant",
            "role",
            "final accuracy",
            "final macro-F1",
            "best accuracy",
            "kB up / client / round",
            "client train CPU s / round" if cpu else "client train s / round",
            "client peak MiB",
            "seeds",
        ]
        rows = []
        for v in variants:
            mine = [f for f in runs if f.variant == v]
            if not mine:
                continue
            rows.append(
                [
                    f"`{v}`",
                    roles[v],
                    stat(mine, lambda f: f.final("accuracy")).text(".4f"),
                    stat(mine, lambda f: f.final("macro_f1")).text(".4f"),
                    stat(mine, lambda f: f.peak("accuracy")).text(".4f"),
                    stat(mine, lambda f: f.mean("bytes_up_per_client")).text(",.1f", 1e3),
                    stat(mine, lambda f, k=clock: f.mean(k)).text(".2f"),
                    stat(mine, lambda f: f.peak("client_peak_mem_max_bytes")).text(",.0f", 2**20),
                    str(len(mine)),
                ]
            )
        blocks += [Heading(3, label(cell)), Table(header, rows, [False, False, *[True] * 7])]
        plot = plot_cell(root / "plots", f"cell-{i}-{label(cell)}", cell, runs, variants)
        if plot is not None:
            blocks.append(
                Image(plot.relative_to(root), f"accuracy vs rounds, bytes and time — {label(cell)}")
            )
    if not grid:
        blocks.append(Para("No run has finished yet."))
    return blocks


def _participation(root: Path, done: set[str], variants: Sequence[str]) -> list[Block]:
    rows = [r for r in read_csv(root / "clients.csv") if r["run"] in done and r.get("tier")]
    if not rows:
        return []
    tiers = sorted({str(r["tier"]) for r in rows})
    table = []
    for v in variants:
        mine = [r for r in rows if r["variant"] == v]
        if not mine:
            continue
        cells_ = []
        for t in tiers:
            sampled = [r for r in mine if r["tier"] == t]
            ok = sum(1 for r in sampled if r["status"] == "ok")
            cells_.append(
                f"{ok}/{len(sampled)} ({100 * ok / len(sampled):.0f} %)" if sampled else "—"
            )
        table.append([f"`{v}`", *cells_])
    return [
        Heading(2, "Participation per device tier"),
        Para(
            "Client-rounds that trained and were accepted / client-rounds sampled, over all "
            "cells and seeds."
        ),
        Table(["variant", *tiers], table, [False, *[True] * len(tiers)]),
    ]


def _extras(
    figures: list[RunFigures], grid: list[dict[str, str]], variants: Sequence[str]
) -> list[Block]:
    found = {
        k
        for f in figures
        for r in f.rounds
        for k in r
        if any(m in k for m in EXTRA_MARKS) and r[k] is not None
    }
    columns = [c for c in PERSONAL_COLUMNS if c in found] + sorted(found - set(PERSONAL_COLUMNS))
    if not columns:
        return [
            Heading(2, "Personalisation and privacy"),
            Para(
                "The runs record no personalisation or privacy metrics (no such column in "
                "`results.csv`)."
            ),
        ]
    rows = []
    for cell in grid:
        for v in variants:
            mine = [f for f in figures if f.variant == v and in_cell(f, cell)]
            values = [stat(mine, lambda f, c=c: f.final(c)).text(".4f") for c in columns]
            if mine and any(x != "—" for x in values):
                rows.append([label(cell), f"`{v}`", *values])
    blocks: list[Block] = [Heading(2, "Personalisation and privacy")]
    if found & set(PERSONAL_COLUMNS):
        blocks.append(
            Para(
                "`personal.<model>_accuracy`: the clients' mean accuracy on their own held-out "
                "share at the run's last scored round, every client counting once (each "
                "client's scores: `personal.csv`); `personal.over_full`: personalised (the "
                "global where nothing is kept local) ÷ fully personalised, per run."
            )
        )
    table = Table(["cell", "variant", *columns], rows, [False, False, *[True] * len(columns)])
    return [*blocks, table]


def _variants(plan: dict[str, Any]) -> list[Block]:
    rows = []
    for name, v in plan["variants"].items():
        keys = ", ".join(f"`{k}={_short(val)}`" for k, val in v.get("keys", {}).items())
        stages = v.get("stages") or []
        if stages:
            keys = " → ".join(
                f"{int(100 * s['fraction'])} % of rounds: "
                + ", ".join(f"`{k}={_short(x)}`" for k, x in s["keys"].items())
                for s in stages
            )
        rows.append(
            [f"`{name}`", v.get("role", ""), v.get("description", ""), v.get("cite", ""), keys]
        )
    return [
        Heading(2, "Variants"),
        Table(["variant", "role", "what", "source", "config keys"], rows),
    ]


def _problems(runs: list[dict[str, Any]]) -> list[Block]:
    bad = [r for r in runs if r.get("state") != "done"]
    if not bad:
        return [Heading(2, "Runs"), Para(f"All {len(runs)} runs finished.")]
    # runs of a grid still running that have not started say nothing one by one: a count
    waiting = [r for r in bad if not r.get("error") and not int(r.get("rounds_completed") or 0)]
    shown = [r for r in bad if r not in waiting]
    items = [f"`{r['run']}`: {r.get('state')} {r.get('error') or ''}".strip() for r in shown]
    blocks: list[Block] = [Heading(2, "Runs that did not finish")]
    if waiting:
        blocks.append(
            Para(
                f"{len(waiting)} runs have not started or finished a round (`runs.csv` lists them)."
            )
        )
    if items:
        blocks.append(Bullets(items))
    return blocks


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 40 else text[:37] + "…"
