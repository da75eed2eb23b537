"""The report's pieces without running anything: the five outcomes on stored numbers, the
HTML page's self-containment, the browser check's own negative controls, and tracking."""

from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedpeft.cli.main import app
from fedpeft.errors import FedpeftError
from fedpeft.experiment import ExperimentDir, Plan, RunState, write_tables
from fedpeft.report.doc import Heading, Image, Para, Table, to_html, to_markdown
from fedpeft.report.outcomes import FAILS, HOLDS, UNMEASURED, Study, outcomes
from fedpeft.report.tables import RunFigures
from tests.browser import browser_or_skip, check_page

CELL = {"data.dataset": "sst2", "split": "dir01"}


def _run(
    variant: str, seed: int, accuracy: float, up: float, time_s: float, mem: float
) -> RunFigures:
    row = {
        "round": 1,
        "accuracy": accuracy,
        "bytes_up_per_client": up,
        "client_train_time_mean_s": time_s,
        "client_peak_mem_max_bytes": mem,
        "client_mem_rise_max_bytes": mem / 4,
    }
    labels = {"data.dataset": "sst2", "split": "*" if variant == "central" else "dir01"}
    return RunFigures(f"{variant}-{seed}", variant, seed, labels, [row])


def _study(proposed_acc: tuple[float, float]) -> Study:
    figures = [
        _run("plus", 0, proposed_acc[0], 1e4, 1.0, 1e9),
        _run("plus", 1, proposed_acc[1], 1e4, 1.0, 1e9),
        _run("full", 0, 0.70, 4e6, 6.0, 2e9),
        _run("full", 1, 0.70, 4e6, 6.0, 2e9),
        _run("lora", 0, 0.60, 1e4, 1.0, 1e9),
        _run("lora", 1, 0.62, 1e4, 1.0, 1e9),
        _run("bias", 0, 0.50, 5e3, 1.0, 1e9),
        _run("central", 0, 0.80, 1e4, 1.0, 1e9),
        _run("central", 1, 0.80, 1e4, 1.0, 1e9),
    ]
    roles = {
        "plus": "proposed",
        "full": "full",
        "lora": "peft",
        "bias": "peft",
        "central": "centralised",
    }
    keys = {f.run: {"data.partition": "dirichlet", "data.alpha": 0.1} for f in figures}
    return Study(figures, [CELL], roles, keys, "plus")


def test_outcomes_from_stored_numbers() -> None:
    one, two, three, four, five = outcomes(_study((0.70, 0.72)))
    assert one.verdict == HOLDS and "99.75 % less" in one.measured  # 1 − 1e4/4e6
    # +0.71 vs the strongest baseline 0.61: (0.71 − 0.61) / 0.61 = +16.4 %
    assert two.verdict == HOLDS and "+16.4 %" in two.measured and "lora" in two.details[0]
    assert (
        three.verdict == FAILS
        and "time 6.00×" in three.measured
        and "memory 2.00×" in three.measured
    )
    assert four.verdict == UNMEASURED
    # (0.80 − 0.71) / 0.80 = 11.25 % below centralised: beyond 10 % by 1.3 points
    assert (
        five.verdict == FAILS
        and "11.3 % below" in five.measured
        and "by 1.3 points" in five.measured
    )


def test_outcomes_that_hold_and_a_missing_proposed_variant() -> None:
    results = outcomes(_study((0.79, 0.79)))
    assert results[1].verdict == HOLDS and results[4].verdict == HOLDS  # 1.25 % below
    study = _study((0.7, 0.7))
    none = Study(study.figures, study.cells, study.roles, study.keys, None)
    assert {o.verdict for o in outcomes(none)} == {UNMEASURED}


def test_the_report_leaves_the_outcomes_out_without_a_proposed_variant() -> None:
    from fedpeft.report.experiment import _outcomes

    study = _study((0.7, 0.7))
    none = to_markdown(_outcomes(Study(study.figures, study.cells, study.roles, study.keys, None)))
    assert "left out: the experiment names no proposed variant" in none
    assert "Computed for" not in none and UNMEASURED not in none
    assert "Computed for the proposed variant `plus`" in to_markdown(_outcomes(study))


