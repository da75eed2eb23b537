"""Experiments: a grid of fedpeft runs × seeds, run as separate processes within a core and
memory budget, resumable, tabulated (``fedpeft experiment FILE.toml``).

Start at ``spec.py`` (the file), ``presets.py`` (the proposal's baselines by name),
``plan.py`` (file → runs), ``runner.py`` (runs → processes) and ``table.py`` (run folders
→ ``results.csv``). ``fedpeft.report.experiment`` turns the tables into the report.
"""

from fedpeft.experiment.layout import ExperimentDir, RunState
from fedpeft.experiment.plan import (
    Plan,
    PlannedRun,
    check_plan,
    check_runnable,
    plan_experiment,
    same_configuration,
    select_runs,
)
from fedpeft.experiment.presets import PRESETS, Preset, get_preset
from fedpeft.experiment.runner import GridStatus, Runner
from fedpeft.experiment.spec import ExperimentFile, read_experiment
from fedpeft.experiment.table import write_tables

__all__ = [
    "PRESETS",
    "ExperimentDir",
    "ExperimentFile",
    "GridStatus",
    "Plan",
    "PlannedRun",
    "Preset",
    "RunState",
    "Runner",
    "check_plan",
    "check_runnable",
    "get_preset",
    "plan_experiment",
    "read_experiment",
    "same_configuration",
    "select_runs",
    "write_tables",
]
