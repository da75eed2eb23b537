"""``fedpeft experiment FILE.toml``: plan, check, run (resuming what is there), tabulate,
report — with one progress bar for the whole grid."""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from fedpeft.config.paths import check_output_dir
from fedpeft.errors import FedpeftError
from fedpeft.experiment import (
    ExperimentDir,
    GridStatus,
    Plan,
    Runner,
    check_plan,
    check_runnable,
    plan_experiment,
    read_experiment,
    same_configuration,
    select_runs,
    write_tables,
)
from fedpeft.experiment.runner import terminate_as_interrupt
from fedpeft.experiment.spec import ExperimentFile


def run_experiment_command(
    file: Path,
    out: Path | None,
    dry_run: bool,
    report: bool,
    console: Console,
    only: list[str] | None = None,
) -> int:
    """Exit code: 0 when every run is done, 1 when some failed (their errors are listed).

    ``only`` (``AXIS=VALUE[,VALUE…]``, ``variant=…``, ``seed=…``) runs part of the grid now —
    a shard for another machine, or the cells wanted first; the plan written, the tables
    and the report still cover the whole grid (runs not started are counted as such).
    """
    exp = read_experiment(file)
    plan = plan_experiment(exp, file.parent)
    check_plan(plan, hub=False)  # the models of the runs to run are checked below
    selected = select_runs(plan, only or [])
    folder = ExperimentDir(out or Path(exp.experiment.output_dir) / exp.experiment.name)
    check_output_dir(str(folder.root), "the experiment's folder" if out is None else "--out")
    todo = [r for r in selected.runs if folder.state(r.key, r.rounds).value != "done"]
    done = sum(folder.state(r.key, r.rounds).value == "done" for r in plan.runs)
    console.print(
        f"[bold]experiment[/] {exp.experiment.name}: {len(plan.variants)} variants × "
        f"{_cells(plan)} cells × {len(exp.experiment.seeds)} seeds = {len(plan.runs)} runs "
        f"({done} done, {len(todo)} to run"
        + (f" of the {len(selected.runs)} selected" if only else "")
        + f") · {exp.experiment.budget.slots} at once · {folder.root}",
        highlight=False,
    )
    for axis in plan.unused_axes():
        console.print(
            f"[yellow]warning[/] axis {axis!r} applies to none of the variants (each sets its "
            "keys itself), so its values are not run; vary it under a variant that leaves "
            "them to the grid.",
            highlight=False,
        )
    for a, b in same_configuration(plan):
        console.print(
            f"[yellow]warning[/] variants {a!r} and {b!r} resolve to the same configuration: "
            "their runs will give the same numbers; give one of them the keys that set it apart.",
            highlight=False,
        )
    if dry_run:  # writes nothing: a look at a running grid must not rewrite its plan
        for r in todo:
            console.print(f"  {r.key}  ({r.rounds} rounds)", highlight=False)
        return 0
    check_runnable(todo)  # not for a dry run: a look at a grid needs no model
    for path in (p for r in todo for p in (folder.run_home(r.key).parent, folder.run_home(r.key))):
        if path.exists() and not path.is_dir():
            raise FedpeftError(
                f"{path} is a file where the experiment keeps a run's folder; move it away "
                "and run again."
            )
    busy = [r.key for r in todo if folder.busy(r.key)]
    if busy:
        raise FedpeftError(
            f"run {busy[0]} is still running (its process holds {folder.log_path(busy[0])}), "
            f"started by an earlier `fedpeft experiment` on {folder.root}"
            + (f", with {len(busy) - 1} more" if len(busy) > 1 else "")
            + "; wait for it to end or stop it, then run this again."
        )
    folder.write_plan(plan_json(exp, plan, file), file.read_bytes())
    runner = Runner(selected, folder, exp.experiment)
    with GridProgress(console, selected, folder) as progress:
        try:
            with terminate_as_interrupt():
                status = runner.run(progress.notify)
        except KeyboardInterrupt:
            console.print("interrupted; run the same command again to resume the grid.")
            return 130
    counts = write_tables(plan, folder, status.failed)
    console.print(
        f"{len(status.done)}/{status.total} runs done, {len(status.failed)} failed · "
        + " · ".join(f"{n}: {rows} rows" for n, rows in counts.items()),
        highlight=False,
    )
    for key, why in status.failed.items():
        console.print(f"[red]failed[/] {key}: {why} (log: {folder.log_path(key)})", highlight=False)
    if report:
        from fedpeft.report.experiment import write_experiment_report

        console.print(f"wrote {write_experiment_report(folder.root)}")
    return 1 if status.failed else 0


