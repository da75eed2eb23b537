import json
from pathlib import Path

from typer.testing import CliRunner

from fedpeft.cli.main import app


def test_allocate_prints_every_client_and_writes_explanations(tmp_path: Path) -> None:
    out = tmp_path / "alloc.json"
    args = [
        "allocate",
        "--set",
        "model.name='tiny-bert'",
        "--set",
        "data.num_clients=4",
        "--set",
        "data.train_size=64",
        "--set",
        "data.partition='iid'",
        "--set",
        "allocation.deadline_s=60",
        "--explain",
        "--out",
        str(out),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    record = json.loads(out.read_text())
    assert record["policy"] == "utility" and len(record["clients"]) == 4
    for client in record["clients"]:
        assert client["chosen"] is not None
        assert len(client["candidates"]) >= 10  # every catalogue candidate is explained
        assert all(c["status"] and "U" in c for c in client["candidates"])
    assert "lora" in result.output


def test_allocate_bad_allocation_key_is_a_user_error() -> None:
    result = CliRunner().invoke(app, ["allocate", "--set", "allocation.alfa=2"])
    assert result.exit_code == 2
    assert "allocation.alfa" in result.output


def test_allocate_non_finite_number_is_a_user_error() -> None:
    result = CliRunner().invoke(app, ["allocate", "--set", "allocation.alpha=inf"])
    assert result.exit_code == 2
    assert "`allocation.alpha`: Input should be a finite number, got inf" in result.output
    assert "Traceback" not in result.output
