"""Report sections that explain a run: the configuration that matters, per-class quality,
and the difference to a centralised reference run (run − reference)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedpeft.report.fmt import finite
from fedpeft.report.run_files import read_config, read_partitions, read_summary
from fedpeft.server.classes import ClassReport

log = logging.getLogger("fedpeft.report")

MAX_CLASS_ROWS = 25  # more classes: the worst by recall, then a note
REFERENCE_HINT = "pass a finished fedpeft run as --reference"


def config_lines(
    cfg: dict[str, Any],
    chosen_lr: float | None = None,
    moved: Sequence[int] = (),
    examples: int | None = None,
    unit: str = "examples",
) -> list[str]:
    """The settings a reader needs to judge the numbers, as Markdown bullets; ``moved``:
    the rounds after which the head's bias was moved (``server.bias_refresh``);
    ``examples``: the training examples the clients held (``partition_examples``), else
    ``data.train_size`` is shown, which a smaller data set does not reach; ``unit``: what
    they are (a QA run's ``questions``)."""
    if not cfg:
        return []
    run, model, data = cfg.get("run", {}), cfg.get("model", {}), cfg.get("data", {})
    peft, client, server = cfg.get("peft", {}), cfg.get("client", {}), cfg.get("server", {})
    partition = data.get("partition", "?")
    if partition == "dirichlet":
        partition = f"Dirichlet(α = {data.get('alpha')})"
    elif partition == "pathological":
        partition = f"{data.get('classes_per_client')} class(es) per client"
    options = ", ".join(
        f"{k}={v}" for k, v in peft.items() if k != "method" and not isinstance(v, dict)
    )
    lr = client.get("lr")
    lr_text = f"{lr}" if chosen_lr is None else f"auto (range test: {chosen_lr:.3g})"
    optimizer = str(server.get("optimizer", "none"))
    if optimizer != "none":
        optimizer += f" (server lr {server.get('server_lr', 'default')})"
    work = (
        f"{client.get('steps')} steps"
        if client.get("steps")
        else f"{client.get('epochs')} epoch(s)"
    )
    return [
        f"- model `{model.get('name')}` (max length {model.get('max_length')}) · "
        f"PEFT `{peft.get('method')}` ({options})",
        f"- data `{data.get('dataset')}`: {examples or data.get('train_size') or 'all'} train "
        f"{unit} over "
        f"{data.get('num_clients')} clients, {partition} · seed {run.get('seed')}",
        f"- clients: {work} a round, batch {client.get('batch_size')}, lr {lr_text}, "
        f"label skew `{client.get('label_skew', 'none')}` (τ {client.get('label_skew_tau', '-')})"
        f", FedProx μ {client.get('proximal_mu')}",
        f"- server: `{server.get('aggregator')}`, optimiser {optimizer}, "
        f"{server.get('fraction')} of clients a round, {run.get('rounds')} rounds"
        + _head_text(server, moved, model.get("task")),
    ]


def _head_text(server: dict[str, Any], moved: Sequence[int], task: object) -> str:
    """How the classifier head was set (``server.head_init`` …); "" for a task without
    one (QA, instruction tuning, image–text, VQA, detection: those options are refused)."""
    if task not in (None, "auto", "classify"):
        return ""
    return (
        f" · head started `{server.get('head_init', 'random')}`, set again "
        f"`{server.get('head_refresh', 'none')}`, bias moved "
        + (f"after round {', '.join(map(str, moved))}" if moved else "never")
        + f" (`bias_refresh = {server.get('bias_refresh', 'none')}`)"
    )


def partition_examples(partitions: dict[str, Any]) -> int | None:
    """The training examples over every client of ``partitions.json`` (None when it lists
    no clients or a count is not a whole number)."""
    clients = partitions.get("clients")
    if not isinstance(clients, dict) or not clients:
        return None
    counts = [c.get("num_examples") if isinstance(c, dict) else None for c in clients.values()]
    whole = [n for n in counts if isinstance(n, int) and not isinstance(n, bool) and n >= 0]
    return sum(whole) if len(whole) == len(counts) else None


def partition_questions(partitions: dict[str, Any]) -> int | None:
    """A QA run's training questions (``partitions.json``'s ``questions``; None where an
    older run did not record them)."""
    n = partitions.get("questions")
    return n if isinstance(n, int) and not isinstance(n, bool) and n >= 0 else None


def class_lines(report: ClassReport) -> list[str]:
    """Per-class precision/recall/F1 (the worst classes by recall when there are many)."""
    ids = list(range(len(report.label_names)))
    note = ""
    if len(ids) > MAX_CLASS_ROWS:
        ids = sorted(ids, key=lambda c: (report.recall[c], c))[:MAX_CLASS_ROWS]
        note = f"The {MAX_CLASS_ROWS} classes of {len(report.label_names)} with the lowest recall."
    lines = [
        "## Per class (final global adapter, eval split)",
        "",
        *([note, ""] if note else []),
        "| class | precision | recall | F1 | support |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for c in ids:
        lines.append(
            f"| {report.label_names[c]} | {report.precision[c]:.3f} | {report.recall[c]:.3f} | "
            f"{report.f1[c]:.3f} | {report.support[c]} |"
        )
    rare = report.rarest(3)
    lines += [
        "",
        "Rarest classes in the eval split: "
        + ", ".join(f"{report.label_names[c]} (recall {report.recall[c]:.3f})" for c in rare)
        + f". Always predicting the majority class scores {report.majority_rate:.3f}.",
        "",
    ]
    return lines


def reference_lines(
    summary: dict[str, Any], reference: Path, notes: Sequence[str] = ()
) -> list[str]:
    """Final accuracy and macro-F1 against a (centralised) reference run, and the run's
    difference to it, run − reference: negative where the run is below the reference.
    ``notes``: why the comparison may mislead (``reference_mismatch``)."""
    ref = read_summary(reference, REFERENCE_HINT)
    rows = [("accuracy", "final_accuracy"), ("macro-F1", "final_macro_f1")]
    lines = [
        f"## Against the reference run `{reference.name}`",
        "",
        *(f"- **Warning:** {note}." for note in notes),
        *([""] if notes else []),
        f"Reference: {ref.get('num_clients')} client(s), {ref.get('rounds_completed')} rounds.",
        "",
        f"| figure | this run | reference | {DIFFERENCE} |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, key in rows:
        mine, theirs = finite(summary.get(key)), finite(ref.get(key))
        if mine is None or theirs is None:
            continue
        lines.append(f"| {name} | {mine:.4f} | {theirs:.4f} | {100 * (mine - theirs):+.1f} |")
    return [*lines, ""]


DIFFERENCE = "run − reference (points)"  # negative: the run is below the reference


def reference_mismatch(run_dir: Path, reference: Path) -> list[str]:
    """Why comparing ``run_dir`` with ``reference`` may mislead: other data (dataset, its
    source or train file), other classes; [] when they match as far as the folders say."""

    def facts(folder: Path, hint: str) -> tuple[dict[str, Any], Any]:
        parts = read_partitions(folder, hint)
        data = read_config(folder).get("data", {})
        seen = {
            "dataset": parts.get("dataset") or read_summary(folder, hint).get("dataset"),
            "source": parts.get("source"),
            "train file": data.get("train_file"),
        }
        return seen, parts.get("label_names")

    (mine, my_classes), (theirs, their_classes) = (
        facts(run_dir, "the run folder is damaged"),
        facts(reference, REFERENCE_HINT),
    )
    notes = []
    differ = [k for k in mine if mine[k] and theirs[k] and mine[k] != theirs[k]]
    if differ:
        shown = "; ".join(f"{k} {theirs[k]} vs this run's {mine[k]}" for k in differ)
        notes.append(
            f"the reference was trained on other data ({shown}), so the comparison may be "
            "meaningless"
        )
    if my_classes and their_classes and my_classes != their_classes:
        notes.append(
            f"the reference has other classes ({', '.join(their_classes[:10])} vs this run's "
            f"{', '.join(my_classes[:10])}), so its accuracy is over other classes and the "
            "comparison may be meaningless"
        )
    for note in notes:
        log.warning("--reference %s: %s.", reference, note)
    return notes
