"""``fedpeft report RUN [--reference OTHER]`` on damaged files: every file the report reads,
in the run or the reference, is verified first; a damaged one is one sentence naming it and
exit code 2, with no traceback and nothing written. A reference on other data or other
classes is compared with a warning; the difference column reads run − reference."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedpeft.cli.main import app
from fedpeft.runtime.local import run_local
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 2-round tiny run (with its classes.json and partitions.json)."""
    return run_local(tiny_config(tmp_path_factory.mktemp("report-files"))).run_dir


def _copy(run: Path, dest: Path) -> Path:
    """The run's logs without its checkpoints: all the report reads."""
    return Path(shutil.copytree(run, dest, ignore=shutil.ignore_patterns("checkpoint")))


def _report(run: Path, reference: Path | None = None) -> tuple[int, str]:
    args = ["report", str(run), "--no-classes"]
    args += ["--reference", str(reference)] if reference is not None else []
    result = CliRunner().invoke(app, args)
    return result.exit_code, " ".join(result.output.split())


def _refused(code: int, output: str, expected: str) -> None:
    assert code == 2, output
    assert expected in output, output
    assert "Traceback" not in output and output.count("error:") == 1, output


DEEP = "[" * 5000 + "]" * 5000  # nested beyond what json and tomllib parse recursively
DAMAGE = {  # what is written to the file: the sentence that refuses it
    "summary.json": [
        ("{bad", "summary.json is not valid JSON; the run folder is damaged"),
        ("", "summary.json is empty"),
        ("[1, 2]", "summary.json holds a JSON list, not an object"),
        (b"\x8f\x00{", "summary.json is not valid JSON (not UTF-8 text)"),
        (DEEP, "summary.json is not valid JSON; the run folder is damaged"),
    ],
    "metrics.jsonl": [
        ('{"round": 1}\n{half a line\n', "metrics.jsonl, line 2 is not valid JSON"),
        ("[1]\n", "metrics.jsonl, line 1 holds a JSON list, not an object"),
        ('{"round": "two"}\n', "line 1 has no round number (`round` is a string)"),
        (DEEP + "\n", "metrics.jsonl, line 1 is not valid JSON"),
    ],
    "classes.json": [
        ("{bad", "classes.json is not valid JSON; delete it and run `fedpeft report"),
        ('{"version": 1}', "classes.json is not a per-class report (it lacks label_names"),
    ],
    "config.toml": [
        ("[run\n", "config.toml is not valid TOML"),
        ("run = 3\n", "config.toml: `run` is a value, not a table"),
        (f"run = {DEEP}\n", "config.toml is not valid TOML: it nests arrays or tables too"),
    ],
    "partitions.json": [
        ("{bad", "partitions.json is not valid JSON"),
        ('{"label_names": "ab"}', "partitions.json: `label_names` is not a list of class names"),
    ],
    "personal.jsonl": [
        ("{bad\n", "personal.jsonl, line 1 is not valid JSON"),
        ('{"round": "1", "client_id": 0}\n', "line 1 has no whole-number `round` and `client_id`"),
        ('{"round": 1, "client_id": 0, "models": []}\n', "`models` that is not an object"),
        (
            '{"round": 1, "client_id": 0, "models": {"global": {"accuracy": "high"}}}\n',
            "has an accuracy that is a string, not a number",
        ),
    ],
    "lr_search.json": [('{"lr": "fast"}', "lr_search.json: `lr` is not a number (string)")],
}
CASES = [(name, *case) for name, cases in DAMAGE.items() for case in cases]


@pytest.mark.parametrize(("name", "content", "message"), CASES)
def test_a_damaged_file_in_the_run_is_one_sentence(
    finished: Path, tmp_path: Path, name: str, content: str | bytes, message: str
) -> None:
    run = _copy(finished, tmp_path / "run")
    path = run / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    _refused(*_report(run), message)
    assert not (run / "report.md").exists() and not (run / "plots").exists()


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [c for c in CASES if c[0] in ("summary.json", "metrics.jsonl", "partitions.json")],
)
def test_a_damaged_reference_is_one_sentence(
    finished: Path, tmp_path: Path, name: str, content: str | bytes, message: str
) -> None:
    run, ref = _copy(finished, tmp_path / "run"), _copy(finished, tmp_path / "ref")
    (ref / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    code, output = _report(run, ref)
    _refused(code, output, message.replace("the run folder is damaged", ""))
    assert str(ref / name) in output
    if name == "summary.json" and "empty" not in message:
        assert "pass a finished fedpeft run as --reference" in output
    assert not (run / "report.md").exists()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda tmp: tmp / "nowhere", "nowhere is not a folder; pass a finished fedpeft run"),
        (lambda tmp: tmp, "has no summary.json; pass a finished fedpeft run as --reference"),
    ],
    ids=["missing", "not-a-run"],
)
def test_a_reference_that_is_not_a_run_is_refused(
    finished: Path, tmp_path: Path, make: Callable[[Path], Path], message: str
) -> None:
    run = _copy(finished, tmp_path / "run")
    _refused(*_report(run, make(tmp_path)), message)


