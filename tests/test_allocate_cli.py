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
        "--set",
        "allocation.policy='utility'",
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
        assert len(client["candidates"]) == 3 * 2  # every catalogue candidate is explained
        parts = set(client["candidates"][0]["parts"])
        assert {"R.capacity", "R.credit", "C.time", "C.bytes", "C.risk"} <= parts
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


def test_a_client_nothing_fits_is_told_why_on_the_console(tmp_path: Path) -> None:
    """A tier too small for every candidate: the table shows '-', and a line says why."""
    tiers = tmp_path / "small.toml"
    tiers.write_text('[phone]\nbase = "low"\nmemory_bytes = "10 MiB"\n')
    sets = [
        "model.name='tiny-bert'",
        "data.num_clients=2",
        "data.train_size=64",
        f"profiles.file={str(tiers)!r}",
        "profiles.mix=['phone', 'phone']",
    ]
    result = CliRunner().invoke(app, ["allocate", *[x for s in sets for x in ("--set", s)]])
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "client 0 (phone) gets nothing: no candidate fits" in said
    assert "client 1 (phone) gets nothing" in said and "breaks memory" in said
