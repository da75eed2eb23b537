"""``fedpeft predict`` driven as a person runs it, for the predict tests (texts, images,
built-in datasets): its exit code and output, the one-sentence refusal, the CSV it wrote."""

from __future__ import annotations

import csv
from pathlib import Path

from typer.testing import CliRunner

from fedpeft.cli.main import app


def predict_cli(*args: str | Path) -> tuple[int, str, str]:
    """(exit code, stdout, stdout + stderr with whitespace collapsed)."""
    result = CliRunner().invoke(app, ["predict", *map(str, args)])
    return result.exit_code, result.stdout, " ".join(result.output.split())


def refused(code: int, output: str, expected: str) -> None:
    """Exit code 2, the expected sentence, one ``error:`` and no traceback."""
    assert code == 2, output
    assert expected in output, output
    assert "Traceback" not in output and output.count("error:") == 1, output


def csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))
