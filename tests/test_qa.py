"""Extractive question answering: SQuAD metric, windows, answer extraction, partitions,
refusals, and a tiny federated run through ``fedpeft run`` (tiny random BERT)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fedpeft.cli.main import app
from fedpeft.config import DataConfig, load_config
from fedpeft.data.qa import answer_tokens, partition_questions, tokenize_qa, windows_of
from fedpeft.data.questions import QAExamples
from fedpeft.data.squad import hold_out_articles, read_squad
from fedpeft.errors import FedpeftError
from fedpeft.models import get_model_spec, load_tokenizer
from fedpeft.server.qa import extract_answers
from fedpeft.server.squad_metric import exact_match, f1, normalize_answer, squad_scores


@pytest.fixture(scope="module")
def tokenizer():  # type: ignore[no-untyped-def]
    return load_tokenizer(get_model_spec("tiny-bert"))  # MiniLM's (BERT uncased) tokenizer


def test_normalisation_follows_the_official_script() -> None:
    assert normalize_answer("The  Denver Broncos!") == "denver broncos"
    assert normalize_answer("U.S.-led") == "usled"  # every ASCII punctuation mark goes
    assert normalize_answer("an apple, a pear") == "apple pear"
    assert normalize_answer("Theory") == "theory"  # "the" only as a word


def test_exact_match_and_f1_on_hand_computed_cases() -> None:
    assert exact_match("the Broncos", "Broncos") == 1.0
    assert exact_match("Broncos.", "Denver Broncos") == 0.0
    # pred {denver, broncos, won}, gold {denver, broncos}: P = 2/3, R = 1, F1 = 0.8
    assert f1("Denver Broncos won", "the Denver Broncos") == pytest.approx(0.8)
    # multiset overlap: pred x x y, gold x y y share one x and one y: P = R = 2/3
    assert f1("x x y", "x y y") == pytest.approx(2 / 3)
    assert f1("Paris", "London") == 0.0
    assert f1("the", "a") == 0.0  # both normalise to nothing: no common token
    # a question scores its best reference; the set, the mean over questions
    scores = squad_scores(["Broncos", "in 1990"], [["Denver Broncos", "Broncos"], ["1990"]])
    assert scores["exact_match"] == pytest.approx(0.5)
    assert scores["f1"] == pytest.approx((1.0 + 2 * 0.5 * 1 / 1.5) / 2)


def _examples(contexts: list[str], questions: list[str], answers: list[str]) -> QAExamples:
    starts = [[c.index(a)] for c, a in zip(contexts, answers, strict=True)]
    return QAExamples(
        [f"q{i}" for i in range(len(contexts))],
        np.arange(len(contexts), dtype=np.int64),
        contexts,
        questions,
        [[a] for a in answers],
        starts,
    )


def test_an_answer_beyond_the_first_window_is_targeted_and_extracted(tokenizer) -> None:  # type: ignore[no-untyped-def]
    filler = " ".join(f"word{i} is plain." for i in range(60))
    context = f"{filler} The treasure lies under the old oak tree. {filler}"
    ex = _examples([context], ["Where does the treasure lie?"], ["under the old oak tree"])
    split = tokenize_qa(ex, tokenizer, max_length=64, stride=16)
    assert len(split) > 3 and (split.example == 0).all()
    holding = np.flatnonzero(split.starts > 0)
    assert len(holding) >= 1 and holding[0] > 0  # not in the first window
    for f in holding:  # the targets are exactly the answer's characters
        off = split.offsets[f]
        assert context[off[split.starts[f], 0] : off[split.ends[f], 1]] == ex.answers[0][0]
    for f in np.flatnonzero(split.starts == 0):  # windows without it point at [CLS]
        assert split.ends[f] == 0 and split.input_ids[f][0] == tokenizer.cls_token_id
    # logits that favour the answer in the window holding it, and a worse span elsewhere
    starts = [np.zeros(n, dtype=np.float32) for n in split.lengths]
    ends = [np.zeros(n, dtype=np.float32) for n in split.lengths]
    f = int(holding[-1])
    starts[f][split.starts[f]], ends[f][split.ends[f]] = 5.0, 5.0
    ctx0 = np.flatnonzero(split.offsets[0][:, 0] >= 0)
    starts[0][ctx0[2]], ends[0][ctx0[3]] = 4.0, 4.0
    assert extract_answers(split, starts, ends) == ["under the old oak tree"]


def test_spans_longer_than_the_limit_or_reversed_are_never_chosen(tokenizer) -> None:  # type: ignore[no-untyped-def]
    ex = _examples(["alpha beta gamma delta epsilon"], ["Which?"], ["gamma"])
    split = tokenize_qa(ex, tokenizer, max_length=64, stride=8)
    ctx = np.flatnonzero(split.offsets[0][:, 0] >= 0)
    start, end = np.zeros(split.lengths[0]), np.zeros(split.lengths[0])
    start[ctx[3]], end[ctx[1]] = 9.0, 9.0  # best start after the best end: reversed
    end[ctx[4]] = 1.0
    assert extract_answers(split, [start], [end]) == ["delta epsilon"]


def test_answer_tokens_need_the_whole_answer_inside_the_window() -> None:
    offsets = np.asarray([[-1, -1], [0, 5], [6, 11], [12, 17], [-1, -1]])
    assert answer_tokens(offsets, 6, "world") == (2, 2)
    assert answer_tokens(offsets, 0, "hello world") == (1, 2)
    assert answer_tokens(offsets, 12, "there and more") == (0, 0)  # runs past the window


def _squad_json(path: Path, articles: int = 6, questions: int = 3) -> Path:
    data = []
    for a in range(articles):
        context = f"Article {a} says the number is {a * 7} and the colour is red{a}."
        qas = [
            {
                "id": f"{a}-{q}",
                "question": "What is the number?" if q % 2 == 0 else "What is the colour?",
                "answers": [
                    {"text": str(a * 7) if q % 2 == 0 else f"red{a}", "answer_start": 0}
                ],  # wrong start on purpose: moved to the text's first occurrence
            }
            for q in range(questions)
        ]
        data.append({"title": f"T{a}", "paragraphs": [{"context": context, "qas": qas}]})
    path.write_text(json.dumps({"version": "1.1", "data": data}))
    return path


def test_read_squad_takes_a_start_written_as_a_string_of_digits(tmp_path: Path) -> None:
    raw = json.loads(_squad_json(tmp_path / "s.json").read_text())
    raw["data"][0]["paragraphs"][0]["qas"][0]["answers"][0]["answer_start"] = "0"
    (tmp_path / "str.json").write_text(json.dumps(raw))
    assert read_squad(tmp_path / "str.json").starts == read_squad(tmp_path / "s.json").starts


def test_read_squad_fixes_starts_and_refuses_missing_answers(tmp_path: Path) -> None:
    ex = read_squad(_squad_json(tmp_path / "s.json"))
    assert len(ex) == 18 and sorted(set(ex.articles.tolist())) == list(range(6))
    for c, answers, starts in zip(ex.contexts, ex.answers, ex.starts, strict=True):
        assert c[starts[0] : starts[0] + len(answers[0])] == answers[0]
    raw = json.loads((tmp_path / "s.json").read_text())
    raw["data"][0]["paragraphs"][0]["qas"][0]["answers"][0]["text"] = "absent"
    (tmp_path / "bad.json").write_text(json.dumps(raw))
    with pytest.raises(FedpeftError, match="does not contain"):
        read_squad(tmp_path / "bad.json")
    (tmp_path / "deep.json").write_text("[" * 5000 + "]" * 5000)  # beyond json's recursion
    with pytest.raises(FedpeftError, match="cannot read SQuAD data from .*RecursionError"):
        read_squad(tmp_path / "deep.json")
    train, held = hold_out_articles(ex, seed=0)
    assert len(held) == 3 and not set(train.articles) & set(held.articles)


def test_natural_partition_gives_whole_articles_and_keeps_windows_together(
    tmp_path: Path, tokenizer
) -> None:  # type: ignore[no-untyped-def]
    ex = read_squad(_squad_json(tmp_path / "s.json", articles=7))
    cfg = DataConfig(dataset="squad", num_clients=3, partition="natural")
    parts = partition_questions(ex, cfg, seed=1)
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(ex)))  # each once
    owners = [{int(a) for a in ex.articles[p]} for p in parts]
    assert all(owners) and sum(len(o) for o in owners) == 7  # no article on two clients
    assert sorted(len(o) for o in owners) == [2, 2, 3]
    again = partition_questions(ex, cfg, seed=1)  # seeded
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    split = tokenize_qa(ex, tokenizer, max_length=24, stride=4)
    windows = [windows_of(split, p) for p in parts]
    assert sorted(np.concatenate(windows).tolist()) == list(range(len(split)))
    for p, w in zip(parts, windows, strict=True):
        assert set(split.example[w].tolist()) == set(p.tolist())
    iid = partition_questions(ex, cfg.model_copy(update={"partition": "iid"}), seed=1)
    assert sorted(len(p) for p in iid) == [7, 7, 7]
    with pytest.raises(FedpeftError, match="articles cannot give") as e:
        partition_questions(ex, cfg.model_copy(update={"num_clients": 8}), seed=1)
    assert "train_size" not in str(e.value)  # 21 questions, train_size 2000: all of them
    cut = cfg.model_copy(update={"num_clients": 8, "train_size": 21})
    with pytest.raises(FedpeftError, match="raise `data.train_size`, use 'iid' or give more"):
        partition_questions(ex, cut, seed=1)


@pytest.mark.parametrize(
    ("sets", "match"),
    [
        (["peft.method='prompt'"], "not offered for `model.task` 'qa'.*qa: bert, roberta"),
        (["model.name='tiny-llama'", "peft.method='bitfit'"], "not offered.*llama decoders"),
        (["data.partition='dirichlet'"], "use 'natural'"),
        (["model.task='classify'"], "use `model.task = 'qa'`"),
        (["server.aggregator='layerwise'"], "proxy set"),
    ],
)
def test_unsupported_qa_combinations_are_refused_up_front(sets: list[str], match: str) -> None:
    from fedpeft.server.config_checks import check_names

    path = Path(__file__).resolve().parents[1] / "examples" / "squad.toml"
    with pytest.raises(FedpeftError, match=match):
        check_names(load_config(path, sets))


def test_fedpeft_run_qa_lora_end_to_end(tmp_path: Path) -> None:
    """2 clients with whole articles of a SQuAD-format file of one's own, 1 round; the
    exported adapter loads with plain PEFT and scores what the run recorded."""
    from peft import PeftModel

    from fedpeft.models import load_qa_model
    from fedpeft.server.qa import evaluate_qa
    from fedpeft.server.task import build_data

    sets = [
        "data.dataset='squad'",
        f"data.train_file='{_squad_json(tmp_path / 'train.json', articles=8)}'",
        f"data.eval_file='{_squad_json(tmp_path / 'dev.json', articles=2)}'",
        "model.name='tiny-bert'",
        "model.max_length=48",
        "model.doc_stride=8",
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
    rounds = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    final = rounds[-1]["eval"]
    assert {"exact_match", "f1", "accuracy", "loss"} <= final.keys()
    assert final["accuracy"] == final["exact_match"] and 0 <= final["f1"] <= 1
    assert 'task = "qa"' in (run_dir / "config.toml").read_text()  # auto, resolved
    # the clients hold context windows; the run records (and its report names) the questions
    asked = sum(len(p["qas"]) for a in _read(tmp_path / "train.json") for p in a["paragraphs"])
    parts = json.loads((run_dir / "partitions.json").read_text())
    assert parts["questions"] == asked <= sum(c["num_examples"] for c in parts["clients"].values())
    assert f"{asked} train questions over 2 clients" in (run_dir / "report.md").read_text()
    adapter = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert adapter["task_type"] == "QUESTION_ANS" and adapter["peft_type"] == "LORA"
    assert adapter["modules_to_save"] == ["qa_outputs"]
    base = load_qa_model(get_model_spec("tiny-bert"), seed=0)  # the run's random base
    torch.nn.init.normal_(base.qa_outputs.weight, generator=torch.Generator().manual_seed(9))
    model = PeftModel.from_pretrained(base, str(run_dir / "adapter"))
    data = build_data(load_config(run_dir / "config.toml"))
    again = evaluate_qa(model, data.eval, 64, torch.device("cpu"))  # type: ignore[arg-type]
    assert again == pytest.approx(final, rel=1e-5)


def test_allocate_prices_the_span_head(tmp_path: Path) -> None:
    """``fedpeft allocate`` on QA data: the cost model's architecture has the span head."""
    out = tmp_path / "alloc.json"
    sets = [
        "data.dataset='squad'",
        f"data.train_file='{_squad_json(tmp_path / 'train.json', articles=8)}'",
        "model.name='tiny-bert'",
        "model.max_length=48",
        "data.num_clients=2",
        "data.partition='natural'",
        "allocation.catalogue.prompt_tokens=[]",
    ]
    args = ["allocate", *[x for s in sets for x in ("--set", s)], "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    record = json.loads(out.read_text())
    assert len(record["clients"]) == 2 and all(c["chosen"] for c in record["clients"])


def test_the_squad_example_config_is_valid() -> None:
    from fedpeft.server.config_checks import check_names
    from fedpeft.server.instruct import task_kind

    cfg = load_config(Path(__file__).resolve().parents[1] / "examples" / "squad.toml")
    check_names(cfg)  # nothing loads
    assert task_kind(cfg) == "qa" and cfg.data.partition == "natural"


def test_the_official_dev_set_reads_with_its_official_counts() -> None:
    from fedpeft.data.sources import find_local

    folder = find_local("squad_v1.1", ["dev-v1.1.json"])
    if folder is None:
        pytest.skip("SQuAD v1.1 is not in the data folders")
    dev = read_squad(folder / "dev-v1.1.json")
    assert len(dev) == 10570 and len(np.unique(dev.articles)) == 48
    first = dev.ids.index("56be4db0acb8001400a502ec")
    assert dev.questions[first] == "Which NFL team represented the AFC at Super Bowl 50?"
    assert dev.answers[first][0] == "Denver Broncos" and dev.starts[first][0] == 177


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("text", "", "non-empty `text`"),
        ("answer_start", "abc", "whole-number `answer_start`"),
        ("answer_start", 3.7, "whole-number `answer_start`"),  # int() made it 3
        ("answer_start", True, "whole-number `answer_start`"),  # int() made it 1
        ("answer_start", " 3", "whole-number `answer_start`"),
        ("question", None, "not text"),
        ("context", 5, "not text"),
    ],
)
def test_read_squad_refuses_malformed_fields_with_one_sentence(
    tmp_path: Path, field: str, value: object, match: str
) -> None:
    raw = json.loads(_squad_json(tmp_path / "s.json").read_text())
    para = raw["data"][1]["paragraphs"][0]
    target = {"context": para, "question": para["qas"][0]}.get(field, para["qas"][0]["answers"][0])
    target[field] = value
    (tmp_path / "bad.json").write_text(json.dumps(raw))
    with pytest.raises(FedpeftError, match=match):
        read_squad(tmp_path / "bad.json")


