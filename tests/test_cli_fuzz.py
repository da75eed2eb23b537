"""The whole ``fedpeft run`` validation path under a fuzzer of configs and data files.

Each example is a TOML config (a valid tiny run with random keys replaced by random values,
unknown keys added, or its text mangled) and a CSV/TSV/JSONL file (random rows, labels of
every kind, stray bytes). ``fedpeft run --config`` goes through the real CLI in-process up to
the point where training would start: ``build_task`` (data read, tokenised, partitioned; the
model built) runs for real, then the runner stops. Anything but exit code 2 with one
``error:`` line, or reaching training, is a failure: no traceback ever reaches a user.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytest
import tomli_w
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import fedpeft.runtime.local as local_runtime
from fedpeft.cli.main import app
from fedpeft.server.task import build_task

# FEDPEFT_FUZZ_EXAMPLES=2000 FEDPEFT_FUZZ_EXPLORE=1 searches longer, with fresh randomness
EXAMPLES = int(os.environ.get("FEDPEFT_FUZZ_EXAMPLES", "120"))
EXPLORE = os.environ.get("FEDPEFT_FUZZ_EXPLORE") == "1"

# ---- the config space ------------------------------------------------------------------
KEYS: dict[str, list[str]] = {  # every section's keys, plus a few methods' options
    "run": ["name", "seed", "rounds", "output_dir", "device", "threads"],
    "model": ["name", "max_length", "image_size", "task"],
    "data": [
        "dataset", "train_file", "eval_file", "text_column", "label_column", "label_names",
        "train_size", "eval_size", "num_clients", "partition", "alpha", "classes_per_client",
        "min_partition_size",
    ],
    "peft": ["method", "r", "alpha", "dropout", "target_modules", "layers", "size",
             "num_virtual_tokens", "rank_pattern"],
    "client": ["epochs", "steps", "batch_size", "lr", "weight_decay", "proximal_mu"],
    "server": ["fraction", "min_clients", "aggregator", "optimizer", "server_lr", "momentum",
               "aggregator_options", "clip_norm", "proxy_size", "mode", "buffer_size",
               "staleness_exponent", "max_concurrency"],
    "eval": ["batch_size"],
    "profiles": ["mix", "file"],
    "simulation": ["devices", "availability", "thread_cap"],
    "allocation": ["enabled", "policy", "alpha", "deadline_s", "bits_up", "uniform", "tiers"],
}  # fmt: skip
NAMES = {  # plausible values for the keys that name things
    "model.name": ["tiny-bert", "tiny-llama", "tiny-vit", "tiny-clip", "no-org/no-model", ""],
    "data.dataset": ["custom", "sst2", "ag_news", "cifar10", "mnist"],
    "data.partition": ["iid", "dirichlet", "pathological", "random"],
    "peft.method": ["lora", "prompt", "prefix", "ia3", "houlsby", "bitfit", "head", "dora"],
    "server.aggregator": ["fedavg", "trimmed_mean", "krum", "layerwise", "clustered", "nope"],
    "model.task": ["auto", "classify", "instruct", "regress"],
}
SMALL_INTS = st.one_of(
    st.integers(-3, 70), st.sampled_from([0, 2**31, 2**63 - 1, -(2**63), 10**12])
)
FLOATS = st.one_of(
    st.floats(-10, 10), st.sampled_from([0.0, 1e-300, 1e300, math.inf, -math.inf, math.nan])
)
TEXT = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12)
SCALARS = st.one_of(SMALL_INTS, FLOATS, st.booleans(), TEXT)
VALUES = st.one_of(
    SCALARS,
    st.lists(st.one_of(st.integers(-2, 5), TEXT), max_size=3),
    st.dictionaries(TEXT, SCALARS, max_size=3),
)


def _value(key: str) -> st.SearchStrategy[Any]:
    if key in NAMES:
        return st.one_of(st.sampled_from(NAMES[key]), VALUES)
    if key in ("data.train_size", "data.eval_size", "model.max_length"):
        return st.one_of(st.integers(-2, 80), VALUES)  # a huge subset is slow, not wrong
    return VALUES


@st.composite
def configs(draw: st.DrawFn, train: str) -> str:
    """A tiny valid config with 0–3 keys replaced, maybe an unknown key, maybe mangled."""
    raw: dict[str, Any] = {
        "run": {"rounds": 1, "threads": 1, "output_dir": str(Path(train).parent / "runs")},
        "model": {"name": "tiny-bert", "max_length": 16},
        "data": {"dataset": "custom", "train_file": train, "num_clients": 2,
                 "partition": "iid", "min_partition_size": 1},
        "client": {"batch_size": 4},
    }  # fmt: skip
    for _ in range(draw(st.integers(0, 3))):
        section = draw(st.sampled_from(sorted(KEYS)))
        key = draw(st.sampled_from(KEYS[section]))
        raw.setdefault(section, {})[key] = draw(_value(f"{section}.{key}"))
    if draw(st.integers(0, 9)) == 0:
        raw.setdefault(draw(st.sampled_from(["run", "zzz"])), {})[draw(TEXT) or "x"] = 1
    text = tomli_w.dumps(raw)
    if draw(st.integers(0, 9)) == 0:  # mangled TOML: cut, or a random byte put in
        cut = draw(st.integers(0, len(text)))
        text = text[:cut] + draw(st.sampled_from(["", "[", "=", '"', "\x00", "\ud7ff"]))
    return text


LABELS = st.one_of(
    st.sampled_from(["pos", "neg", "1", "1.0", "2", "10", "nan", "", " ", "NaN"]),
    st.integers(-2, 12),
    st.sampled_from([1.0, 2.5, math.nan, math.inf, True, None]),
    st.lists(st.integers(0, 2), max_size=2),
)


@st.composite
def data_files(draw: st.DrawFn) -> tuple[str, bytes]:
    """(suffix, bytes) of a CSV, TSV or JSONL file of random rows, maybe with stray bytes."""
    suffix = draw(st.sampled_from([".csv", ".tsv", ".jsonl", ".txt"]))
    rows = draw(st.lists(st.tuples(TEXT, LABELS), min_size=0, max_size=30))
    text_col = draw(st.sampled_from(["text", "text", "review"]))
    if suffix == ".jsonl":
        body = "".join(json.dumps({text_col: t, "label": y}) + "\n" for t, y in rows)
    else:
        sep = "\t" if suffix == ".tsv" else ","
        body = f"{text_col}{sep}label\n" + "".join(
            f'"{t.replace(chr(34), "")}"{sep}{y}\n' for t, y in rows
        )
    data = body.encode()
    if draw(st.integers(0, 5)) == 0:
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.binary(min_size=1, max_size=6)) + data[at:]
    if draw(st.booleans()):  # enough good rows that many examples reach the model
        good = "".join(f"good film {i}{',pos' if i % 2 else ',neg'}\n" for i in range(12))
        data = (f"text,label\n{good}".encode() if suffix == ".csv" else data) or data
    return suffix, data


# ---- the run, stopped where training would start ---------------------------------------
class TrainingWouldStart(Exception):
    """Raised by the runner once the task is built: validation is over."""


@pytest.fixture
def stop_before_training(monkeypatch: pytest.MonkeyPatch) -> None:
    def build_then_stop(cfg: Any, **_: Any) -> None:
        threads = torch.get_num_threads()
        try:
            build_task(cfg)  # the real data, tokeniser, partitions and model
        finally:
            torch.set_num_threads(threads)  # a fuzzed run.threads must not leak
        raise TrainingWouldStart

    monkeypatch.setattr(local_runtime, "run_local", build_then_stop)


@pytest.mark.usefixtures("stop_before_training")
@settings(
    max_examples=EXAMPLES,
    derandomize=not EXPLORE,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_fedpeft_run_never_shows_a_traceback(tmp_path: Path, data: st.DataObject) -> None:
    suffix, content = data.draw(data_files(), label="data file")
    train = tmp_path / f"train{suffix}"
    train.write_bytes(content)
    config = tmp_path / "config.toml"
    config.write_bytes(data.draw(configs(str(train)), label="config").encode("utf-8", "replace"))
    result = CliRunner().invoke(app, ["run", "--config", str(config)])
    if isinstance(result.exception, TrainingWouldStart):
        event("reached training")
        return
    output = result.output
    assert result.exit_code == 2, f"{output}\n{_traceback(result)}"
    assert output.count("error:") == 1 and "Traceback" not in output, output
    message = output[output.index("error:") :].strip()
    assert "\n" not in message, message
    event(f"refused: {' '.join(message.replace(str(tmp_path), '').split()[1:4])}")


def _traceback(result: Any) -> str:
    import traceback

    if result.exc_info is None:
        return ""
    return "".join(traceback.format_exception(*result.exc_info))


def test_the_fuzzer_reaches_training(tmp_path: Path, stop_before_training: None) -> None:
    """The base case of the fuzzer is a valid run: the stop is reached, not an error."""
    train = tmp_path / "train.csv"
    train.write_text("text,label\n" + "".join(f"film {i},{i % 2}\n" for i in range(12)))
    config = tmp_path / "config.toml"
    raw = {
        "run": {"rounds": 1, "threads": 1, "output_dir": str(tmp_path / "runs")},
        "model": {"name": "tiny-bert", "max_length": 16},
        "data": {"dataset": "custom", "train_file": str(train), "num_clients": 2,
                 "partition": "iid", "min_partition_size": 1},
    }  # fmt: skip
    config.write_text(tomli_w.dumps(raw))
    result = CliRunner().invoke(app, ["run", "--config", str(config)])
    assert isinstance(result.exception, TrainingWouldStart), result.output
