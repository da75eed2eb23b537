"""Reports of runs whose rounds accepted no update (100% dropout) or that have no round:
``fedpeft report`` writes them, with ``—`` where there is nothing to show, never a crash."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from fedpeft.cli.main import app
from fedpeft.cli.progress import rounds_table
from fedpeft.report import render_report
from fedpeft.server.summary import build_summary
from fedpeft.types import RoundRecord

EVAL = {"accuracy": 0.5, "macro_f1": 0.3333, "loss": 0.6931}


def _round(rnd: int, accepted: int, bytes_up: int) -> dict[str, object]:
    """A round as the loop records it: every sampled client dropped unless ``accepted``."""
    record = RoundRecord(
        round=rnd,
        sampled=[0, 1, 2],
        accepted=accepted,
        rejected=0,
        bytes_down=3000,
        bytes_up=bytes_up,
        train_loss=0.0,  # what the loop writes when no update came: 0 / max(n, 1)
        eval=EVAL,
        wall_time_s=1.5,
        eval_time_s=0.5,
        client_time_s=0.0,
    )
    return record.to_json()


def _run_folder(tmp_path: Path, rounds: list[dict[str, object]]) -> Path:
    run = tmp_path / "run-x"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rounds))
    summary = build_summary(rounds, 10_000_000, {"a": torch.zeros(4)}, 3.0, {"model": "tiny"})
    (run / "summary.json").write_text(json.dumps(summary))
    return run


def test_summary_of_rounds_without_updates() -> None:
    rounds = [_round(1, 0, 0), _round(2, 0, 0)]
    s = build_summary(rounds, 10_000_000, {"a": torch.zeros(4)}, 3.0, {})
    assert (s["bytes_up_total"], s["up_fraction_of_full_model"]) == (0, 0.0)
    assert (s["updates_accepted"], s["rounds_without_updates"]) == (0, 2)
    assert s["final_accuracy"] == s["best_accuracy"] == 0.5
    empty = build_summary([], 10_000_000, {}, 0.0, {})
    assert empty["final_accuracy"] is None and empty["best_accuracy"] is None
    assert empty["rounds_completed"] == 0 and empty["bytes_up_per_client_round"] == 0
    assert build_summary([], 0, {}, 0.0, {})["up_fraction_of_full_model"] is None


@pytest.mark.parametrize("rounds", [[], [(1, 0, 0), (2, 0, 0)], [(1, 2, 500), (2, 0, 0)]])
def test_fedpeft_report_on_empty_rounds_writes_the_report(
    tmp_path: Path, rounds: list[tuple[int, int, int]]
) -> None:
    run = _run_folder(tmp_path, [_round(*r) for r in rounds])
    result = CliRunner().invoke(app, ["report", str(run)])
    assert result.exit_code == 0, result.output
    text = (run / "report.md").read_text()
    rows = [ln for ln in text.splitlines() if re.match(r"\| \d", ln)]
    assert len(rows) == len(rounds)
    for (_, accepted, _), row in zip(rounds, rows, strict=True):
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[4] == ("—" if accepted == 0 else "0.0000")  # no update, no train loss
        assert cells[5] == f"{accepted}/3"
    if not rounds:
        assert "(no completed round)" in text and "final accuracy **—**" in text
    elif not any(a for _, a, _ in rounds):
        assert "(nothing of the full model" in text
    assert (run / "plots" / "accuracy.png").read_bytes()[:4] == b"\x89PNG"


def test_the_cli_table_and_report_of_a_dropout_run_render(tmp_path: Path) -> None:
    rounds = [_round(1, 0, 0)]
    run = _run_folder(tmp_path, rounds)
    assert "| 1 | 0.5000 | 0.3333 | 0.6931 | — | 0/3 | 0.00 | 1.5 |" in render_report(run, [])
    assert rounds_table(rounds).row_count == 1


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("summary", "summary.json is not valid JSON"),
        ("metrics", "metrics.jsonl, line 2 is not valid JSON"),
        ("missing", "has no summary.json"),
    ],
)
def test_a_damaged_run_folder_is_one_sentence(tmp_path: Path, damage: str, message: str) -> None:
    run = _run_folder(tmp_path, [_round(1, 0, 0)])
    if damage == "summary":
        (run / "summary.json").write_bytes(b"\x8f\x00{")
    elif damage == "metrics":
        with (run / "metrics.jsonl").open("a") as f:
            f.write("{half a line\n")
    else:
        (run / "summary.json").unlink()
    result = CliRunner().invoke(app, ["report", str(run)])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert "Traceback" not in result.output


def test_a_read_only_folder_is_one_sentence_and_left_as_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`fedpeft report` on a read-only run or experiment folder (an archive) ended in a
    PermissionError traceback from writing plots/ or results.csv."""
    import os

    run = _run_folder(tmp_path, [_round(1, 2, 500)])
    experiment = tmp_path / "exp"
    experiment.mkdir()
    (experiment / "experiment.json").write_text('{"variants": {}, "runs": [], "axes": []}')
    (run / "plots").mkdir()
    read_only = {run / "plots", experiment}
    access = os.access

    def writable(p: str, mode: int) -> bool:  # as for a user without write permission
        return not (mode & os.W_OK and Path(p) in read_only) and access(p, mode)

    monkeypatch.setattr(os, "access", writable)
    for folder, named in ((run, run / "plots"), (experiment, experiment)):
        before = sorted(p.name for p in folder.rglob("*"))
        result = CliRunner().invoke(app, ["report", str(folder), "--no-classes"])
        said = " ".join(result.output.split())
        assert result.exit_code == 2 and f"{named} is not writable by this user" in said, said
        assert "Traceback" not in said and sorted(p.name for p in folder.rglob("*")) == before


def test_a_folder_above_run_folders_names_them(tmp_path: Path) -> None:
    """`fedpeft report runs/<key>` of an experiment, or `runs/`: the folder holds the run
    folders, not a run; the sentence names the one to pass (or how many there are)."""
    home = tmp_path / "k1"
    (home / "run-20261207-010101").mkdir(parents=True)
    (home / "run-20261207-010101" / "summary.json").write_text("{}")
    one = CliRunner().invoke(app, ["report", str(home)])
    assert one.exit_code == 2
    flat = "".join(one.output.split())  # however the console wrapped the path
    assert f"itsrunfolderis{home / 'run-20261207-010101'}." in flat, one.output
    (home / "run-20261207-010102").mkdir()
    (home / "run-20261207-010102" / "summary.json").write_text("{}")
    two = CliRunner().invoke(app, ["report", str(home)])
    assert two.exit_code == 2 and "holds 2 run folders" in " ".join(two.output.split())
    empty = CliRunner().invoke(app, ["report", str(tmp_path / "k1" / "run-20261207-010101")])
    assert empty.exit_code == 0, empty.output  # the run itself still reports
