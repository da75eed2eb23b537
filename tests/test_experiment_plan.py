"""The experiment file → runs: grid × axes × variants × seeds, presets, stages, run ids,
and the errors people get (no run is started here)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest

from fedpeft.errors import FedpeftError
from fedpeft.experiment import (
    PRESETS,
    Plan,
    check_plan,
    plan_experiment,
    read_experiment,
    same_configuration,
)

HEAD = """
[experiment]
name = "t"
seeds = [0, 1]
[base]
"model.name" = "tiny-bert"
"run.rounds" = 4
"""

# two datasets × two named splits (the Dirichlet one with tiny clients allowed)
TWO_BY_TWO = """
[grid]
"data.dataset" = ["sst2", "ag_news"]
[axes.split]
iid = { "data.partition" = "iid" }
dir = { "data.partition" = "dirichlet", "data.alpha" = 0.1, "data.min_partition_size" = 1 }
"""


def _plan(tmp_path: Path, body: str, head: str = HEAD):  # type: ignore[no-untyped-def]
    path = tmp_path / "exp.toml"
    path.write_text(head + body)
    return plan_experiment(read_experiment(path), tmp_path)


def test_grid_axes_variants_and_seeds_multiply(tmp_path: Path) -> None:
    plan = _plan(
        tmp_path,
        """
