"""One sentence, never a traceback: the cases of issue 14 that reach ``fedpeft run``.

The CLI is driven in-process (typer's runner); ``fedpeft run`` must exit with code 2 and a
one-line ``error:`` for each, before anything is trained or written."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedpeft.cli.main import app
from fedpeft.errors import FedpeftError
from fedpeft.runtime.local import run_local
from tests.conftest import tiny_config

TINY = [
    "model.name='tiny-bert'",
    "data.num_clients=2",
    "run.rounds=1",
    "data.train_size=32",
    "data.eval_size=16",
    "data.partition='iid'",
    "run.threads=1",
]


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["run", *args])
    return result.exit_code, " ".join(result.output.split())


def _sets(*items: str) -> list[str]:
    return [x for item in items for x in ("--set", item)]


def _assert_one_sentence(code: int, output: str, expected: str) -> None:
    assert code == 2, output
    assert expected in output
    assert "Traceback" not in output and output.count("error:") == 1


def test_output_dir_pointing_at_a_file(tmp_path: Path) -> None:
    a_file = tmp_path / "results"
    a_file.write_text("not a folder")
    code, out = _run(*_sets(*TINY, f"run.output_dir={str(a_file)!r}"))
    _assert_one_sentence(code, out, "is a file, not a folder")
    code, out = _run(*_sets(*TINY, f"run.output_dir={str(a_file / 'runs')!r}"))
    _assert_one_sentence(code, out, "lies below")
    assert a_file.read_text() == "not a folder"


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_output_dir_in_a_folder_that_cannot_be_written(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        code, out = _run(*_sets(*TINY, f"run.output_dir={str(locked / 'runs')!r}"))
        _assert_one_sentence(code, out, "is not writable")
    finally:
        locked.chmod(0o700)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("run.rounds=true", "`run.rounds`: Input should be a valid integer, got True"),
        ("server.min_clients=3", "`server.min_clients` is 3 but `data.num_clients` is only 2"),
    ],
)
def test_config_types_and_quorum(tmp_path: Path, override: str, expected: str) -> None:
    code, out = _run(*_sets(*TINY, f"run.output_dir={str(tmp_path)!r}", override))
    _assert_one_sentence(code, out, expected)


def test_non_utf8_training_file(tmp_path: Path) -> None:
    data = tmp_path / "train.csv"
    data.write_bytes(b"text,label\ngood,pos\nbad,neg\nna\xefve,pos\n")
    code, out = _run(
        *_sets(*TINY, "data.dataset='custom'", f"data.train_file={str(data)!r}"),
        "--set",
        f"run.output_dir={str(tmp_path / 'runs')!r}",
    )
    _assert_one_sentence(code, out, "line 4: byte 0xef is not UTF-8")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real 1-round run of the tiny BERT (a few seconds), damaged by the tests below
    in copies."""
    root = tmp_path_factory.mktemp("finished")
    return run_local(tiny_config(root, "run.rounds=1", "data.train_size=32")).run_dir


