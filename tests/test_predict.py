"""``fedpeft predict``: a finished run's final global model on new texts, through the CLI.

Tiny real runs (tiny-bert, a noisy 3-class CSV with string labels in a custom class order)
are trained once per method; predicting the run's own eval file must give the run's final
accuracy, macro-F1 and confusion matrix exactly — which the fresh, untrained model does not
(checked, so the comparison can tell the final state from another). Damaged runs, bad
files and bad options end with exit code 2 and one sentence."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fedpeft.cli.main import app
from fedpeft.config import load_config
from fedpeft.runtime.local import run_local
from fedpeft.server.classes import class_report
from tests.conftest import tiny_config
from tests.predict_cli import csv_rows, predict_cli, refused

NAMES = ["dog", "cat", "bird"]  # the run's classes in `data.label_names` order (not sorted)
WORDS = {
    "dog": ["bark", "woof", "puppy", "fetch", "leash"],
    "cat": ["meow", "purr", "kitten", "whisker", "litter"],
    "bird": ["tweet", "wing", "feather", "nest", "beak"],
}
SHARED = ["the", "a", "pet", "home", "little", "garden", "sleeps", "runs", "today", "happy"]
CUSTOM = ["data.dataset='custom'", f"data.label_names={NAMES!r}"]


def _write(path: Path, n: int, rng: np.random.Generator) -> Path:
    """``n`` rows of one class word among five shared ones, a quarter relabelled at random
    (so a trained tiny model is neither perfect nor the fresh one)."""
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for _ in range(n):
            label = NAMES[rng.integers(3)]
            words = [*rng.choice(WORDS[label], 1), *rng.choice(SHARED, 5)]
            rng.shuffle(words)
            if rng.random() < 0.25:
                label = NAMES[rng.integers(3)]
            w.writerow([" ".join(words), label])
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("predict-data")
    rng = np.random.default_rng(0)
    _write(folder / "train.csv", 96, rng)
    _write(folder / "eval.csv", 40, rng)
    return folder


def _train(tmp: Path, data: Path, *extra: str) -> Path:
    files = [f"data.train_file={str(data / 'train.csv')!r}"]
    files.append(f"data.eval_file={str(data / 'eval.csv')!r}")
    return run_local(tiny_config(tmp, *CUSTOM, *files, *extra)).run_dir


METHODS = {
    "lora": ["peft.method='lora'"],
    "houlsby": ["peft.method='houlsby'"],  # fedpeft's bottleneck adapter
    "prompt": ["peft.method='prompt'"],
    "ia3": ["peft.method='ia3'"],
    "head": ["peft.method='head'"],  # the run evaluated through its frozen-prefix cache
    # bf16 autocast with the frozen linears stored in bf16 (run.frozen_bf16)
    "lora-bf16": ["peft.method='lora'", "run.autocast='bf16'"],
}


@pytest.fixture(scope="module", params=list(METHODS))
def run(
    request: pytest.FixtureRequest, data: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A finished 2-round run of one of ``METHODS`` on the CSV files."""
    return _train(tmp_path_factory.mktemp(request.param), data, *METHODS[request.param])