[grid]
"data.dataset" = ["sst2", "ag_news"]
[axes.split]
iid = { "data.partition" = "iid" }
dir = { "data.partition" = "dirichlet", "data.alpha" = 0.1 }
[variants]
fedavg_lora = {}
ia3 = { preset = "fedavg_lora", "peft.method" = "ia3", "client.lr" = 1e-2 }
""",
    )
    assert plan.axes == ["data.dataset", "split"]
    assert len(plan.runs) == 2 * 2 * 2 * 2
    ia3 = [r for r in plan.runs if r.variant == "ia3"]
    assert all(r.keys["peft.method"] == "ia3" and r.keys["client.lr"] == 1e-2 for r in ia3)
    run = next(r for r in ia3 if r.labels == {"data.dataset": "ag_news", "split": "dir"})
    assert run.keys["data.alpha"] == 0.1 and run.keys["data.dataset"] == "ag_news"
    assert run.keys["model.name"] == "tiny-bert" and run.rounds == 4
    assert len({r.key for r in plan.runs}) == len(plan.runs)


def test_the_centralised_reference_runs_once_per_dataset_and_seed(tmp_path: Path) -> None:
    plan = _plan(tmp_path, TWO_BY_TWO + "[variants]\ncentralised = {}\n")
    assert len(plan.runs) == 2 * 2  # not × 2 splits: the split does not apply to one client
    assert all(r.labels["split"] == "*" and r.keys["data.num_clients"] == 1 for r in plan.runs)
    assert all("data.min_partition_size" not in r.keys for r in plan.runs)


def test_a_staged_baseline_splits_the_rounds_and_chains_its_runs(tmp_path: Path) -> None:
    plan = _plan(tmp_path, "[variants]\nslora = {}\n")
    s0 = [r for r in plan.runs if r.seed == 0]
    assert [(r.stage, r.rounds, r.round_offset) for r in s0] == [(1, 1, 0), (2, 3, 1)]
    assert s0[0].keys["peft.method"] == "sparse" and s0[1].keys["peft.method"] == "slora"
    assert s0[1].after == s0[0].key and s0[1].from_previous == "peft.init_from"
    assert s0[0].run_id == s0[1].run_id


def test_run_ids_follow_the_keys_but_not_the_round_count(tmp_path: Path) -> None:
    a = _plan(tmp_path, "[variants]\nfedavg_lora = {}\n").runs[0]
    more = _plan(tmp_path, "[variants]\nfedavg_lora = {}\n", HEAD.replace("= 4", "= 9")).runs[0]
    other = _plan(tmp_path, '[variants]\nfedavg_lora = { "client.lr" = 1e-3 }\n').runs[0]
    assert a.key == more.key and more.rounds == 9  # a longer run resumes the same folder
    assert a.key != other.key


def test_every_preset_plans_and_checks_or_says_what_it_needs(tmp_path: Path) -> None:
    for name, preset in PRESETS.items():
        plan = _plan(tmp_path, f"[variants]\n{name} = {{}}\n")
        if not preset.needs:
            check_plan(plan)
            continue
        with pytest.raises(FedpeftError, match=f"variant {name!r} needs"):
            check_plan(plan)


def test_bad_files_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(FedpeftError, match="not a known baseline"):
        _plan(tmp_path, '[variants]\nx = { preset = "nope" }\n')
    with pytest.raises(FedpeftError, match="unknown key `experiment.sedes`"):
        _plan(tmp_path, "[variants]\nfedavg_lora = {}\n", HEAD.replace("seeds", "sedes"))
    with pytest.raises(FedpeftError, match="`variants`"):
        _plan(tmp_path, "")
    plan = _plan(tmp_path, '[variants]\nfedavg_lora = { "client.lr" = -1.0 }\n')
    with pytest.raises(FedpeftError, match="variant 'fedavg_lora'.*client.lr"):
        check_plan(plan)
    with pytest.raises(FedpeftError, match="does not exist"):
        read_experiment(tmp_path / "missing.toml")
    with pytest.raises(FedpeftError, match="is a folder, not a file"):
        read_experiment(tmp_path)
    (tmp_path / "dup.toml").write_text(HEAD + '"run.rounds" = 2\n[variants]\nx = {}\n')
    with pytest.raises(FedpeftError, match=r'`"run.rounds"` is already set above'):
        read_experiment(tmp_path / "dup.toml")
    deep = "[" * 5000 + "]" * 5000  # nested beyond tomllib's recursion limit
    (tmp_path / "deep.toml").write_text(f"{HEAD}nested = {deep}\n[variants]\nx = {{}}\n")
    with pytest.raises(FedpeftError, match="deep.toml is not valid TOML: it nests arrays"):
        read_experiment(tmp_path / "deep.toml")


def test_a_misspelt_or_wrong_kind_of_file_is_named_not_dumped(tmp_path: Path) -> None:
    path = tmp_path / "e.toml"
    path.write_text(HEAD + '[grid]\n"data.alpha" = ["' + "x" * 500 + '"]\n[variantz]\na = {}\n')
    with pytest.raises(FedpeftError) as info:
        read_experiment(path)
    message = str(info.value)
    assert "missing required key `variants`; unknown key `variantz`" in message
    assert "did you mean `variants`?" in message and "xxxxx" not in message
    path.write_text('[model]\nname = "tiny-bert"\n[run]\nrounds = 1\n')
    with pytest.raises(FedpeftError, match=r"looks like a run config .*`fedpeft run -c "):
        read_experiment(path)


def test_excluded_combinations_are_not_planned(tmp_path: Path) -> None:
    rule = '{ split = "b", variant = ["fedpeft_bias", "x"] }'
    head = HEAD.replace("[base]", f"exclude = [{rule}]\n[base]")
    plan = _plan(
        tmp_path,
        '[axes.split]\na = { "data.alpha" = 0.3 }\nb = { "data.alpha" = 0.2 }\n'
        "[variants]\nfedpeft_bias = {}\nfedavg_lora = {}\n",
        head,
    )
    pairs = {(r.labels["split"], r.variant) for r in plan.runs}
    assert pairs == {("a", "fedpeft_bias"), ("a", "fedavg_lora"), ("b", "fedavg_lora")}


EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_the_proposal_study_plans_every_part_the_proposal_names() -> None:
    """examples/proposal.toml checks as a whole (no run starts) and holds the proposal's
    models, splits, seeds, tiers, baselines, ablations and a centralised reference per
    dataset; its personalised variant records what outcome 4 needs."""
    exp = read_experiment(EXAMPLES / "proposal.toml")
    plan = plan_experiment(exp, EXAMPLES)
    check_plan(plan)
    assert len(exp.experiment.seeds) >= 3
    tasks = {r.labels["task"]: r.keys for r in plan.runs}
    assert {k.get("model.name", "") for k in tasks.values()} >= {
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        "efficientnet-lite0",
    }
    assert {(k.get("data.dataset"), k.get("model.name")) for k in tasks.values()} >= {
        ("sst2", None),  # MiniLM, the default model
        ("ag_news", None),
    }
    splits = {(k["data.partition"], k.get("data.alpha")) for k in plan_keys(plan, "split")}
    assert {("iid", None), ("dirichlet", 0.5), ("dirichlet", 0.1)} <= splits
    assert any(p == "pathological" for p, _ in splits)
    # mixed tiers for every federated run; the centralised reference on no simulated device
    # (one client with every example would miss a tier's round deadline)
    assert all(r.keys.get("simulation.devices") is (r.variant != "centralised") for r in plan.runs)
    names = set(plan.variants)
    baselines = {"slora", "federa", "fedpeft_bias", "fedpeft_adapter", "fedpeft_prompt"}
    assert baselines | {"fedprox_lora", "fedavg_full", "fedavg_lora"} <= names
    ablations = {"fedpeft_plus_adaptive", "fedpeft_plus_personal", "fedpeft_plus_no_personal"}
    assert ablations <= names
    for task in tasks:
        assert any(r.variant == "centralised" and r.labels["task"] == task for r in plan.runs)
    personal = [r for r in plan.runs if r.variant == exp.experiment.personalised]
    assert personal and all(r.keys["personalization.baselines"] is True for r in personal)
    assert all(r.keys["data.client_test_fraction"] > 0 for r in personal)


def plan_keys(plan: Plan, axis: str) -> list[dict[str, Any]]:
    """The keys of one run per label of ``axis`` (not the centralised reference's ``*``)."""
    seen = {r.labels[axis]: r.keys for r in plan.runs if r.labels[axis] != "*"}
    return list(seen.values())


def test_only_selects_part_of_the_grid_and_says_what_it_cannot_select(tmp_path: Path) -> None:
    from fedpeft.experiment import select_runs

    variants = "[variants]\nfedavg_lora = {}\nslora = {}\ncentralised = {}\n"
    plan = _plan(tmp_path, TWO_BY_TWO + variants)
    assert select_runs(plan, []) is plan
    dirs = select_runs(plan, ["split=dir", "data.dataset=ag_news"])
    lora = [r for r in dirs.runs if r.variant == "fedavg_lora"]
    assert {(r.labels["split"], r.labels["data.dataset"]) for r in lora} == {("dir", "ag_news")}
    assert len(lora) == 2  # both seeds
    # the centralised reference (split `*`) belongs to every split; slora keeps both stages
    assert {r.variant for r in dirs.runs if r.labels["split"] == "*"} == {"centralised"}
    assert sorted(r.stage for r in dirs.runs if r.variant == "slora" and r.seed == 0) == [1, 2]
    one = select_runs(plan, ["variant=slora,fedavg_lora", "seed=1", "split=iid"])
    assert {r.seed for r in one.runs} == {1} and {r.variant for r in one.runs} == {
        "slora",
        "fedavg_lora",
    }
    assert one.axes == plan.axes and one.variants == plan.variants
    for bad, says in [
        (["split"], "AXIS=VALUE"),
        (["colour=red"], "not an axis"),
        (["split=dir,patho"], "patho is not a value of 'split'"),
        (["seed=7"], "not a value"),
    ]:
        with pytest.raises(FedpeftError, match=says):
            select_runs(plan, bad)


def test_an_axis_every_variant_overrides_is_named_not_counted_as_no_cell(tmp_path: Path) -> None:
    """fedavg_full sets `peft.method` itself: a grid over it applies to no run. The
    header counted 0 cells for its 2 runs, and `--only` said the axis "has ." values."""
    from fedpeft.cli.experiment import _cells
    from fedpeft.experiment import select_runs

    body = """
[grid]
"peft.method" = ["lora", "bitfit"]
[axes.split]
iid = { "data.partition" = "iid" }
dir = { "data.partition" = "dirichlet", "data.alpha" = 0.1, "data.min_partition_size" = 1 }
[variants]
fedavg_full = {}
"""
    plan = _plan(tmp_path, body)
    assert plan.unused_axes() == ["peft.method"]
    assert _cells(plan) == 2 and len(plan.runs) == 4  # two splits × two seeds
    with pytest.raises(FedpeftError, match="'peft.method' applies to none of the plan's runs"):
        select_runs(plan, ["peft.method=lora"])


def test_two_names_for_one_configuration_are_found(tmp_path: Path) -> None:
    """Two variants whose runs share every key would give the same numbers twice; the study
    ran ``flora`` as a copy of ``fedpeft_plus`` unnoticed. Variants that differ in one key,
    or a staged baseline beside a plain one, are not flagged."""
    plan = _plan(
        tmp_path,
        TWO_BY_TWO
        + """
[variants]
fedavg_lora = {}
again = { preset = "fedavg_lora" }
prox = { preset = "fedavg_lora", "server.aggregator" = "fedprox" }
slora = {}
""",
    )
    assert same_configuration(plan) == [("fedavg_lora", "again")]
    proposal = plan_experiment(read_experiment(EXAMPLES / "proposal.toml"), EXAMPLES)
    # none since `flora` merges into the model (it was the proposed rule under another name)
    assert same_configuration(proposal) == []


def test_a_grid_of_hub_models_is_planned_offline_and_refused_only_to_run(
    tmp_path: Path,
) -> None:
    """A dry run (or a shard without them) needs no model at hand; running a run whose hub
    model is offline and not cached is refused before anything starts, naming the run."""
    from rich.console import Console

    from fedpeft.cli.experiment import run_experiment_command

    path = tmp_path / "exp.toml"
    path.write_text(
        """
[experiment]
name = "t"
seeds = [0]
[base]
"data.dataset" = "cifar10"
"run.rounds" = 1
[grid]
"model.name" = ["vit-base", "tiny-vit"]
[variants]
fedavg_lora = {}
"""
    )
    console = Console(file=open(os.devnull, "w"))  # noqa: SIM115
    out = tmp_path / "out"
    assert run_experiment_command(path, out, True, False, console) == 0  # dry run
    with pytest.raises(FedpeftError, match=r"run fedavg_lora-vit_base-\S+: model `google/vit"):
        run_experiment_command(path, out, False, False, console)
    assert not (out / "runs").exists()  # nothing started


def test_the_readmes_experiment_example_is_a_valid_plan(tmp_path: Path) -> None:
    """The README's example experiment file plans as written: its `proposed` variant and
    the variant its `exclude` names are among its [variants]."""
    from fedpeft.cli.experiment import plan_json

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    example = readme.split("```toml\n[experiment]\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "mine.toml"
    path.write_text("[experiment]\n" + example)
    exp = read_experiment(path)
    plan = plan_experiment(exp, tmp_path)
    assert plan_json(exp, plan, path)["proposed"] == "fedpeft_plus"
    assert not [r for r in plan.runs if r.variant == "centralised" and "iid" in r.key]


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ("[axes.split]\n", "axis 'split' has no values"),
        ('[axes.split]\n"*" = { "data.alpha" = 0.1 }\n', "a value labelled '*'"),
        ('[grid]\n"data.dataset" = ["", "sst2"]\n', "a value labelled ''"),
        ('[grid]\n"run.seed" = [1, 2]\n', "axis 'run.seed' sets `run.seed`, which the runner"),
        ('[axes.o]\na = { "run.output_dir" = "x" }\n', "sets `run.output_dir`"),
        ('[axes.variant]\na = { "client.lr" = 0.1 }\n', "'variant' has the name of a column"),
        ('[axes.accuracy]\na = { "client.lr" = 0.1 }\n', "'accuracy' has the name of a column"),
        (
            '[grid]\n"data.alpha" = [0.1]\n[axes]\n"data.alpha" = { a = { "data.alpha" = 0.2 } }\n',
            "'data.alpha' is both a grid key and a named axis",
        ),
    ],
)
def test_an_axis_that_would_plan_nothing_or_mislabel_the_tables_is_refused(
    tmp_path: Path, body: str, says: str
) -> None:
    """An empty axis planned no run; an axis over a key the runner sets planned copies of
    one run; an axis named like a column (`accuracy`) overwrote that column in results.csv."""
    with pytest.raises(FedpeftError, match=re.escape(says)):
        _plan(tmp_path, body + '[variants]\nx = { preset = "none" }\n')


