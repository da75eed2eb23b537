"""Instruction tuning of a causal LM (tiny random LLaMA with SmolLM2's tokenizer): answer-
only labels, the loss, generative exact match, task/method refusals, a full run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fedpeft.cli.main import app
from fedpeft.config import load_config
from fedpeft.data import RawDataset, RawSplit
from fedpeft.data.instruct import IGNORE, InstructSplit, tokenize_instruct
from fedpeft.errors import FedpeftError
from fedpeft.models import get_model_spec, load_causal_lm, load_tokenizer
from fedpeft.peft import load_adapter
from fedpeft.server.generate import (
    INVALID,
    answer_metrics,
    evaluate_generative,
    generate_answers,
    parse_answer,
)
from fedpeft.server.instruct import check_task, instruct_splits, task_kind

NAMES = ["negative", "positive"]
TEXTS = ["a dull , lifeless film", "warm , funny and wise", "bad", "one of the year 's best"]
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tokenizer():  # type: ignore[no-untyped-def]
    return load_tokenizer(get_model_spec("tiny-llama"))


def _split(tokenizer, chat: bool | None = None, max_length: int = 16) -> InstructSplit:  # type: ignore[no-untyped-def]
    raw = RawSplit(list(TEXTS), np.asarray([0, 1, 0, 1]))
    return tokenize_instruct(raw, tokenizer, "sst2", NAMES, max_length, chat=chat)


def _model() -> torch.nn.Module:
    return load_causal_lm(get_model_spec("tiny-llama"), seed=0).eval()


def test_label_mask_covers_exactly_the_answer_tokens(tokenizer) -> None:  # type: ignore[no-untyped-def]
    split = _split(tokenizer)
    batch = split.collate(np.arange(4))
    assert len(batch) == 4 and batch.labels.shape == batch.input_ids.shape
    for row in range(4):
        ids, labels, mask = batch.input_ids[row], batch.labels[row], batch.attention_mask[row]
        kept = labels != IGNORE
        answer = tokenizer.decode(ids[kept])
        assert answer == NAMES[int(split.labels[row])] + "<|im_end|>"
        assert torch.equal(labels[kept], ids[kept])
        assert kept[-len(split.answers[int(split.labels[row])]) :].all()  # the answer ends it
        assert (mask[~kept].sum() == len(split.prompts[row])) and (
            labels[mask == 0] == IGNORE
        ).all()
        assert mask[0] == 0 or row == int(torch.argmax(batch.attention_mask.sum(1)))  # left pad
        prompt = tokenizer.decode(ids[(mask == 1) & ~kept])
        assert TEXTS[row] in prompt and prompt.endswith("<|im_start|>assistant\n")
        assert "Answer with one of: negative, positive." in prompt
    assert split.lengths.tolist() == [
        len(split.prompts[i]) + len(split.answers[int(y)]) for i, y in enumerate(split.labels)
    ]


def test_plain_template_and_text_truncation(tokenizer) -> None:  # type: ignore[no-untyped-def]
    split = _split(tokenizer, chat=False, max_length=2)
    ids, labels = split.sequence(1)
    text = tokenizer.decode(ids)
    assert text.startswith("Classify the sentiment of this review.")
    assert "warm ,\nAnswer: positive<|im_end|>" in text  # text cut to 2 tokens
    assert tokenizer.decode(ids[labels != IGNORE]) == " positive<|im_end|>"


def test_loss_is_cross_entropy_over_the_answer_tokens(tokenizer) -> None:  # type: ignore[no-untyped-def]
    split, model = _split(tokenizer), _model()
    batch = split.collate(np.arange(4))
    with torch.no_grad():
        out = model(**batch.model_inputs())
        logp = torch.log_softmax(model(**batch.model_inputs(with_labels=False)).logits, -1)
    terms = []
    for row in range(4):  # by hand: -log p(answer token | everything before it)
        for t in range(1, batch.input_ids.shape[1]):
            if batch.labels[row, t] != IGNORE:
                terms.append(-float(logp[row, t - 1, batch.input_ids[row, t]]))
    assert len(terms) == sum(len(split.answers[int(y)]) for y in split.labels)
    assert float(out.loss) == pytest.approx(float(np.mean(terms)), rel=1e-5)


def _greedy_alone(model: torch.nn.Module, split: InstructSplit, i: int, steps: int) -> str:
    """Reference decoding: one unpadded prompt, full forward each step, no cache."""
    ids = torch.from_numpy(split.prompts[i])[None]
    new: list[int] = []
    with torch.no_grad():
        for _ in range(steps):
            nxt = int(model(input_ids=ids).logits[0, -1].argmax())
            new.append(nxt)
            if nxt == split.stop_id:
                break
            ids = torch.cat([ids, torch.tensor([[nxt]])], 1)
    return split.tokenizer.decode(new, skip_special_tokens=True)


def test_batched_generation_equals_greedy_decoding_one_by_one(tokenizer) -> None:  # type: ignore[no-untyped-def]
    split, model = _split(tokenizer), _model()
    texts = generate_answers(model, split, batch_size=3, device=CPU)
    steps = max(len(a) for a in split.answers) + 1
    assert texts == [_greedy_alone(model, split, i, steps) for i in range(len(split))]
    metrics = evaluate_generative(model, split, 3, CPU)
    preds = np.asarray([parse_answer(t, NAMES) for t in texts])
    assert metrics["accuracy"] == float((preds == split.labels).mean())


def test_a_model_trained_on_the_answers_says_them(tokenizer) -> None:  # type: ignore[no-untyped-def]
    split, model = _split(tokenizer), _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    batch = split.collate(np.arange(4))
    for _ in range(40):
        model(**batch.model_inputs()).loss.backward()
        opt.step()
        opt.zero_grad()
    metrics = evaluate_generative(model, split, 4, CPU)
    assert generate_answers(model, split, 4, CPU) == [NAMES[int(y)] for y in split.labels]
    assert metrics["accuracy"] == metrics["macro_f1"] == metrics["label_scoring_accuracy"] == 1.0
    assert metrics["invalid_rate"] == 0.0 and metrics["loss"] < 0.1


def test_answers_are_normalised_then_matched_exactly() -> None:
    names = ["World", "Sports", "Business", "Sci/Tech"]
    assert parse_answer(" Sci/Tech.", names) == 3
    assert parse_answer("sports news", names) == 1
    assert parse_answer("BUSINESS!", names) == 2
    for wrong in ("", "sport", "worldwide", "the world", "tech"):
        assert parse_answer(wrong, names) == INVALID, wrong


def test_invalid_answers_are_wrong_and_no_class() -> None:
    labels, preds = np.asarray([0, 0, 1, 1]), np.asarray([0, INVALID, 1, 0])
    m = answer_metrics(preds, labels, 2)
    # class 0: tp 1, fp 1, fn 1 → F1 1/2; class 1: tp 1, fp 0, fn 1 → F1 2/3
    assert m["accuracy"] == 0.5 and m["invalid_rate"] == 0.25
    assert m["macro_f1"] == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_task_defaults_and_refusals(tiny) -> None:  # type: ignore[no-untyped-def]
    assert task_kind(tiny("model.name=tiny-llama")) == "instruct"  # auto, decoder
    assert task_kind(tiny()) == "classify"  # auto, encoder
    assert check_task(tiny("model.name=tiny-llama", "model.task='classify'", "peft.method='head'"))
    with pytest.raises(FedpeftError, match="needs a decoder LLM.*supported: classify: any"):
        check_task(tiny("model.task='instruct'"))
    for method in ("head", "bitfit"):
        with pytest.raises(FedpeftError, match=f"{method}' is not offered.*instruct: llama with"):
            check_task(tiny("model.name=tiny-llama", f"peft.method='{method}'"))
    with pytest.raises(FedpeftError, match="model.task"):
        tiny("model.task='generate'")


def test_fedpeft_run_instruct_lora_end_to_end(tmp_path: Path) -> None:
    sets = [
        "model.name='tiny-llama'",
        "model.max_length=24",
        "data.num_clients=2",
        "run.rounds=2",
        "data.train_size=32",
        "data.eval_size=16",
        "data.partition='iid'",
        "client.batch_size=8",
        "run.threads=1",
        f"run.output_dir='{tmp_path}'",
    ]
    result = CliRunner().invoke(app, ["run", *[x for s in sets for x in ("--set", s)]])
    assert result.exit_code == 0, result.output
    run_dir = next(tmp_path.glob("default-*"))
    rounds = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [1, 2]
    keys = {"accuracy", "macro_f1", "loss", "invalid_rate", "label_scoring_accuracy"}
    assert all(keys <= r["eval"].keys() for r in rounds)
    assert 'task = "instruct"' in (run_dir / "config.toml").read_text()  # auto, resolved
    adapter = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert adapter["task_type"] == "CAUSAL_LM" and adapter["peft_type"] == "LORA"
    model = load_adapter(load_causal_lm(get_model_spec("tiny-llama"), 0), run_dir / "adapter")
    cfg_tok = load_tokenizer(get_model_spec("tiny-llama"))
    from fedpeft.config import load_config
    from fedpeft.data import load_dataset

    cfg = load_config(run_dir / "config.toml")
    ds = load_dataset(cfg.data, cfg.run.seed)
    split = tokenize_instruct(ds.eval, cfg_tok, "sst2", ds.label_names, cfg.model.max_length)
    again, final = evaluate_generative(model, split, 128, CPU), rounds[-1]["eval"]
    assert again["loss"] == pytest.approx(final["loss"], rel=1e-4)  # the same adapter
    # a random tiny model has near-ties; allow one of the 16 greedy answers to flip
    assert again == pytest.approx(final, abs=1 / 16 + 1e-9), (again, final)


@pytest.mark.parametrize("method", ["lora", "ia3", "prompt"])
def test_the_smollm2_example_config_is_valid(method: str) -> None:
    from fedpeft.config import load_config
    from fedpeft.server.config_checks import check_names

    path = Path(__file__).resolve().parents[1] / "examples" / "smollm2_instruct_sst2.toml"
    cfg = load_config(path, [f"peft.method='{method}'"])
    check_names(cfg)  # no model is loaded
    assert task_kind(cfg) == "instruct" and cfg.model.name == "HuggingFaceTB/SmolLM2-135M-Instruct"


@pytest.mark.parametrize("method", ["lora", "prefix", "prompt"])
def test_training_asks_only_the_answer_positions_logits_and_loses_nothing(
    tokenizer,  # type: ignore[no-untyped-def]
    method: str,
) -> None:
    """A causal-LM batch is trained on the logits of its last k positions (from the one
    before the earliest answer token): the loss and every trainable gradient equal the
    whole-sequence ones. Prompt tuning prepends virtual-token labels, so it keeps the whole
    sequence."""
    from fedpeft.client.train import forward_inputs
    from fedpeft.peft import model_architecture, parse_spec

    split = _split(tokenizer, max_length=24)
    batch = split.collate(np.arange(4))
    torch.manual_seed(0)
    model = _model()
    model = parse_spec(method, {}).apply(model, model_architecture(model)).train()
    inputs = forward_inputs(model, batch)
    width = batch.input_ids.shape[1]
    first = int((batch.labels != IGNORE).any(dim=0).int().argmax())
    if method == "prompt":
        assert "logits_to_keep" not in inputs
    else:
        assert inputs["logits_to_keep"] == width - first + 1 < width
        assert inputs["labels"].shape == (4, width - first + 1)

    def loss_and_grads(kwargs):  # type: ignore[no-untyped-def]
        model.zero_grad(set_to_none=True)
        out = model(**kwargs)
        out.loss.backward()
        grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
        return out, grads

    torch.manual_seed(1)
    whole, whole_grads = loss_and_grads(batch.model_inputs())
    torch.manual_seed(1)
    cut, cut_grads = loss_and_grads(inputs)
    assert cut.logits.shape[1] == (
        whole.logits.shape[1] if method == "prompt" else width - first + 1
    )
    assert float(cut.loss.detach()) == pytest.approx(float(whole.loss.detach()), rel=1e-5)
    for a, b in zip(cut_grads, whole_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    ("labels", "match"),
    [
        (["Yes", "yes", "no"], "'Yes' and 'yes' of f.csv read the same"),
        ([":)", ":("], "only punctuation"),
    ],
)
def test_labels_that_generated_answers_cannot_tell_apart_are_refused(
    labels: list[str], match: str
) -> None:
    cfg = load_config(overrides=["model.name='tiny-llama'"])
    split = RawSplit(["a", "b"], np.array([0, 1]))
    data = RawDataset("custom", split, split, labels, "f.csv")
    with pytest.raises(FedpeftError, match=match):
        instruct_splits(cfg, data, get_model_spec("tiny-llama"))