@pytest.fixture(scope="module")
def lora_run(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _train(tmp_path_factory.mktemp("lora-errors"), data)


def test_predicting_the_eval_file_gives_the_runs_final_figures(run: Path, tmp_path: Path) -> None:
    eval_file = Path(_config_value(run, "eval_file"))
    out = tmp_path / "preds.csv"
    code, _, output = predict_cli(run, "--file", eval_file, "--out", out)
    assert code == 0, output
    rows, given = csv_rows(out), csv_rows(eval_file)
    assert [r["text"] for r in rows] == [r["text"] for r in given]
    assert list(rows[0]) == ["text", "label", "predicted", "probability"]
    labels = np.asarray([NAMES.index(r["label"]) for r in rows])
    preds = np.asarray([NAMES.index(r["predicted"]) for r in rows])
    summary = json.loads((run / "summary.json").read_text())
    classes = json.loads((run / "classes.json").read_text())
    assert float((labels == preds).mean()) == summary["final_accuracy"]
    assert class_report(labels, preds, NAMES).confusion == classes["confusion"]
    assert classes["label_names"] == NAMES
    assert f"accuracy {summary['final_accuracy']:.4f}" in output
    assert f"macro-F1 {summary['final_macro_f1']:.4f}" in output
    assert "(40 labelled rows)" in output  # labels that are class names: no ids note
    assert all(1 / 3 <= float(r["probability"]) <= 1 for r in rows)  # the top class's
    # the comparison tells the final state from another: the fresh model predicts otherwise
    assert (
        class_report(labels, _fresh_predictions(run, eval_file), NAMES).confusion
        != (classes["confusion"])
    )


def _config_value(run: Path, key: str) -> str:
    import tomllib

    return str(tomllib.loads((run / "config.toml").read_text())["data"][key])


def _fresh_predictions(run: Path, eval_file: Path) -> np.ndarray:
    """The classes the run's model predicts with its adapter as initialised (no state
    loaded): what a predictor that loaded the wrong state would give."""
    from fedpeft.server.evaluate import predict_logits
    from fedpeft.server.task import build_task
    from fedpeft.server.trained import open_finished, text_data

    finished = open_finished(run)
    task = build_task(finished.cfg, text_data(finished, [r["text"] for r in csv_rows(eval_file)]))
    logits = predict_logits(task.model, task.data.eval, task.eval_batch_size, task.device)
    return logits.argmax(-1).numpy()


def test_text_prints_the_runs_class_names(lora_run: Path) -> None:
    code, stdout, output = predict_cli(lora_run, "--text", "woof bark puppy", "--text", "a nest")
    assert code == 0, output
    lines = stdout.splitlines()
    assert len(lines) == 2
    for line in lines:
        name, p = line.split("\t")
        assert name in NAMES and 1 / 3 <= float(p) <= 1
    code, stdout, output = predict_cli(lora_run, "--text", "meow", "--top-k", "3")
    assert code == 0, output
    cells = stdout.strip().split("\t")
    assert sorted(cells[0::2]) == sorted(NAMES)
    probs = [float(p) for p in cells[1::2]]
    assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1, abs=1e-3)


def test_a_file_without_out_is_shown_with_its_count(lora_run: Path, data: Path) -> None:
    code, _, output = predict_cli(lora_run, "--file", data / "eval.csv", "--top-k", "2")
    assert code == 0, output
    assert "the first 10 of 40 rows" in output and "next" in output


def test_another_text_column_and_no_labels(lora_run: Path, tmp_path: Path) -> None:
    path = tmp_path / "new.jsonl"
    path.write_text("".join(json.dumps({"sentence": t}) + "\n" for t in ["purr", "beak nest"]))
    code, _, output = predict_cli(lora_run, "--file", path)
    refused(code, output, "has no column `text` (found: `sentence`); name the text column with")
    out = tmp_path / "out" / "preds.csv"
    code, _, output = predict_cli(
        lora_run, "--file", path, "--text-column", "sentence", "--out", out
    )
    assert code == 0, output
    rows = csv_rows(out)
    assert [r["sentence"] for r in rows] == ["purr", "beak nest"]
    assert all(r["predicted"] in NAMES for r in rows) and "accuracy" not in output


def test_a_jsonl_file_whose_first_row_has_no_label_is_still_scored(
    lora_run: Path, tmp_path: Path
) -> None:
    """JSON rows need not all hold the label key: the rows that do are scored, not the
    whole file left unscored because its first row lacks it."""
    rows = [
        {"text": "purr"},
        {"text": "woof bark", "label": "dog"},
        {"text": "beak", "label": "bird"},
    ]
    path = tmp_path / "new.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "preds.csv"
    code, _, output = predict_cli(lora_run, "--file", path, "--out", out)
    assert code == 0, output
    assert "against `label` (2 labelled rows)" in output, output
    assert [r["label"] for r in csv_rows(out)] == ["", "dog", "bird"]