@pytest.mark.parametrize(
    ("rule", "says"),
    [
        ("{}", "has an empty entry, which would leave out every run"),
        ('{ splt = "a" }', "'splt' is neither an axis nor `variant`"),
        ('{ split = "A" }', "'split' has no value A; it has a, b"),
        ('{ variant = "fedavg" }', "'variant' has no value fedavg"),
        ('{ variant = "fedavg_lora" }', "the experiment plans no run"),
    ],
)
def test_an_exclude_entry_that_matches_nothing_or_everything_is_refused(
    tmp_path: Path, rule: str, says: str
) -> None:
    """A misspelt `exclude` entry left nothing out, silently; an empty one left out every
    run, and the grid ran none."""
    head = HEAD.replace("[base]", f"exclude = [{rule}]\n[base]")
    body = '[axes.split]\na = { "data.alpha" = 0.3 }\nb = { "data.alpha" = 0.2 }\n'
    with pytest.raises(FedpeftError, match=re.escape(says)):
        _plan(tmp_path, body + "[variants]\nfedavg_lora = {}\n", head)


def test_a_misspelt_role_is_refused(tmp_path: Path) -> None:
    """The report finds its baselines by role: `centralized` made outcome 5 unmeasured."""
    with pytest.raises(FedpeftError, match="variant 'c': `role` must be one of full, peft"):
        _plan(tmp_path, '[variants]\nc = { preset = "centralised", role = "centralized" }\n')


