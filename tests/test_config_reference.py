"""The configuration reference (docs/config.md) and `fedpeft config`: generated from the schema,
complete, and what `fedpeft config` prints is a config `fedpeft run` reads back unchanged."""

import re
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedpeft.cli.main import app
from fedpeft.config import ExperimentConfig
from fedpeft.config.reference import reference_markdown, sections, type_text
from fedpeft.data import dataset_names

ROOT = Path(__file__).resolve().parents[1]


def test_committed_reference_is_the_schemas() -> None:
    committed = (ROOT / "docs" / "config.md").read_text(encoding="utf-8")
    assert committed == reference_markdown(), (
        "docs/config.md is out of date: python -m fedpeft.config.reference > docs/config.md"
    )


def test_every_key_says_what_it_does() -> None:
    missing = [
        f"{table}.{name}"
        for table, _, rows in sections()
        for name, info in rows
        if not (info.description or "").strip()
    ]
    assert not missing, f"give these keys a Field(description=...): {missing}"


def test_every_table_and_key_is_in_the_reference() -> None:
    page = reference_markdown()
    tables = re.findall(r"^## `\[([a-z_.]+)\]`$", page, re.M)
    assert [t for t in tables if "." not in t] == list(ExperimentConfig.model_fields)
    assert "allocation.gain" in tables and "allocation.cost_weights" in tables
    for table, _, rows in sections():
        body = page.split(f"## `[{table}]`\n", 1)[1].split("\n## ", 1)[0]
        for name, _ in rows:
            assert f"| `{name}` |" in body, f"{table}.{name}"


def test_dataset_key_names_every_registered_dataset() -> None:
    text = ExperimentConfig.model_fields["data"].annotation.model_fields["dataset"].description
    assert text is not None
    named = set(re.findall(r"[a-z0-9_]+", text))
    assert set(dataset_names()) <= named, set(dataset_names()) - named


def test_types_read_as_a_person_would() -> None:
    page = reference_markdown()
    assert "| `rounds` | `12` | int > 0 |" in page
    assert "| `label_names` | `unset` | list of str \\| unset, length ≥ 2 |" in page
    assert "list of float > 0.0, ≤ 1.0" in page  # bounds inside a list's item type
    assert type_text(int | None) == "int | unset"


@pytest.mark.parametrize("method", ["lora", "houlsby", "prompt", "vera", "sparse"])
def test_printed_config_reads_back_unchanged(tmp_path: Path, method: str) -> None:
    first = CliRunner().invoke(
        app, ["config", "--set", f"peft.method='{method}'", "--set", "data.num_clients=3"]
    )
    assert first.exit_code == 0, first.output
    raw = tomllib.loads(first.output)
    assert raw["data"]["num_clients"] == 3
    assert raw["peft"]["method"] == method and len(raw["peft"]) > 1  # its options, filled in
    path = tmp_path / "resolved.toml"
    path.write_text(first.output, encoding="utf-8")
    second = CliRunner().invoke(app, ["config", "--config", str(path)])
    assert second.exit_code == 0, second.output
    assert second.output == first.output


@pytest.mark.parametrize(
    ("setting", "words"),
    [
        ("run.bogus=1", "unknown key `run.bogus`"),
        ("peft.r=-1", "`peft.r`"),
        ("data.dataset='nope'", "not a known dataset"),
    ],
)
def test_bad_configs_get_one_sentence_and_exit_2(setting: str, words: str) -> None:
    result = CliRunner().invoke(app, ["config", "--set", setting])
    assert result.exit_code == 2
    assert words in result.output and "Traceback" not in result.output


def test_reference_option_prints_the_page() -> None:
    result = CliRunner().invoke(app, ["config", "--reference"])
    assert result.exit_code == 0
    assert result.output == reference_markdown()


def test_readme_names_each_section_once() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = readme.split("## Configuring a run", 1)[1].split("\n### ", 1)[0]
    rows = re.findall(r"^\| `([a-z_]+)` \|", table, re.M)
    assert len(rows) == len(set(rows)), f"README's configuration table repeats a section: {rows}"
    assert set(rows) == set(ExperimentConfig.model_fields)
    assert "docs/config.md" in table


def test_a_tilde_in_a_path_key_is_the_home_folder() -> None:
    from fedpeft.config import load_config

    cfg = load_config(
        overrides=[
            "data.dataset='custom'",
            "data.train_file='~/train.csv'",
            "data.eval_file='~/eval.csv'",
            "run.output_dir='~/runs'",
            "profiles.file='~/tiers.toml'",
        ]
    )
    home = str(Path.home())
    for value in (cfg.data.train_file, cfg.data.eval_file, cfg.run.output_dir, cfg.profiles.file):
        assert value is not None and value.startswith(home) and "~" not in value
    assert load_config().run.output_dir == "runs"  # relative paths stay relative