def _copy(run: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(run, tmp_path / run.name))


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ("checkpoint/*.json", "no checkpoint verifies"),  # every kept round's manifest and state
        ("metrics.jsonl", "metrics.jsonl is not valid JSON lines"),
        ("clients.jsonl", "clients.jsonl is not valid JSON lines"),
        ("config.toml", "is not valid TOML"),
    ],
)
def test_random_bytes_in_a_run_folder_stop_the_resume(
    finished_run: Path, tmp_path: Path, files: str, expected: str
) -> None:
    run = _copy(finished_run, tmp_path)
    junk = bytes(range(128, 256)) * 3  # never valid UTF-8
    damaged = sorted(run.glob(files))
    assert damaged
    for path in damaged:
        path.write_bytes(junk)
    code, out = _run("--resume", str(run), "--set", "run.rounds=2")
    _assert_one_sentence(code, out, expected)
    assert all(path.read_bytes() == junk for path in damaged)  # nothing was rewritten


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ("checkpoint/*.manifest.json", "no checkpoint verifies"),
        ("metrics.jsonl", "metrics.jsonl is not valid JSON lines"),
        ("clients.jsonl", "clients.jsonl is not valid JSON lines"),
    ],
)
def test_json_nested_too_deep_stops_the_resume(
    finished_run: Path, tmp_path: Path, files: str, expected: str
) -> None:
    run = _copy(finished_run, tmp_path)
    for path in run.glob(files):  # a first line nested beyond json's recursion limit
        path.write_text("[" * 5000 + "]" * 5000 + "\n" + path.read_text())
    code, out = _run("--resume", str(run), "--set", "run.rounds=2")
    _assert_one_sentence(code, out, expected)


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda lines: [], "metrics.jsonl records rounds [] but the checkpoint is of round 1"),
        (lambda lines: lines * 2, "metrics.jsonl records rounds [1, 1] but the checkpoint is of"),
        (None, "metrics.jsonl is missing"),
    ],
    ids=["emptied", "a_round_twice", "deleted"],
)
def test_a_metrics_log_that_disagrees_with_the_checkpoint_stops_the_resume(
    finished_run: Path, tmp_path: Path, edit, expected: str
) -> None:
    # every checkpointed round was logged first: a log without it was edited or lost, and
    # resuming on it would give a run whose rounds, summary and report silently lack some
    run = _copy(finished_run, tmp_path)
    metrics = run / "metrics.jsonl"
    before = metrics.read_text().splitlines()
    if edit is None:
        metrics.unlink()
    else:
        metrics.write_text("".join(line + "\n" for line in edit(before)))
    edited = metrics.read_bytes() if metrics.exists() else None
    code, out = _run("--resume", str(run), "--set", "run.rounds=3")
    _assert_one_sentence(code, out, expected)
    assert (metrics.read_bytes() if metrics.exists() else None) == edited  # nothing rewritten


@pytest.mark.parametrize("value", ["x", "2.5", "0"])
def test_a_bad_rounds_on_resume_blames_the_set_not_the_config(
    finished_run: Path, value: str
) -> None:
    code, out = _run("--resume", str(finished_run), "--set", f"run.rounds={value}")
    _assert_one_sentence(code, out, f"--set run.rounds={value}: `run.rounds`:")
    assert "config.toml" not in out


def test_a_resume_with_fewer_rounds_than_done_is_refused_before_any_progress(
    tmp_path: Path,
) -> None:
    run = run_local(tiny_config(tmp_path, "run.rounds=2", "data.train_size=32")).run_dir
    code, out = _run("--resume", str(run), "--set", "run.rounds=1")
    _assert_one_sentence(code, out, "has completed 2 rounds but `run.rounds` is 1")
    assert "tiny-bert" not in out and "2/1" not in out  # no header, no progress bar drawn


def test_run_local_itself_refuses_random_bytes_in_the_checkpoint(
    finished_run: Path, tmp_path: Path
) -> None:
    run = _copy(finished_run, tmp_path)
    for path in (run / "checkpoint").glob("*.json"):
        path.write_bytes(bytes(range(128, 256)))
    with pytest.raises(FedpeftError, match="cannot be resumed: no checkpoint verifies"):
        run_local(tiny_config(tmp_path, "run.rounds=2"), resume=run)


def test_an_error_sentence_is_printed_as_written(capsys: pytest.CaptureFixture[str]) -> None:
    """Square brackets in a refusal (a TOML table, a tier) are text, not rich markup."""
    import typer

    from fedpeft.cli.main import user_errors

    with pytest.raises(typer.Exit), user_errors():
        raise FedpeftError("the file has no [experiment] table, and tier [phone] is unknown.")
    said = " ".join(capsys.readouterr().err.split())
    assert "error: the file has no [experiment] table, and tier [phone] is unknown." in said