def test_outcome_5_says_above_when_federated_beats_centralised() -> None:
    five = outcomes(_study((0.82, 0.82)))[4]  # (0.80 − 0.82) / 0.80 = −2.5 %
    assert five.verdict == HOLDS
    assert "2.5 % above centralised" in five.measured and "below" not in five.measured
    assert "2.5 % above" in five.details[0]


def test_outcome_5_waits_for_the_plans_most_extreme_cell() -> None:
    """While the plan's pathological cell has not finished, the Dirichlet 0.1 cell that has
    is not the most extreme: a gap that passes there does not make the claim hold."""
    study = _study((0.79, 0.79))  # 1.25 % below centralised in the finished dir01 cell
    dirichlet = {"data.partition": "dirichlet", "data.alpha": 0.1}
    patho = {"data.partition": "pathological", "data.classes_per_client": 1}
    planned = (
        (CELL, dirichlet),
        ({"data.dataset": "sst2", "split": "patho"}, patho),
        ({"data.dataset": "sst2", "split": "iid"}, {"data.partition": "iid"}),
    )
    waiting = Study(study.figures, study.cells, study.roles, study.keys, "plus", None, planned)
    five = outcomes(waiting)[4]
    assert five.verdict == UNMEASURED
    assert "patho" in five.details[0] and "not finished" in five.details[0]
    # with only the finished cell planned, it is the most extreme and the claim holds
    alone = Study(study.figures, study.cells, study.roles, study.keys, "plus", None, planned[:1])
    assert outcomes(alone)[4].verdict == HOLDS
    # a claim that holds in the finished cells says so while others have not run
    communication = outcomes(waiting)[0]
    assert (
        communication.verdict == HOLDS
        and "in the one cell measured so far (1 of the plan's 3 cells have finished runs)"
        in communication.measured
    )
    assert "so far" not in outcomes(alone)[0].measured


def test_client_cost_compares_cpu_seconds_where_every_run_has_them() -> None:
    """Wall time says 6× here, CPU seconds 3×: the outcome takes CPU seconds when the
    proposed and full runs all record them, wall time otherwise."""
    study = _study((0.70, 0.72))
    for f in study.figures:
        f.rounds[-1]["client_train_cpu_mean_s"] = 3.0 if f.variant == "full" else 1.0
    three = outcomes(study)[2]
    assert "CPU time 3.00×" in three.measured and three.verdict == FAILS
    next(f for f in study.figures if f.variant == "full").rounds[-1].pop("client_train_cpu_mean_s")
    three = outcomes(study)[2]
    assert three.measured.startswith("time 6.00×")


def _personal_study(personal: tuple[float, float], full: float = 0.8) -> Study:
    """The study above with a personalised variant whose clients scored ``personal`` (per
    seed) against ``full``, and an ablation that kept nothing local (its global scored)."""
    study = _study((0.7, 0.7))
    extra = []
    for seed, p in enumerate(personal):
        run = _run("plus_personal", seed, 0.7, 1e4, 1.0, 1e9)
        run.rounds[-1] |= {"personal.personal_accuracy": p, "personal.full_accuracy": full}
        ablation = _run("plus_global", seed, 0.7, 1e4, 1.0, 1e9)
        ablation.rounds[-1] |= {"personal.global_accuracy": 0.4, "personal.full_accuracy": full}
        extra += [run, ablation]
    roles = study.roles | {"plus_personal": "personal", "plus_global": "ablation"}
    keys = study.keys | {f.run: study.keys["plus-0"] for f in extra}
    figures = study.figures + extra
    return Study(figures, study.cells, roles, keys, "plus", "plus_personal")


def test_outcome_4_personalised_over_fully_personalised() -> None:
    # (0.72 + 0.76) / 2 = 0.74 over 0.80 = 92.5 %: inside the band
    four = outcomes(_personal_study((0.72, 0.76)))[3]
    assert four.verdict == HOLDS and four.measured == "92.5 % of fully personalised"
    assert "`plus_personal` 0.7400 / 0.8000" in four.details[0]
    assert "`plus_global` 50.0 %" in four.details[0]  # the ablation beside it: 0.4 / 0.8
    low = outcomes(_personal_study((0.60, 0.64)))[3]  # 0.62 / 0.8 = 77.5 %
    assert low.verdict == FAILS and "short of 90 % by 12.5 points" in low.measured
    high = outcomes(_personal_study((0.78, 0.80)))[3]  # 98.75 %
    assert high.verdict == HOLDS and "above the claimed 95 %" in high.measured
    study = _personal_study((0.7, 0.7))
    unscored = Study(study.figures, study.cells, study.roles, study.keys, "plus", "plus")
    four = outcomes(unscored)[3]
    assert four.verdict == UNMEASURED and "`plus`'s runs record no personalised" in four.measured
    assert "recorded by `plus_personal`, `plus_global`" in four.measured


