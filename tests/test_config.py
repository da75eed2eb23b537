import os
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


def test_a_folder_given_as_the_config_is_named_a_folder(tmp_path: Path) -> None:
    with pytest.raises(FedpeftError, match=r"config file .* is a folder, not a file;"):
        load_config(tmp_path)


def test_a_bad_set_value_is_blamed_on_the_set_not_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[data]\npartition = "iid"\n')
    with pytest.raises(FedpeftError) as info:
        load_config(path, ["data.alpha=abc"])
    assert str(info.value).startswith("--set data.alpha=abc: `data.alpha`:")
    with pytest.raises(FedpeftError) as info:
        load_config(path, ["data.label_names=[1,"])
    message = str(info.value)
    assert message.startswith("--set data.label_names=[1,: `data.label_names`:")
    assert "did not parse as TOML" in message and "read as a string" in message
    path.write_text("[data]\nnum_clients = 0\n")
    with pytest.raises(FedpeftError) as info:  # a bad value in the file is still the file's
        load_config(path, ["data.alpha=0.5"])
    assert str(info.value).startswith(f"config {path}: `data.num_clients`:")


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("peft.rank=4", "method 'lora': unknown key `peft.rank`"),
        ("nosection.x=1", "unknown key `nosection`"),
        ("data.num_client=2", "unknown key `data.num_client`; did you mean `data.num_clients`?"),
        ("data.zzz=2", "unknown key `data.zzz`; valid keys here: dataset, train_file"),
        ("data.label_names=" + repr("x" * 200), "got '" + "x" * 76 + "...."),
        ("peft.r=-1", "`peft.r`: Input should be greater than 0, got -1"),
        ("client.lr='fast'", "`client.lr` should be a positive number or \"auto\", got 'fast'"),
        ("peft.dropout=1.5", "`peft.dropout`"),
        ("peft.method='houlsby'", "no-error"),
        ("peft.size=0", "method 'lora': unknown key `peft.size`"),
        # typed unquoted in bash, `['query','value']` arrives as `[query,value]`: not TOML
        ("peft.target_modules=[query,value]", 'quote the whole --set, e.g. --set "peft.'),
        ("run.device='tpu'", "`run.device`: Input should be 'auto', 'cpu' or 'cuda'"),
        ("data.dataset='custom'", "`data.train_file` is required"),
        ("data.eval_file='mine.csv'", "read only beside `data.train_file`"),
        ("peft.r", "--set expects section.key=value"),
        # strict types: a bool is not a count, a count is not a bool, 2.0 is not an int
        ("run.rounds=true", "`run.rounds`: Input should be a valid integer, got True"),
        ("run.rounds=2.0", "`run.rounds`: Input should be a valid integer, got 2.0"),
        ("simulation.devices=1", "`simulation.devices`: Input should be a valid boolean, got 1"),
        ("peft.r=true", "`peft.r`: Input should be a valid integer, got True"),
        ("client.lr=true", '`client.lr` should be a positive number or "auto", got True'),
        ("client.lr=1", "no-error"),  # an int is a valid float
        ("server.min_clients=11", "`server.min_clients` is 11 but `data.num_clients` is only 10"),
        ("server.min_clients=10", "no-error"),
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


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("allocation.alpha=inf", "allocation.alpha"),
        ("allocation.deadline_s=inf", "allocation.deadline_s"),
        ("allocation.gain.prior_count=nan", "allocation.gain.prior_count"),
        ("allocation.cost_weights.time=inf", "allocation.cost_weights.time"),
    ],
)
def test_allocation_rejects_non_finite_numbers(override: str, field: str) -> None:
    with pytest.raises(FedpeftError) as info:
        load_config(overrides=[override])
    assert f"`{field}`: Input should be a finite number" in str(info.value)
    assert "\n" not in str(info.value)


def test_allocation_is_a_typed_frozen_section() -> None:
    cfg = load_config(overrides=["allocation.enabled=true", "allocation.deadline_s=30"])
    assert cfg.allocation.enabled and cfg.allocation.deadline_s == 30.0
    assert cfg.allocation.catalogue.lora_ranks == [4, 8, 16]  # the defaults fill in
    with pytest.raises(Exception):  # noqa: B017 - pydantic's frozen-instance error
        cfg.allocation.alpha = 2.0  # type: ignore[misc]