def test_logs_the_report_does_not_read_do_not_stop_it(finished: Path, tmp_path: Path) -> None:
    """``clients.jsonl`` and ``allocations.jsonl`` are not part of a run's report."""
    run = _copy(finished, tmp_path / "run")
    for name in ("clients.jsonl", "allocations.jsonl"):
        (run / name).write_text('{bad\n["a list"]\n{"round": "two"}\n')
    code, output = _report(run)
    assert code == 0, output
    assert (run / "report.md").is_file()


def test_figures_of_the_wrong_type_print_as_missing(finished: Path, tmp_path: Path) -> None:
    """A summary figure that is text, or a personal section of the wrong shape, shows ``—``
    or is left out, never crashing the report."""
    run, ref = _copy(finished, tmp_path / "run"), _copy(finished, tmp_path / "ref")
    summary = json.loads((run / "summary.json").read_text())
    summary |= {"final_accuracy": "0.9", "personal": {"models": ["global"]}}
    (run / "summary.json").write_text(json.dumps(summary))
    metrics = (run / "metrics.jsonl").read_text().splitlines()
    metrics[0] = json.dumps(json.loads(metrics[0]) | {"head_refresh": ["bias"], "eval": [1]})
    (run / "metrics.jsonl").write_text("\n".join(metrics) + "\n")
    code, output = _report(run, ref)
    assert code == 0, output
    text = (run / "report.md").read_text()
    assert "final accuracy **—**" in text
    assert not text.count("\n| accuracy |") and _row(text, "macro-F1")[3] == "+0.0"


def _row(text: str, figure: str) -> list[str]:
    line = next(ln for ln in text.splitlines() if ln.startswith(f"| {figure} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_the_difference_to_the_reference_is_run_minus_reference(
    finished: Path, tmp_path: Path
) -> None:
    """A run 4.3 points below its reference reads −4.3 under "run − reference"."""
    run, ref = _copy(finished, tmp_path / "run"), _copy(finished, tmp_path / "ref")
    mine = json.loads((run / "summary.json").read_text())["final_accuracy"]
    summary = json.loads((ref / "summary.json").read_text())
    (ref / "summary.json").write_text(json.dumps(summary | {"final_accuracy": mine + 0.043}))
    code, output = _report(run, ref)
    assert code == 0, output
    text = (run / "report.md").read_text()
    assert "| figure | this run | reference | run − reference (points) |" in text
    assert _row(text, "accuracy")[3] == "-4.3"
    assert _row(text, "macro-F1")[3] == "+0.0"
    assert "gap" not in text and "Warning" not in text and "other data" not in output


def test_a_reference_on_other_data_or_classes_is_compared_with_a_warning(
    finished: Path, tmp_path: Path
) -> None:
    run, ref = _copy(finished, tmp_path / "run"), _copy(finished, tmp_path / "ref")
    partitions = json.loads((ref / "partitions.json").read_text())
    partitions |= {"dataset": "trec", "label_names": ["ABBR", "DESC"]}
    (ref / "partitions.json").write_text(json.dumps(partitions))
    code, output = _report(run, ref)
    assert code == 0, output
    assert output.count("reference was trained on other data (dataset trec vs this run's") == 1
    assert output.count("the reference has other classes (ABBR, DESC vs this run's negative") == 1
    text = " ".join((run / "report.md").read_text().split())
    assert "- **Warning:** the reference was trained on other data" in text
    assert "comparison may be meaningless" in text
    assert re.search(r"\| accuracy \| [\d.]+ \| [\d.]+ \| [+-][\d.]+ \|", text)