def _copy(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "run"))


def test_a_tampered_checkpoint_is_refused(lora_run: Path, tmp_path: Path) -> None:
    run = _copy(lora_run, tmp_path)
    tensors = run / "checkpoint" / "round-000002.safetensors"
    raw = bytearray(tensors.read_bytes())
    raw[-5] ^= 0x01  # one bit of one adapter value
    tensors.write_bytes(bytes(raw))
    code, _, output = predict_cli(run, "--text", "woof")
    refused(code, output, "cannot be used for prediction: the checkpoint of its last round, 2,")
    assert "round-000002.safetensors does not match its sha256" in output  # round 1 not used


def test_the_per_class_report_uses_the_final_state_or_none(lora_run: Path, tmp_path: Path) -> None:
    """`fedpeft report` rebuilds a missing classes.json from the final round only: with
    that round damaged it refuses, instead of reporting round 1's model as the run's."""
    run = _copy(lora_run, tmp_path)
    want = json.loads((run / "classes.json").read_text())
    (run / "classes.json").unlink()
    result = CliRunner().invoke(app, ["report", str(run)])
    assert result.exit_code == 0, result.output
    assert json.loads((run / "classes.json").read_text()) == want  # the final state's figures
    (run / "classes.json").unlink()
    tensors = run / "checkpoint" / "round-000002.safetensors"
    raw = bytearray(tensors.read_bytes())
    raw[-5] ^= 0x01
    tensors.write_bytes(bytes(raw))
    result = CliRunner().invoke(app, ["report", str(run)])
    output = " ".join(result.output.split())
    refused(result.exit_code, output, "cannot be evaluated per class: the checkpoint of its")
    assert "no classes.json was written" in output and not (run / "classes.json").exists()


def test_a_resume_interrupted_after_a_finish_is_refused(lora_run: Path, tmp_path: Path) -> None:
    """A finished 2-round run resumed to 3 rounds and stopped before its new summary: round
    3's checkpoint verifies, but the run is not finished; predict and the per-class report
    refuse it rather than use round 3 as the run's final model."""
    run = _copy(lora_run, tmp_path)
    old = (run / "summary.json").read_text()
    run_local(load_config(run / "config.toml", ["run.rounds=3"]), resume=run)
    (run / "summary.json").write_text(old)  # as a stop after round 3's checkpoint leaves it
    code, _, output = predict_cli(run, "--text", "woof")
    expected = "it is not finished (summary.json says 2 rounds completed, metrics.jsonl ends"
    refused(code, output, expected)
    assert "finish it with `fedpeft run --resume" in output
    (run / "classes.json").unlink()
    result = CliRunner().invoke(app, ["report", str(run)])
    refused(result.exit_code, " ".join(result.output.split()), expected)
    assert not (run / "classes.json").exists()


@pytest.mark.parametrize(
    ("summary", "expected"),
    [
        ("{bad", "summary.json is not valid JSON; the run cannot be used for prediction, nothing"),
        ("", "summary.json is empty; the run cannot be used for prediction"),
        ("[2]", "summary.json holds a JSON list, not an object; the run cannot be used for"),
        ('{"rounds_completed": "2"}', "its summary.json has no round count (`rounds_completed`"),
    ],
)
def test_a_damaged_summary_is_one_sentence(
    lora_run: Path, tmp_path: Path, summary: str, expected: str
) -> None:
    run = _copy(lora_run, tmp_path)
    (run / "summary.json").write_text(summary)
    code, _, output = predict_cli(run, "--text", "woof")
    refused(code, output, expected)
    assert "None" not in output


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("partitions.json", "its partitions.json does not name the run's classes"),
        ("metrics.jsonl", "its metrics.jsonl does not say which round was its last"),
        ("checkpoint/round-000002.manifest.json", "is damaged (its manifest is unreadable)"),
        ("adapter/config.json", "but adapter/config.json's id2label gives ['(unreadable)']"),
    ],
)
def test_json_nested_too_deep_is_one_sentence(
    lora_run: Path, tmp_path: Path, name: str, expected: str
) -> None:
    run = _copy(lora_run, tmp_path)
    (run / name).write_text("[" * 5000 + "]" * 5000)  # beyond json's recursion limit
    code, _, output = predict_cli(run, "--text", "woof")
    refused(code, output, expected)