def _page(tmp_path: Path) -> Path:
    from PIL import Image as PILImage

    (tmp_path / "plots").mkdir()
    PILImage.new("RGB", (8, 8), (200, 10, 10)).save(tmp_path / "plots" / "a.png")
    blocks = [
        Heading(1, "T <b>"),
        Para("**bold** and `code` & <script>alert(1)</script>"),
        Table(["a", "b"], [["1", "x|y"]], [True, False]),
        Image(Path("plots/a.png"), "a plot"),
    ]
    md = to_markdown(blocks)
    assert "| 1 | x\\|y |" in md and "![a plot](plots/a.png)" in md and "| ---: | --- |" in md
    page = tmp_path / "page.html"
    page.write_text(to_html(blocks, "T", tmp_path))
    text = page.read_text()
    assert (
        "<strong>bold</strong>" in text
        and "&lt;script&gt;" in text
        and "data:image/png;base64," in text
    )
    return page


def test_html_is_self_contained_and_escaped(tmp_path: Path) -> None:
    _page(tmp_path)


def test_the_browser_check_sees_broken_images_and_errors(tmp_path: Path) -> None:
    browser_or_skip()
    good = check_page(_page(tmp_path))
    assert good.facts["decoded"] == good.facts["images"] == 1 and not good.exceptions
    bad = tmp_path / "bad.html"
    bad.write_text(
        '<html><body><img src="data:image/png;base64,AAAA">'
        "<script>console.error('boom'); undefinedFunction();</script></body></html>"
    )
    check = check_page(bad)
    assert check.facts["decoded"] == 0 and check.facts["images"] == 1
    assert any("boom" in e for e in check.console_errors) and check.exceptions


def test_mlflow_tracking_without_mlflow_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from fedpeft.report.tracking import make_trackers

    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow → ImportError
    with pytest.raises(FedpeftError, match=r"pip install 'fedpeft\[mlflow\]'"):
        make_trackers(["mlflow"], "runs", "x")


def test_runs_not_started_are_counted_and_failures_listed() -> None:
    from fedpeft.report.experiment import _problems

    runs = [
        {"run": "a", "state": "done", "rounds_completed": "3", "error": ""},
        {"run": "b", "state": "incomplete", "rounds_completed": "0", "error": ""},
        {"run": "c", "state": "incomplete", "rounds_completed": "", "error": ""},
        {"run": "d", "state": "incomplete", "rounds_completed": "2", "error": ""},
        {"run": "e", "state": "failed", "rounds_completed": "0", "error": "exit 1"},
    ]
    text = to_markdown(_problems(runs))
    assert "2 runs have not started or finished a round" in text
    assert "`d`: incomplete" in text and "`e`: failed exit 1" in text
    assert "`b`" not in text and "`c`" not in text
    assert "All 1 runs finished." in to_markdown(_problems(runs[:1]))


def test_an_unfinished_variant_is_said_to_be_unfinished_not_unrecorded() -> None:
    """Outcomes 3 and 4 while the proposed variant has not run yet: they wait for it, rather
    than blaming runs for metrics they did not record."""
    study = _study((0.70, 0.72))
    early = [f for f in study.figures if f.variant != "plus"]
    waiting = Study(early, study.cells, study.roles, study.keys, "plus", "plus")
    three, four = outcomes(waiting)[2:4]
    assert three.verdict == UNMEASURED and three.measured == "no cell has both variants finished"
    assert four.verdict == UNMEASURED and four.measured == "no run of `plus` has finished"
    # both finished but with no client time: then the runs are what lacks it
    for f in study.figures:
        f.rounds[-1].pop("client_train_time_mean_s")
    assert outcomes(study)[2].measured == "the runs record no client time or memory"
    assert "record no personalised" in outcomes(study)[3].measured


