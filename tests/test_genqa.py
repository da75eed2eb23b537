"""Generative question answering on a causal LM (tiny random LLaMA with SmolLM2's
tokenizer): prompts, the answer-only loss mask, ROUGE-L, and a tiny federated run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from torchmetrics.text.rouge import ROUGEScore
from typer.testing import CliRunner

from fedpeft.cli.main import app
from fedpeft.data.genqa import tokenize_genqa
from fedpeft.data.instruct import IGNORE
from fedpeft.data.questions import QAExamples
from fedpeft.models import get_model_spec, load_tokenizer
from tests.test_qa import _squad_json


@pytest.fixture(scope="module")
def tokenizer():  # type: ignore[no-untyped-def]
    return load_tokenizer(get_model_spec("tiny-llama"))


def _examples() -> QAExamples:
    contexts = ["The treasure lies under the old oak tree near the river bank."] * 2
    return QAExamples(
        ["a", "b"],
        np.zeros(2, dtype=np.int64),
        contexts,
        ["Where is the treasure?", "  What tree?"],
        [["under the old oak tree"], ["oak", "the old oak tree"]],
        [[19], [31, 23]],
    )


def test_the_loss_covers_exactly_the_first_reference_and_the_stop(tokenizer) -> None:  # type: ignore[no-untyped-def]
    split = tokenize_genqa(_examples(), tokenizer, max_length=64)
    batch = split.collate(np.arange(2))
    for row, answer in enumerate(["under the old oak tree", "oak"]):
        ids, labels, mask = batch.input_ids[row], batch.labels[row], batch.attention_mask[row]
        kept = labels != IGNORE
        assert tokenizer.decode(ids[kept]) == answer + "<|im_end|>"
        prompt = tokenizer.decode(ids[(mask == 1) & ~kept])
        assert "Context: The treasure lies" in prompt and prompt.endswith("assistant\n")
    assert "Question: What tree?" in tokenizer.decode(split.prompts[1])  # stripped


def test_the_context_is_cut_and_the_question_kept(tokenizer) -> None:  # type: ignore[no-untyped-def]
    split = tokenize_genqa(_examples(), tokenizer, max_length=3)
    prompt = tokenizer.decode(split.prompts[0])
    assert "Context: The treasure lies\n\nQuestion: Where is the treasure?" in prompt


def test_rouge_l_is_the_best_lcs_f_measure_over_references() -> None:
    """pred "the cat sat on mat" vs "a cat sat on the mat": LCS 4, P = 4/5, R = 4/6,
    F = 8/11; vs "cat": F = 1/3; the best is 8/11; "paris" vs "London" is 0."""
    rouge = ROUGEScore(rouge_keys="rougeL", accumulate="best")
    got = rouge(["the cat sat on mat", "paris"], [["a cat sat on the mat", "cat"], ["London"]])
    assert float(got["rougeL_fmeasure"]) == pytest.approx((8 / 11 + 0) / 2, abs=1e-6)


def test_fedpeft_run_generative_qa_end_to_end(tmp_path: Path) -> None:
    sets = [
        "data.dataset='squad'",
        f"data.train_file='{_squad_json(tmp_path / 'train.json', articles=6)}'",
        f"data.eval_file='{_squad_json(tmp_path / 'dev.json', articles=2)}'",
        "model.name='tiny-llama'",
        "model.max_length=32",
        "data.num_clients=2",
        "data.partition='natural'",
        "run.rounds=1",
        "client.batch_size=8",
        "run.threads=1",
        f"run.output_dir='{tmp_path}'",
    ]
    result = CliRunner().invoke(app, ["run", *[x for s in sets for x in ("--set", s)]])
    assert result.exit_code == 0, result.output
    run_dir = next(tmp_path.glob("default-*"))
    final = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])["eval"]
    assert {"exact_match", "f1", "rouge_l", "accuracy", "loss"} <= final.keys()
    assert all(0 <= final[k] <= 1 for k in ("exact_match", "f1", "rouge_l"))
    adapter = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert adapter["task_type"] == "CAUSAL_LM"
    train = json.loads((tmp_path / "train.json").read_text())["data"]
    asked = sum(len(p["qas"]) for a in train for p in a["paragraphs"])
    assert json.loads((run_dir / "partitions.json").read_text())["questions"] == asked
    assert f"{asked} train questions over 2 clients" in (run_dir / "report.md").read_text()


def test_the_example_config_is_valid_and_auto_picks_generative_qa() -> None:
    """examples/smollm2_squad.toml: SmolLM2 on SQuAD resolves to QA on a causal LM (the
    answer generated), and the same config with the tiny LLaMA passes every check."""
    from fedpeft.config import load_config
    from fedpeft.server.config_checks import check_names
    from fedpeft.server.instruct import head_kind, task_kind

    example = Path(__file__).resolve().parents[1] / "examples" / "smollm2_squad.toml"
    cfg = load_config(example)
    kind = task_kind(cfg)
    assert kind == "qa" and head_kind(kind, get_model_spec(cfg.model.name)) == (True, False)
    check_names(load_config(example, ["model.name='tiny-llama'"]))  # nothing loads


def test_answers_that_the_cut_context_hides_are_warned_about(tokenizer) -> None:  # type: ignore[no-untyped-def]
    from fedpeft.data.genqa import hidden_answer_warning

    said = hidden_answer_warning(_examples(), tokenizer, max_length=3)  # "The treasure lies"
    assert said is not None and said.startswith("2 of 2 training questions (100%)")
    assert hidden_answer_warning(_examples(), tokenizer, max_length=64) is None