def test_reordered_class_names_are_refused(lora_run: Path, tmp_path: Path) -> None:
    run = _copy(lora_run, tmp_path)
    partitions = json.loads((run / "partitions.json").read_text())
    partitions["label_names"] = ["cat", "dog", "bird"]
    (run / "partitions.json").write_text(json.dumps(partitions))
    code, _, output = predict_cli(run, "--text", "woof")
    refused(code, output, "names the classes ['cat', 'dog', 'bird'] but config.toml's data.label")


def test_an_edited_config_is_refused(lora_run: Path, tmp_path: Path) -> None:
    run = _copy(lora_run, tmp_path)
    config = run / "config.toml"
    config.write_text(config.read_text().replace("seed = 0", "seed = 1", 1))
    code, _, output = predict_cli(run, "--text", "woof")
    refused(code, output, "written for another configuration")


def test_a_run_without_its_final_state_is_refused(lora_run: Path, tmp_path: Path) -> None:
    run = _copy(lora_run, tmp_path)
    (run / "checkpoint" / "round-000002.manifest.json").unlink()  # round 1 still verifies
    code, _, output = predict_cli(run, "--text", "woof")
    refused(code, output, "no committed checkpoint of its last round, 2; nothing was predicted")
    (run / "summary.json").unlink()
    code, _, output = predict_cli(run, "--text", "woof")
    refused(code, output, "is not a finished fedpeft run (it has no summary.json)")
    code, _, output = predict_cli(tmp_path / "nowhere", "--text", "woof")
    refused(code, output, "is not a folder")