def test_cell_tables_show_cpu_seconds_where_every_run_has_them(tmp_path: Path) -> None:
    """A cell's client-time column is CPU seconds when all its runs recorded them (wall
    time counts whatever ran beside), and says so; wall seconds otherwise."""
    from fedpeft.report.experiment import _results

    study = _study((0.70, 0.72))
    roles = study.roles
    variants = list(roles)

    def column(figures: list[RunFigures]) -> tuple[str, str]:
        blocks = _results(tmp_path, [CELL], figures, variants, roles)
        table = next(b for b in blocks if isinstance(b, Table))
        i = next(i for i, h in enumerate(table.header) if h.startswith("client train"))
        full = next(r for r in table.rows if r[0] == "`full`")
        return table.header[i], full[i]

    assert column(study.figures) == ("client train s / round", "6.00 ± 0.00")
    for f in study.figures:
        f.rounds[-1]["client_train_cpu_mean_s"] = 3.0 if f.variant == "full" else 1.0
    assert column(study.figures) == ("client train CPU s / round", "3.00 ± 0.00")
    next(f for f in study.figures if f.variant == "bias").rounds[-1].pop(
        "client_train_cpu_mean_s"
    )  # one run without: the whole cell in wall seconds
    assert column(study.figures) == ("client train s / round", "6.00 ± 0.00")
    for f in study.figures:
        f.rounds[-1]["client_train_cpu_mean_s"] = 3.0 if f.variant == "full" else 1.0
    resumed = next(f for f in study.figures if f.variant == "bias")
    resumed.rounds.insert(0, {"round": 0, "client_train_time_mean_s": 1.0})  # older code
    assert column(study.figures)[0] == "client train s / round"  # not CPU over fewer rounds


DEEP = "[" * 5000 + "]" * 5000  # nested beyond what json parses recursively


def test_experiment_files_nested_too_deep_read_as_damaged(tmp_path: Path) -> None:
    """An experiment folder's JSON nested deeper than Python parses is damaged like any
    other, not a RecursionError: a metrics line so is skipped, a summary.json so leaves
    its run unfinished, and an experiment.json so is one sentence from `fedpeft report`."""
    records = Path(__file__).resolve().parents[1] / "docs" / "results" / "records"
    plan = Plan.from_json(json.loads((records / "experiment.json").read_text("utf-8")))
    run = next(r for r in plan.runs if (records / "runs" / r.key).is_dir())
    shutil.copytree(records / "runs" / run.key, tmp_path / "runs" / run.key)
    folder = ExperimentDir(tmp_path)
    metrics = (folder.run_folder(run.key) or tmp_path) / "metrics.jsonl"
    logged = metrics.read_text().splitlines()
    metrics.write_text(DEEP + "\n" + "\n".join(logged) + "\n")
    write_tables(plan, folder)
    with (tmp_path / "results.csv").open(newline="", encoding="utf-8") as f:
        assert len([r for r in csv.DictReader(f) if r["run"] == run.run_id]) == len(logged)
    (metrics.parent / "summary.json").write_text(DEEP)
    assert folder.state(run.key, run.rounds) is not RunState.DONE
    (tmp_path / "experiment.json").write_text(DEEP)
    result = CliRunner().invoke(app, ["report", str(tmp_path)])
    output = " ".join(result.output.split())
    assert result.exit_code == 2, output
    assert "experiment.json is damaged; rerun the experiment" in output, output
    assert "Traceback" not in output and output.count("error:") == 1, output


def test_a_folder_put_beside_a_run_is_neither_read_nor_cleared(tmp_path: Path) -> None:
    """`runs/<key>/run-old` (or any folder sorting after the run's own) was taken for the
    run: the finished run was counted as not started, its rows left out of results.csv,
    and the next invocation removed the stray folder as a stale run and ran it again."""
    folder = ExperimentDir(tmp_path)
    run = folder.run_home("k") / "run-20261207-074533"
    (run / "checkpoint").mkdir(parents=True)
    (run / "summary.json").write_text('{"rounds_completed": 2}')
    (run / "config.toml").write_text("")
    for stray in ("run-old", "run-20261207-074533.bak", "run-zzz"):
        (folder.run_home("k") / stray).mkdir()
    assert folder.run_folder("k") == run and folder.state("k", 2) is RunState.DONE
    folder.clear_stale("k")
    assert (folder.run_home("k") / "run-old").is_dir()