def test_read_squad_says_how_many_answer_starts_it_moved(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Every start in `_squad_json` is 0 and wrong: moved to the first occurrence, said once
    with the count (it was silent, and the first occurrence need not be the meant one)."""
    with caplog.at_level("WARNING"):
        read_squad(_squad_json(tmp_path / "s.json"))
    said = [r.getMessage() for r in caplog.records if "answer_start" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith("18 answers of SQuAD file")


@pytest.mark.parametrize(
    "answers", [{"text": ["red1"], "answer_start": [0]}, "red1"]
)  # `datasets`' column layout: a dict of lists
def test_read_squad_names_answers_of_the_wrong_kind_in_plain_words(
    tmp_path: Path, answers: object
) -> None:
    raw = json.loads(_squad_json(tmp_path / "s.json").read_text())
    raw["data"][1]["paragraphs"][0]["qas"][0]["answers"] = answers
    (tmp_path / "bad.json").write_text(json.dumps(raw))
    with pytest.raises(FedpeftError, match="has a field of the wrong kind .* in article 1; ") as e:
        read_squad(tmp_path / "bad.json")
    assert "lacks field" not in str(e.value)


def test_a_own_squad_file_cut_to_train_size_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`data.train_size` below the file's questions trained on a part of it unsaid (a custom
    table says it); a file within the size says nothing."""
    from fedpeft.data import load_dataset

    path = _squad_json(tmp_path / "s.json", articles=10)  # 30 questions, 27 after hold-out
    for size, said in [(10, True), (2000, False)]:
        cfg = load_config(
            overrides=[
                "data.dataset='squad'",
                f"data.train_file={str(path)!r}",
                f"data.train_size={size}",
                "data.partition='natural'",
            ]
        ).data
        with caplog.at_level("WARNING"):
            caplog.clear()
            assert len(load_dataset(cfg, seed=0).train) == min(size, 27)
        notes = [r.getMessage() for r in caplog.records if "training on a seeded" in r.getMessage()]
        assert notes == (
            [
                f"training on a seeded 10 of the 27 training examples of {path} "
                "(`data.train_size`); set it to 27 (or more) to train on all of them"
            ]
            if said
            else []
        )


def test_a_small_qa_evaluation_set_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Three held-out questions score exact match in steps of 1/3, said as for classes."""
    from fedpeft.data import load_dataset

    path = _squad_json(tmp_path / "s.json", articles=10)
    sets = ["data.dataset='squad'", f"data.train_file={str(path)!r}", "data.partition='natural'"]
    with caplog.at_level("WARNING"):
        load_dataset(load_config(overrides=sets).data, seed=0)
    assert any(
        r.getMessage().startswith(f"the evaluation set of {path} has 3 examples")
        for r in caplog.records
    )


def test_read_squad_takes_a_file_with_a_byte_order_mark(tmp_path: Path) -> None:
    """Windows editors write UTF-8 with a BOM; it stopped the run as not JSON."""
    plain = _squad_json(tmp_path / "s.json")
    (tmp_path / "bom.json").write_text(plain.read_text(), encoding="utf-8-sig")
    assert read_squad(tmp_path / "bom.json").ids == read_squad(plain).ids


def test_own_eval_questions_also_in_the_train_file_are_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The same file as train and eval scored its own training questions unsaid (a table's
    evaluation texts that are also training texts are warned about)."""
    from fedpeft.data import load_dataset

    path = _squad_json(tmp_path / "s.json", articles=10)
    sets = ["data.dataset='squad'", f"data.train_file={str(path)!r}", "data.partition='natural'"]
    with caplog.at_level("WARNING"):
        load_dataset(load_config(overrides=[*sets, f"data.eval_file={str(path)!r}"]).data, 0)
    said = [
        r.getMessage() for r in caplog.records if "also appear in the training" in r.getMessage()
    ]
    assert len(said) == 1 and said[0].startswith("30 of the 30 evaluation texts (data file")
    raw = json.loads(path.read_text())  # held-out articles repeating another's paragraph
    raw["data"] += raw["data"]
    path.write_text(json.dumps(raw))
    caplog.clear()
    with caplog.at_level("WARNING"):
        load_dataset(load_config(overrides=sets).data, 0)
    notes = [r.getMessage() for r in caplog.records]
    assert any("evaluation texts (the articles held out of" in n for n in notes), notes


def test_read_squad_names_a_jsonl_file_as_json_lines(tmp_path: Path) -> None:
    """`datasets`' to_json writes one flat question a line; it read 'JSONDecodeError: Extra
    data: line 2 column 1 (char 154)'."""
    row = {"id": "1", "context": "c a", "question": "q", "answers": {"text": ["a"]}}
    (tmp_path / "flat.jsonl").write_text(json.dumps(row) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(FedpeftError, match=r"\(JSON lines \(one object a line\), not one JSON"):
        read_squad(tmp_path / "flat.jsonl")


def _read(path: Path) -> list[dict]:
    return json.loads(path.read_text())["data"]