def test_bad_toml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[peft\nr=")
    with pytest.raises(FedpeftError, match="not valid TOML"):
        load_config(bad)
    bad.write_text("[data]\ntrain_size = 64\ntrain_size = 32\n")
    with pytest.raises(FedpeftError, match=r"line 3.*; `train_size` is already set above"):
        load_config(bad)
    with pytest.raises(FedpeftError, match="does not exist"):
        load_config(tmp_path / "missing.toml")
    deep = "[" * 5000 + "]" * 5000  # nested beyond tomllib's recursion limit
    bad.write_text(f"[run]\nname = {deep}\n")
    with pytest.raises(FedpeftError, match="not valid TOML: it nests arrays or tables too"):
        load_config(bad)
    with pytest.raises(FedpeftError, match="`run.rounds`: Input should be a valid integer"):
        load_config(overrides=[f"run.rounds={deep}"])  # read as the text it is


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fedpeft.cli.main", "run", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
        env={
            "HF_HUB_OFFLINE": "1",
            "HF_HOME": str(cwd / "hf-home"),  # an empty cache: no hub model is there
            "PATH": "/usr/bin:/bin",
            "COLUMNS": "200",
            # a worktree's src/ on the path tests that checkout's code, not the installed one
            **{
                k: os.pathsep.join(map(os.path.abspath, v.split(os.pathsep)))
                for k, v in os.environ.items()
                if k == "PYTHONPATH"
            },
        },
    )


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--set", "peft.rank=4"], "unknown key `peft.rank`"),
        (["--set", "data.dataset='mnist'"], "not a known dataset"),
        (["--set", "server.aggregator='fedmagic'"], "not a registered aggregator"),
        (["--set", "peft.method='no_such_method'"], "not a registered PEFT method"),
        (["--set", "peft.method='houlsby'", "--set", "peft.size=-3"], "`peft.size`"),
        (
            ["--set", "data.dataset='custom'", "--set", "data.train_file='/nope/train.csv'"],
            "/nope/train.csv does not exist",
        ),
        (
            ["--set", "model.name='no-such-org/no-such-model'", "--set", "data.train_size=32"],
            "model `no-such-org/no-such-model` is not in the local Hugging Face cache",
        ),
        *(
            (
                ["--set", f"model.name='{name}'", "--set", "data.dataset='cifar10'"],
                f"model `{hub_id}` is not in the local Hugging Face cache and the hub is offline",
            )
            for name, hub_id in [
                ("vit-base", "google/vit-base-patch16-224"),
                ("clip-base", "openai/clip-vit-base-patch32"),
            ]
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


def test_every_section_survives_the_run_folders_toml() -> None:
    """config.toml is what a resume (and a Flower node) reads back: every section, with
    non-default values, must come back equal through TOML."""
    import tomllib

    from fedpeft.config import build_config, config_to_toml, load_config

    cfg = load_config(
        overrides=[
            "compression.bits_up='adaptive'",
            "compression.adaptive_bits=[8, 4]",
            "compression.topk=0.1",
            "server.aggregator_options={trim_fraction=0.2}",
            "allocation.enabled=true",
            "allocation.tiers={a={method='lora',options={r=4}}}",
            "profiles.mix=['high','low']",
            "data.num_clients=2",
        ]
    )
    assert build_config(tomllib.loads(config_to_toml(cfg))) == cfg


def test_data_files_are_refused_where_they_would_be_ignored() -> None:
    with pytest.raises(FedpeftError, match="'bccd' reads its own files"):
        load_config(overrides=["data.dataset='bccd'", "data.train_file='boxes.csv'"])
    with pytest.raises(FedpeftError, match="read only beside `data.train_file`"):
        load_config(overrides=["data.dataset='squad'", "data.eval_file='dev.json'"])
    cfg = load_config(overrides=["data.dataset='squad'", "data.train_file='mine.json'"])
    assert cfg.data.train_file == "mine.json"


def test_a_train_file_given_alone_is_the_users_own_data() -> None:
    """Without `data.dataset` a file of one's own means `custom`, not the default SST-2 (which
    would ignore it); naming a built-in set beside it is refused."""
    cfg = load_config(overrides=["data.train_file='mine.csv'"])
    assert cfg.data.dataset == "custom" and cfg.data.train_file == "mine.csv"
    with pytest.raises(FedpeftError, match="'sst2' reads its own files"):
        load_config(overrides=["data.dataset='sst2'", "data.train_file='mine.csv'"])