def test_a_copy_put_beside_a_run_is_neither_resumed_nor_cleared(tmp_path: Path) -> None:
    """A copy holding the run's files (`cp -r run-… run-….bak`, `run-old`) sorted after the
    run's own folder and was taken for the run: a partial run was resumed into the copy, and
    a copy without a checkpoint was removed as a stale run. RunStore's folders go first, the
    newest by number (-10 after -9); another is read only when it is the only one."""
    folder = ExperimentDir(tmp_path)
    home = folder.run_home("k")
    for name in ("run-20261207-074533-9", "run-20261207-074533-10"):
        (home / name / "checkpoint").mkdir(parents=True)
        (home / name / "checkpoint" / "round-000001.manifest.json").write_text("{}")
        (home / name / "config.toml").write_text("")
    run = home / "run-20261207-074533-10"
    for stray in ("run-20261207-074533-10.bak", "run-old"):
        (home / stray).mkdir()
        (home / stray / "config.toml").write_text("")
    assert folder.run_folder("k") == run and folder.state("k", 2) is RunState.PARTIAL
    (run / "checkpoint" / "round-000001.manifest.json").unlink()
    folder.clear_stale("k")  # the run's own folder, not started: cleared; the copies kept
    assert sorted(p.name for p in home.iterdir()) == [
        "run-20261207-074533-10.bak",
        "run-20261207-074533-9",
        "run-old",
    ]
    recovered = ExperimentDir(tmp_path / "records")
    (recovered.run_home("k") / "run-recovered").mkdir(parents=True)
    (recovered.run_home("k") / "run-recovered" / "metrics.jsonl").write_text("")
    assert recovered.run_folder("k") == recovered.run_home("k") / "run-recovered"


@pytest.mark.parametrize(
    ("damage", "where"),
    [
        ({"variants": [1]}, "`variants`"),
        ({"settings": "x"}, "`settings`"),
        ({"runs": [{"key": 5}]}, "`runs.0"),
        ({"variants": {"v": {"role": None, "description": "", "cite": "", "keys": {}}}}, "role"),
    ],
)
def test_a_plan_of_the_wrong_shape_is_one_sentence(
    tmp_path: Path, damage: dict[str, object], where: str
) -> None:
    """An `experiment.json` edited by hand (valid JSON, wrong types) ended `fedpeft report`
    in an AttributeError or TypeError traceback."""
    plan = {"name": "t", "axes": [], "variants": {}, "runs": [], "settings": {}} | damage
    (tmp_path / "experiment.json").write_text(json.dumps(plan))
    result = CliRunner().invoke(app, ["report", str(tmp_path)])
    said = " ".join(result.output.split())
    assert result.exit_code == 2 and "experiment.json does not describe a plan" in said, said
    assert where in said and "Traceback" not in said


def test_a_summary_with_fields_of_the_wrong_type_is_tabulated(tmp_path: Path) -> None:
    """A summary.json whose byte or update counts are null or text (damaged, edited) ended
    the tables — and so `fedpeft experiment` and `fedpeft report` — in a TypeError."""
    records = Path(__file__).resolve().parents[1] / "docs" / "results" / "records"
    plan = Plan.from_json(json.loads((records / "experiment.json").read_text("utf-8")))
    run = next(r for r in plan.runs if (records / "runs" / r.key).is_dir())
    shutil.copytree(records / "runs" / run.key, tmp_path / "runs" / run.key)
    folder = ExperimentDir(tmp_path)
    run_folder = folder.run_folder(run.key) or tmp_path
    (run_folder / "clients.jsonl").write_text("")  # no client records: the summary's sums
    summary = json.loads((run_folder / "summary.json").read_text())
    summary |= {"bytes_up_total": None, "updates_accepted": "x"}
    (run_folder / "summary.json").write_text(json.dumps(summary))
    write_tables(plan, folder)
    with (tmp_path / "runs.csv").open(newline="", encoding="utf-8") as f:
        row = next(r for r in csv.DictReader(f) if r["run"] == run.run_id)
    assert row["bytes_up_per_client_round"] == ""
