import subprocess
import sys
from pathlib import Path

import pytest

from fedpeft.config import load_config
from fedpeft.errors import FedpeftError
from fedpeft.peft import parse_spec


def test_empty_config_is_the_embedded_default() -> None:
    cfg = load_config()
    assert cfg.model.name == "sentence-transformers/all-MiniLM-L6-v2"
    assert (cfg.data.dataset, cfg.data.num_clients, cfg.data.partition) == ("sst2", 10, "dirichlet")
    assert (cfg.data.alpha, cfg.peft.method, cfg.peft.options) == (0.5, "lora", {})
    lora = parse_spec(cfg.peft.method, cfg.peft.options)
    assert (lora.r, lora.alpha, lora.target_modules) == (8, 16.0, None)  # type: ignore[attr-defined]


def test_toml_file_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[peft]\nr = 4\n[data]\npartition = "iid"\n')
    cfg = load_config(path, ["peft.r=16", "client.lr=0.01", "peft.target_modules=['query']"])
    assert (cfg.peft.options["r"], cfg.client.lr, cfg.data.partition) == (16, 0.01, "iid")
    assert cfg.peft.options["target_modules"] == ["query"]


def test_config_is_frozen() -> None:
    cfg = load_config()
    with pytest.raises(Exception):  # noqa: B017 - pydantic's frozen-instance error
        cfg.client.lr = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("peft.rank=4", "method 'lora': unknown key `peft.rank`"),
        ("nosection.x=1", "unknown key `nosection`"),
        ("peft.r=-1", "`peft.r`: Input should be greater than 0, got -1"),
        ("client.lr='fast'", "`client.lr` should be a positive number or \"auto\", got 'fast'"),
        ("peft.dropout=1.5", "`peft.dropout`"),
        ("peft.method='houlsby'", "no-error"),
        ("peft.size=0", "method 'lora': unknown key `peft.size`"),
        ("run.device='tpu'", "`run.device`: Input should be 'auto', 'cpu' or 'cuda'"),
        ("data.dataset='custom'", "`data.train_file` is required"),
        ("peft.r", "--set expects section.key=value"),
    ],
)
def test_bad_values_name_the_field_and_what_was_found(override: str, expected: str) -> None:
    def validate() -> None:  # the config schema, then the PEFT method's own options
        cfg = load_config(overrides=[override])
        parse_spec(cfg.peft.method, cfg.peft.options)

    if expected == "no-error":
        validate()
        return
    with pytest.raises(FedpeftError) as info:
        validate()
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def test_bad_toml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[peft\nr=")
    with pytest.raises(FedpeftError, match="not valid TOML"):
        load_config(bad)
    with pytest.raises(FedpeftError, match="does not exist"):
        load_config(tmp_path / "missing.toml")


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fedpeft.cli.main", "run", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "COLUMNS": "200"},
    )


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--set", "peft.rank=4"], "unknown key `peft.rank`"),
        (["--set", "data.dataset='mnist'"], "not a known dataset"),
        (["--set", "server.aggregator='fedmagic'"], "not a registered aggregator"),
        (["--set", "peft.method='dora'"], "not a registered PEFT method"),
        (["--set", "peft.method='houlsby'", "--set", "peft.size=-3"], "`peft.size`"),
        (
            ["--set", "data.dataset='custom'", "--set", "data.train_file='/nope/train.csv'"],
            "/nope/train.csv does not exist",
        ),
        (
            ["--set", "model.name='no-such-org/no-such-model'", "--set", "data.train_size=32"],
            "model `no-such-org/no-such-model` could not be loaded",
        ),
        (["--config", "/nope/config.toml"], "does not exist"),
        (["--resume", "/nope/run"], "incomplete or not a fedpeft run"),
    ],
)
def test_cli_user_errors_exit_2_with_one_sentence_and_no_traceback(
    args: list[str], expected: str, tmp_path: Path
) -> None:
    proc = _cli(*args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert expected in " ".join(proc.stderr.split())
    assert "Traceback" not in proc.stderr + proc.stdout
