from fedpeft.report import write_report
from fedpeft.runtime.local import run_local


def test_report_has_a_row_per_round_and_an_accuracy_plot(tiny) -> None:
    result = run_local(tiny())
    text = write_report(result.run_dir).read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(rows) == 2
    acc = result.rounds[-1]["eval"]["accuracy"]
    assert f"{acc:.4f}" in rows[-1]
    png = result.run_dir / "plots" / "accuracy.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_qa_report_shows_exact_match_and_f1_and_no_chance_level(tmp_path, monkeypatch) -> None:
    """QA's `accuracy` is the exact match: its F1 is shown, and no chance line is drawn
    (its one pseudo-class "answer span" made it 1.0, above every run)."""
    import json

    import fedpeft.report.plots as plots

    run = tmp_path / "qa-run"
    run.mkdir()
    (run / "config.toml").write_text('[model]\nname = "tiny-bert"\ntask = "qa"\n')
    (run / "partitions.json").write_text(json.dumps({"label_names": ["answer span"]}))
    (run / "summary.json").write_text(json.dumps({"final_accuracy": 0.25, "rounds_completed": 1}))
    scores = {"accuracy": 0.25, "exact_match": 0.25, "f1": 0.5, "loss": 2.0}
    (run / "metrics.jsonl").write_text(json.dumps({"round": 1, "eval": scores}) + "\n")
    chances = []
    monkeypatch.setattr(plots, "plot_run", lambda _d, _r, chance, *_a: chances.append(chance) or [])
    text = write_report(run).read_text()
    assert "- last evaluation: exact_match 0.2500 · f1 0.5000" in text
    assert chances == [None]


def test_the_report_counts_the_examples_trained_on_not_train_size(tiny, tmp_path) -> None:
    """A file smaller than `data.train_size`: the report names what the clients held
    (partitions.json), not the size the setting asked for."""
    rows = [f"text number {i} {'good' if i % 2 else 'bad'},{i % 2}" for i in range(30)]
    (tmp_path / "t.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    run_dir = run_local(tiny(f"data.train_file={str(tmp_path / 't.csv')!r}")).run_dir
    text = write_report(run_dir).read_text()
    assert "27 train examples over 2 clients" in text, text  # 30 rows, a tenth held out
    assert "64 train examples" not in text


def test_a_qa_report_counts_questions_not_the_context_windows_clients_hold(tmp_path) -> None:
    """QA partitions hold context windows (a long context gives several): the report names
    the questions the clients held (`partitions.json`'s `questions`; `data.train_size` for
    a run that did not record them), not the windows."""
    import json

    run = tmp_path / "qa-run"
    run.mkdir()
    (run / "config.toml").write_text(
        '[model]\nname = "tiny-bert"\ntask = "qa"\n[data]\ndataset = "squad"\n'
        "train_size = 100\nnum_clients = 2\n"
    )
    clients = {"0": {"num_examples": 70}, "1": {"num_examples": 61}}
    (run / "partitions.json").write_text(
        json.dumps({"label_names": ["answer span"], "clients": clients})
    )
    (run / "summary.json").write_text(json.dumps({"final_accuracy": 0.25, "rounds_completed": 1}))
    scores = {"accuracy": 0.25, "exact_match": 0.25, "f1": 0.5, "loss": 2.0}
    (run / "metrics.jsonl").write_text(json.dumps({"round": 1, "eval": scores}) + "\n")
    text = write_report(run).read_text()  # a run from before `questions` was recorded
    assert "100 train questions over 2 clients" in text, text
    assert "131 train" not in text
    (run / "partitions.json").write_text(
        json.dumps({"label_names": ["answer span"], "clients": clients, "questions": 36})
    )
    text = write_report(run).read_text()  # an own file of 36 questions, train_size 100
    assert "36 train questions over 2 clients" in text and "100 train" not in text, text


def test_the_head_settings_are_left_out_for_a_task_without_a_classifier_head() -> None:
    """A QA run's report said "head started `auto` … bias moved never": those options act on
    a classifier's head only (and are refused for other tasks)."""
    from fedpeft.report.sections import config_lines

    server = {"aggregator": "fedavg", "head_init": "auto", "bias_refresh": "auto"}
    for task, shown in [("classify", True), ("qa", False), ("instruct", False), ("vqa", False)]:
        lines = config_lines({"model": {"task": task}, "server": server})
        assert ("head started" in lines[-1]) is shown, task
        assert ("bias moved" in lines[-1]) is shown, task