def test_relative_input_paths_are_stored_absolute_where_they_were_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run started in one folder and resumed from another reads the same files: the
    run's config.toml holds them absolute (issue: a resume read `data/x.csv` from its own
    working folder, another file or none)."""
    from fedpeft.cli.main import _resolve_config

    monkeypatch.chdir(tmp_path)
    cfg = _resolve_config(
        None,
        [
            "data.dataset='custom'",
            "data.train_file='data/x.csv'",
            "data.eval_file='../y.csv'",
            "profiles.file='tiers.toml'",
            "peft.method='slora'",
            "peft.init_from='runs/stage1'",
        ],
        None,
    )
    assert cfg.data.train_file == str(tmp_path / "data" / "x.csv")
    assert cfg.data.eval_file == str(tmp_path.parent / "y.csv")
    assert cfg.profiles.file == str(tmp_path / "tiers.toml")
    assert cfg.peft.options["init_from"] == str(tmp_path / "runs" / "stage1")


def test_a_resume_of_a_run_with_a_relative_input_path_warns_where_it_reads(
    finished_run: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Run folders written before input paths were stored absolute: the resume says which
    folder a relative path is read from, since it may not be where the run started."""
    from fedpeft.cli.main import _resolve_config

    run = _copy(finished_run, tmp_path)
    config = run / "config.toml"
    old = config.read_text().replace('dataset = "sst2"', 'dataset = "custom"', 1)
    config.write_text(old.replace("[data]\n", '[data]\ntrain_file = "data/x.csv"\n', 1))
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "data").mkdir(parents=True)
    (elsewhere / "data" / "x.csv").write_text("text,label\na,0\nb,1\n")
    monkeypatch.chdir(elsewhere)
    cfg = _resolve_config(None, ["run.rounds=2"], run)
    assert cfg.data.train_file == "data/x.csv"  # its fingerprint is kept: not rewritten
    assert f"`data.train_file` 'data/x.csv' in {config} is a relative path" in caplog.text
    assert str(elsewhere) in caplog.text


@pytest.mark.parametrize("before_2026_12_07", [False, True])
def test_a_project_moved_with_its_data_resumes_once_told_where_the_data_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, before_2026_12_07: bool
) -> None:
    """A run stores its inputs absolute; moved with its data, the run names the missing file
    and the `--set` that points it at the new place, and then resumes (the inputs' paths are
    not in the checkpoint's fingerprint; a checkpoint fingerprinted with them, as before
    2026-12-07, is matched against the run's stored config)."""
    import json
    import shutil

    from fedpeft.config import build_config, read_toml
    from fedpeft.config.loading import accepted_fingerprints

    project = tmp_path / "proj"
    (project / "data").mkdir(parents=True)
    rows = [f"{w} {i},{w}" for i in range(24) for w in ("good", "bad")]
    (project / "data" / "x.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    monkeypatch.chdir(project)
    sets = [*TINY, "data.train_file='data/x.csv'", "data.train_size=40", "run.output_dir='runs'"]
    code, out = _run(*_sets(*sets))
    assert code == 0, out
    (run,) = (project / "runs").iterdir()
    if before_2026_12_07:  # the fingerprint then covered the paths
        _, legacy = accepted_fingerprints(build_config(read_toml(run / "config.toml")))
        for manifest in (run / "checkpoint").glob("*.manifest.json"):
            written = json.loads(manifest.read_text())
            manifest.write_text(json.dumps({**written, "config_fingerprint": legacy}))
    moved = tmp_path / "moved"
    shutil.move(project, moved)
    monkeypatch.chdir(moved)
    run = moved / "runs" / run.name
    code, out = _run("--resume", str(run), "--set", "run.rounds=2")
    _assert_one_sentence(code, out, f"`data.train_file` {project / 'data' / 'x.csv'} (from")
    assert "--set data.train_file='…'` beside `--resume`" in out
    code, out = _run(
        "--resume", str(run), "--set", "run.rounds=2", "--set", "data.train_file='data/x.csv'"
    )
    assert code == 0, out
    assert json.loads((run / "summary.json").read_text())["rounds_completed"] == 2
    assert f'train_file = "{moved / "data" / "x.csv"}"' in (run / "config.toml").read_text()
    code, out = _run("--resume", str(run), "--set", "data.label_column='y'")
    _assert_one_sentence(code, out, "with --resume only `--set run.rounds=N`")
    code, out = _run("--resume", str(run), "--set", "data.eval_file='data/x.csv'")
    _assert_one_sentence(code, out, "the run started without `data.eval_file`")