@pytest.mark.parametrize("name", [".", ".."])
def test_a_name_of_dots_is_refused(tmp_path: Path, name: str) -> None:
    """`name = ".."` made the experiment's folder `experiments/..`, the folder it was run
    from, and its tables, configs and runs went there."""
    with pytest.raises(FedpeftError, match=f"name must name a folder, got '{re.escape(name)}'"):
        _plan(tmp_path, "[variants]\nfedavg_lora = {}\n", HEAD.replace('"t"', f'"{name}"'))


@pytest.mark.parametrize("stray", ["runs", "runs/KEY"])
def test_a_file_where_a_runs_folder_goes_is_one_sentence(tmp_path: Path, stray: str) -> None:
    """A file named like `runs/` or a run's folder ended the grid in a FileExistsError
    traceback when the run started; it is refused before anything starts, left as it is."""
    from rich.console import Console

    from fedpeft.cli.experiment import run_experiment_command

    path = tmp_path / "exp.toml"
    path.write_text(HEAD.replace("[0, 1]", "[0]") + "[variants]\nfedavg_lora = {}\n")
    key = plan_experiment(read_experiment(path), tmp_path).runs[0].key
    out = tmp_path / "out"
    (out / "runs" if stray != "runs" else out).mkdir(parents=True)
    blocker = out / stray.replace("KEY", key)
    blocker.write_text("mine")
    console = Console(file=open(os.devnull, "w"))  # noqa: SIM115
    with pytest.raises(FedpeftError, match=f"{re.escape(str(blocker))} is a file where"):
        run_experiment_command(path, out, False, False, console)
    assert blocker.read_text() == "mine"
