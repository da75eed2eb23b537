"""The experiment file (``fedpeft experiment FILE.toml``), validated when read.

::

    [experiment]
    name = "proposal"
    seeds = [0, 1, 2]
    config = "base.toml"            # optional: a fedpeft config file every run starts from
    runtime = "local"               # or "flower-sim"
    track = ["tensorboard"]         # per-run event files (and "mlflow", an optional extra)
    [experiment.budget]
    cores = 2                       # runs at once = cores // threads_per_run
    threads_per_run = 1
    memory_mib = 6000               # a run starts only while the estimate fits

    [base]                          # config keys for every run ("section.key" or tables)
    "run.rounds" = 4

    [grid]                          # config key → values: every combination
    "data.dataset" = ["sst2", "ag_news"]

    [axes.split]                    # a named axis: label → config keys
    iid = { "data.partition" = "iid" }
    dir01 = { "data.partition" = "dirichlet", "data.alpha" = 0.1 }

    [experiment]  (continued)
    exclude = [{ task = "cifar10", variant = "fedpeft_prompt" }]   # pairs that cannot run

    [variants]                      # the methods: presets by name, changed or extended
    fedavg_lora = {}
    fedprox_lora = { "client.proximal_mu" = 0.1 }
    ia3 = { preset = "fedavg_lora", "peft.method" = "ia3", "client.lr" = 1e-2 }
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, field_validator

from fedpeft.config.loading import describe_validation_error
from fedpeft.config.messages import describe_toml_error
from fedpeft.config.paths import check_input_file
from fedpeft.errors import FedpeftError

Tracker = Literal["tensorboard", "mlflow"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class Budget(_Strict):
    cores: PositiveInt = Field(default_factory=lambda: len(os.sched_getaffinity(0)))
    threads_per_run: PositiveInt = 1
    memory_mib: PositiveInt | None = Field(None, description="None: 80 % of this machine's")
    run_memory_mib: PositiveInt = Field(1500, description="a run's memory before any finished")

    @property
    def slots(self) -> int:
        return max(1, self.cores // self.threads_per_run)


class Settings(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", max_length=64)
    title: str = ""
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    config: str | None = None
    output_dir: str = "experiments"
    runtime: Literal["local", "flower-sim"] = "local"
    track: list[Tracker] = Field(default_factory=lambda: list[Tracker](["tensorboard"]))
    proposed: str | None = Field(None, description="the variant the outcomes are computed for")
    personalised: str | None = Field(
        None,
        description="the variant outcome 4 (personalised vs fully personalised) is computed "
        "for: the proposed system with personalisation (None: the proposed variant)",
    )
    exclude: list[dict[str, str | list[str]]] = Field(
        default_factory=list,
        description="combinations not to run: each a table of axis → label(s) and/or "
        "variant → name(s); a run matching every entry of one table is left out",
    )
    budget: Budget = Field(default_factory=Budget)

    @field_validator("name")
    @classmethod
    def _a_folder_name(cls, name: str) -> str:
        if not name.strip("."):  # "." or "..": the output folder itself or the one above
            raise ValueError(f"name must name a folder, got {name!r}")
        return name

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds) or any(s < 0 for s in seeds):
            raise ValueError(f"seeds must be distinct non-negative integers, got {seeds}")
        return seeds


class ExperimentFile(_Strict):
    experiment: Settings
    base: dict[str, Any] = Field(default_factory=dict)
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    axes: dict[str, dict[str, dict[str, Any]]] = Field(default_factory=dict)
    variants: dict[str, dict[str, Any]] = Field(min_length=1)

    @field_validator("grid")
    @classmethod
    def _values(cls, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in grid.items():
            if not values:
                raise ValueError(f"grid key {key!r} has no values")
            if "." not in key:
                raise ValueError(f"grid key {key!r} is not a config key (section.key)")
        return grid


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested tables → dotted keys (``{"data": {"alpha": 0.1}}`` → ``{"data.alpha": 0.1}``);
    quoted dotted keys pass through."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out


def nest(flat: dict[str, Any]) -> dict[str, Any]:
    """Dotted keys → nested tables (the form of a fedpeft config file)."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        *parents, last = key.split(".")
        for p in parents:
            child = node.setdefault(p, {})
            if not isinstance(child, dict):
                raise FedpeftError(f"config key {key!r}: `{p}` is a value, not a section.")
            node = child
        node[last] = value
    return out


def read_experiment(path: Path) -> ExperimentFile:
    check_input_file(path, "experiment file", "pass an existing TOML file")
    try:
        text = path.read_text(encoding="utf-8")
        raw = tomllib.loads(text)
    except UnicodeDecodeError as e:
        raise FedpeftError(f"experiment file {path} is not valid TOML: {e}.") from None
    except tomllib.TOMLDecodeError as e:
        message = describe_toml_error(e, text)
        raise FedpeftError(f"experiment file {path} is not valid TOML: {message}.") from None
    except RecursionError:
        raise FedpeftError(
            f"experiment file {path} is not valid TOML: it nests arrays or tables too deeply."
        ) from None
    _not_a_run_config(path, raw)
    try:
        return ExperimentFile.model_validate(raw)
    except ValidationError as e:
        message = describe_validation_error(e, model=ExperimentFile)
        raise FedpeftError(f"experiment file {path}: {message}") from None


def _not_a_run_config(path: Path, raw: dict[str, Any]) -> None:
    """Stops with a pointer to ``fedpeft run`` when ``raw`` is a run's config file (sections
    of a run config, no ``[experiment]``)."""
    from fedpeft.config.schema import ExperimentConfig

    sections = [f"`{k}`" for k in raw if k in ExperimentConfig.model_fields]
    if "experiment" in raw or not sections or set(raw) & set(ExperimentFile.model_fields):
        return
    raise FedpeftError(
        f"experiment file {path} looks like a run config (it has the run config tables "
        f"{', '.join(sections)} and no `experiment` table); run it with "
        f"`fedpeft run -c {path}`, or give an experiment file with `experiment` and "
        "`variants` tables."
    )