def test_bad_files_are_refused(lora_run: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("text,label\n")
    refused(*predict_cli(lora_run, "--file", empty)[::2], "has no rows")
    other = tmp_path / "other.csv"
    other.write_text("text,label\nwoof,dog\nmeow,fish\n")
    refused(*predict_cli(lora_run, "--file", other)[::2], "labels ['fish'] in `label` that are not")
    refused(
        *predict_cli(lora_run, "--file", tmp_path / "gone.csv")[::2], "does not exist; check --file"
    )
    refused(*predict_cli(lora_run, "--file", other, "--out", other)[::2], "is the input file")
    if os.geteuid() != 0:  # root reads anything
        other.chmod(0)
        refused(*predict_cli(lora_run, "--file", other)[::2], "cannot be read (Permission denied)")


def test_bad_options_are_refused(lora_run: Path, data: Path) -> None:
    refused(*predict_cli(lora_run)[::2], "give texts with --text, images with --image, or a file")
    both = ("--text", "woof", "--file", data / "eval.csv")
    refused(*predict_cli(lora_run, *both)[::2], "(one of them)")
    refused(
        *predict_cli(lora_run, "--text", "woof", "--top-k", "4")[::2], "at most 3 (its classes)"
    )
    refused(*predict_cli(lora_run, "--text", " ")[::2], "a --text is empty")
    refused(*predict_cli(lora_run, "--text", "a", "--out", "x.csv")[::2], "go with --file")


def test_images_for_a_text_run_are_refused(lora_run: Path, tmp_path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    takes_text = "model `tiny-bert` takes text, not images; give texts with --text"
    refused(*predict_cli(lora_run, "--image", tmp_path / "a.png")[::2], takes_text)
    refused(*predict_cli(lora_run, "--file", tmp_path)[::2], takes_text)  # a folder: images
    table = tmp_path / "t.csv"
    table.write_text("image\na.png\n")
    refused(*predict_cli(lora_run, "--file", table, "--image-column", "image")[::2], takes_text)


def test_other_tasks_are_refused_naming_what_is_supported(tmp_path: Path) -> None:
    from fedpeft.cli.predict import check_supported
    from fedpeft.errors import FedpeftError
    from fedpeft.server.state import ServerState
    from fedpeft.server.trained import FinishedRun

    cfg = tiny_config(tmp_path, "data.dataset='squad'")  # model.task auto: qa
    run = FinishedRun(tmp_path, cfg, ServerState({}), "squad", ["answer"])
    with pytest.raises(FedpeftError, match="qa'` run on `tiny-bert`; `fedpeft predict` takes"):
        check_supported(run)


def test_an_allocated_run_predicts_with_its_main_group(data: Path, tmp_path: Path) -> None:
    tiers = tmp_path / "tiers.toml"
    tiers.write_text("[a]\nbase = 'high'\n\n[b]\nbase = 'high'\n")
    run = _train(
        tmp_path,
        data,
        "allocation.enabled=true",
        "allocation.policy='tiered'",
        "allocation.tiers={a={method='lora',options={r=4,alpha=8}},"
        "b={method='lora',options={r=2,alpha=4,layers=[1]}}}",
        f"profiles.file={str(tiers)!r}",
        "profiles.mix=['a','b']",
    )
    out = tmp_path / "preds.csv"
    code, _, output = predict_cli(run, "--file", data / "eval.csv", "--out", out)
    assert code == 0, output
    assert "main group `lora`" in output
    rows = csv_rows(out)
    accuracy = np.mean([r["label"] == r["predicted"] for r in rows])
    assert float(accuracy) == json.loads((run / "summary.json").read_text())["final_accuracy"]


def test_an_instruction_tuned_decoder_predicts_by_generation(data: Path, tmp_path: Path) -> None:
    decoder = ["model.name='tiny-llama'", "model.max_length=24", "client.batch_size=8"]
    run = _train(tmp_path, data, *decoder, "client.lr=0.03", "client.epochs=4")
    out = tmp_path / "preds.csv"
    code, _, output = predict_cli(run, "--file", data / "eval.csv", "--out", out)
    assert code == 0, output
    rows = csv_rows(out)
    assert list(rows[0]) == ["text", "label", "predicted", "answer"]
    final = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["eval"]
    assert np.mean([r["label"] == r["predicted"] for r in rows]) == final["accuracy"]
    assert np.mean([r["predicted"] == "" for r in rows]) == final["invalid_rate"]
    # a tiny random decoder names no class yet, but what it says depends on the state loaded
    answers = [r["answer"] for r in rows]
    assert any(a.strip() for a in answers)
    assert answers == _exported_answers(run, data / "eval.csv")
    refused(*predict_cli(run, "--text", "woof", "--top-k", "2")[::2], "a generated answer is one")


def _exported_answers(run: Path, eval_file: Path) -> list[str]:
    """The answers of the exported adapter loaded with plain peft onto the base decoder."""
    from fedpeft.data import RawSplit
    from fedpeft.data.instruct import tokenize_instruct
    from fedpeft.models import get_model_spec, load_causal_lm, load_tokenizer
    from fedpeft.peft import load_adapter
    from fedpeft.server.generate import generate_answers

    spec = get_model_spec("tiny-llama")
    model = load_adapter(load_causal_lm(spec, 0), run / "adapter").eval()
    texts = [r["text"] for r in csv_rows(eval_file)]
    raw = RawSplit(texts, np.zeros(len(texts), dtype=np.int64))
    split = tokenize_instruct(raw, load_tokenizer(spec), "train", NAMES, 24)
    return generate_answers(model, split, 32, torch.device("cpu"))


def test_numeric_label_names_are_the_classes_the_run_made(tmp_path: Path) -> None:
    """`data.label_names = [10, 0, 1.0]`: the run's classes are "10", "0", "1" (canonical);
    the class-name check compares canonical names, so the run predicts its eval file."""
    rng = np.random.default_rng(3)
    numeric = {"dog": "10", "cat": "0", "bird": "1.0"}
    for name, n in (("train.csv", 60), ("eval.csv", 20)):
        rows = csv_rows(_write(tmp_path / name, n, rng))
        with (tmp_path / name).open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["text", "label"])
            w.writerows([r["text"], numeric[r["label"]]] for r in rows)
    files = [
        f"data.train_file={str(tmp_path / 'train.csv')!r}",
        f"data.eval_file={str(tmp_path / 'eval.csv')!r}",
    ]
    run = run_local(
        tiny_config(
            tmp_path / "runs", "data.dataset='custom'", "data.label_names=[10, 0, 1.0]", *files
        )
    ).run_dir
    code, _, output = predict_cli(run, "--file", tmp_path / "eval.csv")
    assert code == 0, output
    accuracy = json.loads((run / "summary.json").read_text())["final_accuracy"]
    assert f"accuracy {accuracy:.4f}" in output, output


def test_the_predicting_machine_picks_the_device(lora_run: Path, tmp_path: Path) -> None:
    """A run trained on a GPU (`run.device = "cuda"`, not fingerprinted) predicts on a
    machine without one: --device (default auto) decides, not the run's config."""
    run = _copy(lora_run, tmp_path)
    config = run / "config.toml"
    text = config.read_text()
    assert 'device = "auto"' in text
    config.write_text(text.replace('device = "auto"', 'device = "cuda"', 1))
    code, _, output = predict_cli(run, "--text", "woof")
    assert code == 0, output
    code, _, output = predict_cli(run, "--text", "woof", "--device", "gpu")
    refused(code, output, "--device is 'gpu'; give auto, cpu or cuda.")
    if not torch.cuda.is_available():
        code, _, output = predict_cli(run, "--text", "woof", "--device", "cuda")
        refused(code, output, "--device is 'cuda' but no CUDA device is available; use auto")


def test_a_run_with_a_relative_tiers_file_predicts_from_another_folder(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A finished run's final model needs no devices: a relative `profiles.file` (read from
    where the run started) is not needed to predict from elsewhere."""
    start, elsewhere = tmp_path / "start", tmp_path / "elsewhere"
    start.mkdir(), elsewhere.mkdir()
    (start / "tiers.toml").write_text("[a]\nbase = 'high'\n")
    monkeypatch.chdir(start)
    tiers = ["profiles.file='tiers.toml'", "profiles.mix=['a', 'a']", "run.rounds=1"]
    run = _train(tmp_path, data, *tiers)
    monkeypatch.chdir(elsewhere)
    code, out, said = predict_cli(run, "--text", "woof bark puppy")
    assert code == 0 and out.strip().splitlines()[-1].split("\t")[0] in NAMES, said


def test_a_file_with_missing_texts_predicts_as_training_reads_it(
    lora_run: Path, tmp_path: Path
) -> None:
    """A JSON NaN or null text is an empty text, as the run's own loader reads it (not
    refused, not the text "nan")."""
    path = tmp_path / "p.jsonl"
    path.write_text('{"text": "woof bark"}\n{"text": NaN}\n{"text": null}\n')
    out = tmp_path / "preds.csv"
    code, _, said = predict_cli(lora_run, "--file", path, "--out", out)
    assert code == 0, said
    assert [r["text"] for r in csv_rows(out)] == ["woof bark", "", ""]