def report_experiment(root: Path) -> Path:
    """Rebuilds the tables from the run folders (runs may have finished since), then the
    report."""
    from fedpeft.report.experiment import write_experiment_report

    folder = ExperimentDir(root)
    raw = folder.read_plan()
    if raw is None:
        raise FedpeftError(f"{root / 'experiment.json'} is damaged; rerun the experiment.")
    write_tables(Plan.from_json(raw), folder)
    return write_experiment_report(root)


def plan_json(exp: ExperimentFile, plan: Plan, file: Path) -> dict[str, Any]:
    proposed = exp.experiment.proposed or next(
        (v.name for v in plan.variants.values() if v.role == "proposed"), None
    )
    personalised = exp.experiment.personalised or proposed
    for key, name in (("proposed", proposed), ("personalised", personalised)):
        if name is not None and name not in plan.variants:
            raise FedpeftError(
                f"`experiment.{key}` is {name!r}, which is not one of the [variants]: "
                f"{', '.join(plan.variants)}."
            )
    return {
        "format": 1,
        "name": exp.experiment.name,
        "title": exp.experiment.title,
        "command": shlex.join(["fedpeft", *sys.argv[1:]]) if sys.argv else "",
        "source": str(file),
        "written": time.strftime("%Y-%m-%d %H:%M:%S"),
        "settings": exp.experiment.model_dump(mode="json"),
        "proposed": proposed,
        "personalised": personalised,
        "axes": plan.axes,
        "variants": {
            v.name: {
                "role": v.role,
                "description": v.description,
                "cite": v.cite,
                "keys": v.keys,
                "stages": [{"fraction": s.fraction, "keys": s.keys} for s in v.stages],
            }
            for v in plan.variants.values()
        },
        "runs": [r.to_json() for r in plan.runs],
    }


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 5400 else f"{seconds / 60:.0f} min"


def _cells(plan: Plan) -> int:
    """Distinct label combinations of the runs under every axis that applies to some run
    (an axis no variant leaves to the grid is one cell, not none)."""
    axes = [a for a in plan.axes if a not in plan.unused_axes()]
    labels = [tuple(r.labels.get(a, "*") for a in axes) for r in plan.runs]
    return len({t for t in labels if "*" not in t})


class GridProgress:
    """One bar over every round of every run, the counts, and a line per finished run."""

    def __init__(self, console: Console, plan: Plan, folder: ExperimentDir) -> None:
        self.console, self.plan, self.folder = console, plan, folder
        self.rounds = {r.key: r.rounds for r in plan.runs}
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
        )
        self.task = self.progress.add_task("rounds", total=sum(self.rounds.values()))
        self.logged: dict[str, int] = {}
        self.started = time.monotonic()
        self.first: int | None = None  # rounds already logged at the start (not timed)

    def _left(self, completed: int) -> str:
        """An estimate of the time left, from the rounds done since this invocation began
        (every round counted alike: a grid of mixed models is only roughly estimated)."""
        timed = completed - (self.first or 0)
        left = sum(self.rounds.values()) - completed
        if timed <= 0 or left <= 0:
            return ""
        per_round = (time.monotonic() - self.started) / timed
        return f" · about {_hours(left * per_round)} left at this pace"

    def __enter__(self) -> GridProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def notify(self, status: GridStatus, message: str) -> None:
        for key in self.rounds:
            if key in status.done:
                self.logged[key] = self.rounds[key]
            elif key in status.running or key not in self.logged:
                self.logged[key] = min(self.rounds[key], self.folder.rounds_logged(key))
        completed = sum(self.logged.values())
        if self.first is None:
            self.first = completed
        if message:  # a finished run's line also says where the grid stands (for logs)
            if message.startswith("done "):
                message += f" · {len(status.done)}/{status.total} runs done{self._left(completed)}"
            self.progress.console.print(message, highlight=False, soft_wrap=True)  # one line
        self.progress.update(
            self.task,
            completed=completed,
            description=(
                f"runs {len(status.done)}/{status.total} done · {len(status.running)} running"
                f" · {len(status.failed)} failed · rounds"
            ),
        )
