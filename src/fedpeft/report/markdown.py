"""A run folder → ``report.md``: the configuration that matters, per-round table, summary
figures, per-class quality (``classes.json``), and the difference to a reference run
(run − reference: negative where the run is below it).

Every figure is optional: a run whose rounds accepted no update (or that has no round at
all) still gets a report, with ``—`` where there is nothing to show."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedpeft.report.fmt import clients_text, eval_of, num, scaled, share_of_full_model
from fedpeft.report.personal import last_round_rows, personal_lines
from fedpeft.report.run_files import (
    chosen_lr,
    read_config,
    read_partitions,
    read_rounds,
    read_summary,
)
from fedpeft.report.sections import (
    REFERENCE_HINT,
    class_lines,
    config_lines,
    partition_examples,
    partition_questions,
    reference_lines,
    reference_mismatch,
)
from fedpeft.server.classes import ClassReport, read_class_report
from fedpeft.server.qa import QA_DATASETS

_TABLE_METRICS = ("accuracy", "macro_f1", "loss")  # the per-round table's columns
_NO_CHANCE = ("qa", "detect", "itm")  # `accuracy` is not a choice among the labels

__all__ = ["read_rounds", "read_summary", "render_report", "write_report"]


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """The headline figures of a run, each safe when the figure is missing."""
    s = summary
    return [
        f"- final accuracy **{num(s.get('final_accuracy'))}**, macro-F1 "
        f"{num(s.get('final_macro_f1'))} after {s.get('rounds_completed', 0)} rounds",
        f"- bytes up per client per round: {num(s.get('bytes_up_per_client_round'), ',.0f')} "
        f"({share_of_full_model(s.get('up_fraction_of_full_model'))} of the full model's "
        f"{num(s.get('full_model_bytes'), ',')} bytes)",
        f"- wall time {num(s.get('wall_time_s'), '.1f')} s · peak RSS "
        f"{scaled(s.get('peak_rss_bytes'), 2**20, '.0f')} MiB",
        *privacy_lines(s.get("privacy")),
    ]


def task_metric_lines(cfg: dict[str, Any], rounds: list[dict[str, Any]]) -> list[str]:
    """A task's own metrics of its last evaluation (QA's exact match and F1, detection's
    mAPs, retrieval recalls, …), which the accuracy column stands for only in part."""
    if _task(cfg) in ("classify", None):
        return []
    last = next((eval_of(r) for r in reversed(rounds) if eval_of(r)), {})
    shown = [f"{k} {num(v)}" for k, v in sorted(last.items()) if k not in _TABLE_METRICS]
    return [f"- last evaluation: {' · '.join(shown)}"] if shown else []


def privacy_lines(p: object) -> list[str]:
    """ε spent and the DP settings of a DP run (none for a run without DP)."""
    if not isinstance(p, dict):
        return []
    lines = [
        f"- differential privacy ({p.get('mode')}): ε = **{num(p.get('epsilon'), '.3f')}** at "
        f"δ = {p.get('delta')} ({p.get('accountant')} accountant), σ = "
        f"{num(p.get('noise_multiplier'), '.3f')}, clip norm S = {num(p.get('clip_norm'), '.3g')}"
    ]
    if p.get("stopped"):
        lines.append(f"- stopped early: {p['stopped']}")
    return lines


def render_report(
    run_dir: Path,
    plots: list[Path],
    classes: ClassReport | None = None,
    reference: Path | None = None,
) -> str:
    rounds = read_rounds(run_dir)
    summary = read_summary(run_dir)
    moved = [r["round"] for r in rounds if _bias_moved(r)]
    cfg = read_config(run_dir)
    data = cfg.get("data")
    qa = _task(cfg) == "qa" or (isinstance(data, dict) and data.get("dataset") in QA_DATASETS)
    # a QA client's partition counts context windows: the run records its questions
    partitions = read_partitions(run_dir)
    examples = partition_questions(partitions) if qa else partition_examples(partitions)
    unit = "questions" if qa else "examples"
    settings = config_lines(cfg, chosen_lr(run_dir), moved, examples, unit) or [
        f"- model: {summary.get('model')} · dataset: {summary.get('dataset')} · "
        f"clients: {summary.get('num_clients')}"
    ]
    lines = [
        f"# fedpeft run `{run_dir.name}`",
        "",
        *settings,
        *summary_lines(summary),
        *task_metric_lines(cfg, rounds),
        "",
        "| round | accuracy | macro-F1 | eval loss | train loss | clients ok | MB up | s |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rounds:
        e = eval_of(r)
        train_loss = r.get("train_loss") if r.get("accepted") else None  # no update: no loss
        lines.append(
            f"| {r.get('round')} | {num(e.get('accuracy'))} | {num(e.get('macro_f1'))} | "
            f"{num(e.get('loss'))} | {num(train_loss)} | {clients_text(r)} | "
            f"{scaled(r.get('bytes_up'), 1e6)} | {num(r.get('wall_time_s'), '.1f')} |"
        )
    if not rounds:
        lines.append("| (no completed round) | | | | | | | |")
    lines.append("")
    if reference is not None:
        lines += reference_lines(summary, reference, reference_mismatch(run_dir, reference))
    if classes is not None:
        lines += class_lines(classes)
    lines += personal_lines(summary)
    lines += [f"![{p.stem}](plots/{p.name})" for p in plots]
    return "\n".join(lines) + "\n"


def _bias_moved(record: dict[str, Any]) -> bool:
    refresh = record.get("head_refresh")
    return isinstance(refresh, dict) and refresh.get("part") == "bias"


def _task(cfg: dict[str, Any]) -> str | None:
    model = cfg.get("model", {})
    return model.get("task") if isinstance(model, dict) else None


def _chance(run_dir: Path, classes: ClassReport | None) -> float | None:
    """The majority-class rate of the eval split, else 1 / the number of labels; none for a
    task whose accuracy is no class choice (QA's exact match, mAP, retrieval recall)."""
    if classes is not None:
        return classes.majority_rate
    if _task(read_config(run_dir)) in _NO_CHANCE:
        return None
    names = read_partitions(run_dir).get("label_names")
    return 1 / len(names) if names else None


def _verify(run_dir: Path, reference: Path | None) -> None:
    """Reads every file the report uses: a damaged one stops it with one sentence naming
    the file, before a plot or the report is (re)written."""
    read_summary(run_dir)
    read_config(run_dir)
    chosen_lr(run_dir)
    read_partitions(run_dir)
    last_round_rows(run_dir)
    if reference is not None:
        read_summary(reference, REFERENCE_HINT)
        read_partitions(reference, REFERENCE_HINT)
        read_config(reference)


def write_report(run_dir: Path, reference: Path | None = None) -> Path:
    """Writes ``plots/*.png`` (when matplotlib is installed) and ``report.md``; per-class
    sections when the run folder holds ``classes.json``, and the difference to ``reference`` (a
    finished run folder, e.g. the same data trained centrally) when given."""
    from fedpeft.report.plots import plot_run

    _verify(run_dir, reference)  # before anything is written
    rounds = read_rounds(run_dir)
    classes = read_class_report(run_dir)
    ref_curve = None
    if reference is not None:
        ref_rounds = read_rounds(reference, REFERENCE_HINT)
        ref_curve = (reference.name, [eval_of(r).get("accuracy") for r in ref_rounds])
    plots = plot_run(run_dir, rounds, _chance(run_dir, classes), ref_curve, classes)
    out = run_dir / "report.md"
    out.write_text(render_report(run_dir, plots, classes, reference))
    return out
