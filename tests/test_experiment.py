"""``fedpeft experiment examples/proposal_tiny.toml`` end to end, as a user runs it: runs as
processes, a resumed grid, the tidy tables against the runs' own logs, TensorBoard event
files, the report with the five outcomes, and the HTML page in a real headless browser."""

from __future__ import annotations

import csv
import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from tests.browser import browser_or_skip, check_page

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "proposal_tiny.toml"


def _fedpeft(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "fedpeft.cli.main", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.fixture(scope="module")
def experiment(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("exp")
    done = _fedpeft("experiment", str(EXAMPLE), "--out", str(home / "tiny"), cwd=home)
    assert done.returncode == 0, done.stdout + done.stderr
    # 2 seeds × (full, slora's 2 stages, centralised, plus, plus personalised)
    assert "12 to run" in done.stdout
    # each finished run's line says where the grid stands, with an estimate of the time left
    assert re.search(r"done \S+ \(\d+ s\) · 1/12 runs done · about \d+ min left", done.stdout)
    assert "12/12 runs done" in done.stdout
    return home / "tiny"


def test_a_dry_run_lists_the_runs_and_writes_nothing(experiment: Path, tmp_path: Path) -> None:
    plan = (experiment / "experiment.json").read_bytes()
    again = _fedpeft(
        "experiment", str(EXAMPLE), "--out", str(experiment), "--dry-run", cwd=tmp_path
    )
    assert again.returncode == 0 and "0 to run" in again.stdout, again.stdout + again.stderr
    assert (experiment / "experiment.json").read_bytes() == plan  # a running grid's plan kept
    fresh = _fedpeft(
        "experiment", str(EXAMPLE), "--out", str(tmp_path / "new"), "--dry-run", cwd=tmp_path
    )
    assert "12 to run" in fresh.stdout and "-s0-" in fresh.stdout, fresh.stdout + fresh.stderr
    assert not (tmp_path / "new").exists()
    part = _fedpeft(
        "experiment", str(EXAMPLE), "--out", str(tmp_path / "new"), "--dry-run",
        "--only", "variant=slora", "--only", "seed=1", cwd=tmp_path,
    )  # fmt: skip
    assert "2 to run of the 2 selected" in part.stdout, part.stdout + part.stderr
    listed = [x.split()[0] for x in part.stdout.splitlines() if x.startswith("  ")]
    assert len(listed) == 2 and all(k.startswith("slora-") and "-s1-" in k for k in listed)
    wrong = _fedpeft(
        "experiment", str(EXAMPLE), "--out", str(tmp_path / "new"), "--only", "split=iid",
        cwd=tmp_path,
    )  # fmt: skip
    assert wrong.returncode == 2 and "iid is not a value of 'split'" in wrong.stdout + wrong.stderr
    (tmp_path / "afile").write_text("")
    for dry in ([], ["--dry-run"]):  # a folder below a file: one sentence, dry run or not
        below = _fedpeft(
            "experiment", str(EXAMPLE), "--out", str(tmp_path / "afile" / "x"), *dry, cwd=tmp_path
        )
        said = " ".join((below.stdout + below.stderr).split())
        assert below.returncode == 2 and "which is a file, not a folder" in said, said
        assert "Traceback" not in said


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def test_results_table_holds_every_round_of_every_run(experiment: Path) -> None:
    rows = _csv(experiment / "results.csv")
    runs = _csv(experiment / "runs.csv")
    assert {r["state"] for r in runs} == {"done"} and len(runs) == 10
    assert len(rows) == 10 * 2  # every logical run has 2 rounds
    plan = json.loads((experiment / "experiment.json").read_text())
    for physical in plan["runs"]:
        folder = next((experiment / "runs" / physical["key"]).glob("run-*"))
        logged = _lines(folder / "metrics.jsonl")
        mine = [
            r
            for r in rows
            if r["run"] == physical["run_id"] and int(r["stage"]) == physical["stage"]
        ]
        assert [int(r["round"]) for r in mine] == [
            int(str(m["round"])) + physical["round_offset"] for m in logged
        ]
        for row, m in zip(mine, logged, strict=True):
            assert float(row["accuracy"]) == pytest.approx(m["eval"]["accuracy"])  # type: ignore[index]
            assert float(row["bytes_up"]) == m["bytes_up"]
    slora = sorted(
        (r for r in rows if r["variant"] == "slora" and r["seed"] == "0"),
        key=lambda r: int(r["round"]),
    )
    assert [(r["stage"], r["round"]) for r in slora] == [("1", "1"), ("2", "2")]
    assert float(slora[1]["cum_bytes_up"]) == float(slora[0]["bytes_up"]) + float(
        slora[1]["bytes_up"]
    )
    central = [r for r in rows if r["variant"] == "centralised"]
    assert central and all(r["split"] == "*" and r["sampled"] == "1" for r in central)


def test_each_run_is_held_to_its_share_of_the_cores(experiment: Path) -> None:
    import tomllib

    configs = sorted((experiment / "configs").glob("*.toml"))
    assert len(configs) == 12
    for path in configs:  # budget: threads_per_run = 1 → one client at a time, one thread
        run = tomllib.loads(path.read_text())["run"]
        assert (run["threads"], run["workers"]) == (1, 1), path.name


def test_each_run_writes_tensorboard_events_equal_to_its_metrics(experiment: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder = next((experiment / "runs").glob("fedpeft_plus-*s1*/run-*"))
    events = EventAccumulator(str(folder / "tensorboard"))
    events.Reload()
    logged = _lines(folder / "metrics.jsonl")
    accuracy = [(e.step, e.value) for e in events.Scalars("eval/accuracy")]
    assert accuracy == [
        (m["round"], pytest.approx(m["eval"]["accuracy"], rel=1e-6))
        for m in logged  # type: ignore[index]
    ]
    assert [e.value for e in events.Scalars("bytes/up")] == [m["bytes_up"] for m in logged]


def test_the_same_command_again_skips_finished_runs_and_resumes_a_partial_one(
    experiment: Path,
) -> None:
    folder = next((experiment / "runs").glob("fedavg_full-*s0*/run-*"))
    (folder / "summary.json").unlink()  # as if killed after its last checkpoint
    before = (experiment / "results.csv").read_text()
    again = _fedpeft("experiment", str(EXAMPLE), "--out", str(experiment), cwd=experiment.parent)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "(11 done, 1 to run)" in again.stdout
    assert "--resume" not in again.stdout and (folder / "summary.json").is_file()
    assert len(list((experiment / "runs").glob("fedavg_full-*s0*/run-*"))) == 1  # same folder
    assert (experiment / "results.csv").read_text() == before


def test_report_computes_the_outcomes_from_the_tables(experiment: Path) -> None:
    report = (experiment / "report.md").read_text()
    assert "## The proposal's expected outcomes" in report
    runs = {r["variant"]: r for r in _csv(experiment / "runs.csv") if r["seed"] == "0"}
    rows = _csv(experiment / "results.csv")

    def up(variant: str) -> float:
        values = [float(r["bytes_up_per_client"]) for r in rows if r["variant"] == variant]
        return sum(values) / len(values)

    cut = 1 - up("fedpeft_plus") / up("fedavg_full")  # both seeds: the sizes do not vary
    assert f"{100 * cut:.2f} % less" in report and runs
    line = next(x for x in report.splitlines() if x.startswith("| 1 |"))
    assert line.endswith("**holds** |")  # LoRA on tiny-bert sends ~1/400 of the model
    assert "![accuracy vs rounds, bytes and time" in report
    # a personalised variant's central row is of the shared part alone: the report says so
    note = r"`fedpeft_plus_personal`[^\n]* keeps? part of each client's model local"
    assert re.search(note, report)
    assert (experiment / "plots").is_dir() and list((experiment / "plots").glob("*.png"))


def test_every_outcome_is_computed_from_numbers_in_the_tiny_study(experiment: Path) -> None:
    """Each of the five rows has a verdict (holds / does not hold) and a measured figure:
    none says "not measured" at tiny scale."""
    report = (experiment / "report.md").read_text()
    for n in range(1, 6):
        line = next(x for x in report.splitlines() if x.startswith(f"| {n} |"))
        *_, measured, verdict, _ = line.split("|")
        assert verdict.strip() in ("**holds**", "**does not hold**"), line
        assert re.search(r"\d+\.\d+ ?(%|×)", measured) and "n/a" not in measured, line


def test_outcome_4_is_personalised_over_fully_personalised_from_the_clients(
    experiment: Path,
) -> None:
    """Recomputed from the runs' own ``personal.jsonl``: per seed the clients' mean
    personalised and fully personalised accuracy (clients with held-out data), then the
    ratio of the means over seeds; the per-client table holds every scored client."""
    personal, full, rows = [], [], 0
    for folder in (experiment / "runs").glob("fedpeft_plus_personal-*/run-*"):
        scored = [r for r in _lines(folder / "personal.jsonl") if r["num_test"]]
        rows += len(_lines(folder / "personal.jsonl"))
        personal.append(statistics.fmean(r["models"]["personal"]["accuracy"] for r in scored))  # type: ignore[index]
        full.append(statistics.fmean(r["models"]["full"]["accuracy"] for r in scored))  # type: ignore[index]
        summary = json.loads((folder / "summary.json").read_text())
        run = next(r for r in _csv(experiment / "runs.csv") if r["folder"] == str(folder))
        assert float(run["personal.over_full"]) == pytest.approx(
            summary["personal"]["personal_over_full"]
        )
    assert len(personal) == 2
    ratio = statistics.fmean(personal) / statistics.fmean(full)
    line = next(x for x in (experiment / "report.md").read_text().splitlines() if "| 4 |" in x)
    assert f"{100 * ratio:.1f} %" in line
    assert ("**holds**" in line) == (ratio >= 0.9)
    scores = _csv(experiment / "personal.csv")
    assert len(scores) == rows and {r["variant"] for r in scores} == {"fedpeft_plus_personal"}


def test_the_html_report_renders_in_a_headless_browser(experiment: Path) -> None:
    browser_or_skip()
    page = check_page(experiment / "report.html")
    assert page.exceptions == [] and page.console_errors == []
    assert page.facts["images"] >= 1 and page.facts["decoded"] == page.facts["images"]
    assert page.facts["tables"] >= 3 and page.facts["external"] == 0  # self-contained
    assert "miniature" in page.facts["title"]


def _tiny_grid(folder: Path, name: str, rounds: int, *variants: str) -> Path:
    """An experiment file: one seed of FedAvg-LoRA on the tiny BERT (and ``variants``)."""
    spec = folder / "exp.toml"
    lines = [
        "[experiment]", f'name = "{name}"', "seeds = [0]", "track = []", "[base]",
        '"model.name" = "tiny-bert"', f'"run.rounds" = {rounds}', '"data.train_size" = 32',
        '"data.eval_size" = 16', '"data.num_clients" = 2', '"data.partition" = "iid"',
        "[variants]", "fedavg_lora = {}", *variants,
    ]  # fmt: skip
    spec.write_text("\n".join(lines) + "\n")
    return spec


def test_a_run_that_crashes_fails_alone(tmp_path: Path) -> None:
    """A run that passes the up-front checks but fails when it loads its data (a missing
    file) is reported with its error; the grid's other run finishes, and the exit code
    says that something failed."""
    spec = _tiny_grid(
        tmp_path,
        "crash",
        1,
        'broken = { preset = "fedavg_lora", "data.dataset" = "custom", '
        '"data.train_file" = "nope.csv" }',
    )
    done = _fedpeft("experiment", str(spec), "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    runs = {r["variant"]: r for r in _csv(tmp_path / "out" / "runs.csv")}
    assert runs["fedavg_lora"]["state"] == "done"
    assert runs["broken"]["state"] == "failed" and "nope.csv" in runs["broken"]["error"]
    assert "failed broken" in done.stdout


def test_sigterm_stops_a_background_grid_and_its_runs_at_a_round_boundary(
    tmp_path: Path,
) -> None:
    """A grid started in the background (SIGINT ignored, as `cmd &` leaves it) and stopped
    by SIGTERM (a scheduler's stop) stops its runs as Ctrl-C does: nothing left running,
    each run resumable from its last round."""
    import signal
    import time

    import psutil

    spec = _tiny_grid(tmp_path, "stop", 200)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1"}
    grid = subprocess.Popen(
        [sys.executable, "-m", "fedpeft.cli.main", "experiment", str(spec), "--out", "out"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    metrics = tmp_path / "out" / "runs"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and grid.poll() is None:
        logged = list(metrics.glob("*/run-*/metrics.jsonl"))
        if logged and len(logged[0].read_text().splitlines()) >= 2:
            break
        time.sleep(0.5)
    assert grid.poll() is None, grid.communicate()[0]
    runs = [p for p in psutil.Process(grid.pid).children(recursive=True)]
    assert runs, "the grid's run is not running"
    grid.send_signal(signal.SIGTERM)
    out, _ = grid.communicate(timeout=120)
    assert grid.returncode == 130 and "interrupted" in out, out
    gone, alive = psutil.wait_procs(runs, timeout=30)
    assert alive == [], f"left running: {[p.cmdline() for p in alive]}"
    log = next(metrics.glob("*/log.txt")).read_text()
    assert "interrupted; continue with `fedpeft run --resume" in log, log  # not killed
    assert list(metrics.glob("*/run-*/checkpoint/round-*.manifest.json"))


def test_a_grid_with_nothing_left_to_run_shows_its_runs_as_done(experiment: Path) -> None:
    """The progress display hears of the runs finished before (it said 0/N until a run
    ended, and none does when every run is done)."""
    from fedpeft.experiment import ExperimentDir, plan_experiment, read_experiment
    from fedpeft.experiment.runner import GridStatus, Runner

    exp = read_experiment(EXAMPLE)
    plan = plan_experiment(exp, EXAMPLE.parent)
    heard: list[tuple[int, int]] = []

    def notify(status: GridStatus, message: str) -> None:
        heard.append((len(status.done), status.total))

    status = Runner(plan, ExperimentDir(experiment), exp.experiment).run(notify)
    assert len(status.done) == status.total == len(plan.runs) == 12
    assert heard == [(12, 12)]


def test_a_run_still_going_after_its_runner_was_killed_is_not_started_twice(
    tmp_path: Path,
) -> None:
    """SIGKILL to the runner leaves its runs going (each in its own process group): the
    same command again resumed the same run folder beside the one still going, and both
    appended to its metrics.jsonl (rounds 95, 103, 96, 104, …). A run's process holds a lock
    on its log.txt: while it lives the grid is refused in one sentence, and started later."""
    from fedpeft.experiment import ExperimentDir, plan_experiment, read_experiment
    from fedpeft.experiment.layout import lock_log
    from fedpeft.experiment.runner import BUSY, Runner

    spec = _tiny_grid(tmp_path, "orphan", 1)
    exp = read_experiment(spec)
    plan = plan_experiment(exp, tmp_path)
    folder = ExperimentDir(tmp_path / "out")
    key = plan.runs[0].key
    folder.run_home(key).mkdir(parents=True)
    with folder.log_path(key).open("ab") as log:
        assert lock_log(log)
        orphan = subprocess.Popen(["sleep", "120"], stdout=log)  # holds it as a run does
    try:
        said = _fedpeft("experiment", str(spec), "--out", str(folder.root), cwd=tmp_path)
        text = " ".join((said.stdout + said.stderr).split())
        assert said.returncode == 2 and f"run {key} is still running" in text, text
        assert "Traceback" not in text
        status = Runner(plan, folder, exp.experiment).run(lambda status, message: None)
        assert status.failed == {key: BUSY} and not list(folder.run_home(key).glob("run-*"))
    finally:
        orphan.kill()
        orphan.wait()
    done = _fedpeft("experiment", str(spec), "--out", str(folder.root), cwd=tmp_path)
    assert done.returncode == 0 and "1/1 runs done" in done.stdout, done.stdout + done.stderr
