"""Report sections that explain a run: the configuration that matters, per-class quality,
and the gap to a centralised reference run."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedpeft.server.classes import ClassReport

MAX_CLASS_ROWS = 25  # more classes: the worst by recall, then a note


def read_config(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "config.toml"
    return tomllib.loads(path.read_text()) if path.is_file() else {}


def config_lines(
    cfg: dict[str, Any], chosen_lr: float | None = None, moved: Sequence[int] = ()
) -> list[str]:
    """The settings a reader needs to judge the numbers, as Markdown bullets; ``moved``:
    the rounds after which the head's bias was moved (``server.bias_refresh``)."""
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
    optimizer = server.get("optimizer", "none")
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
        f"- data `{data.get('dataset')}`: {data.get('train_size') or 'all'} train examples over "
        f"{data.get('num_clients')} clients, {partition} · seed {run.get('seed')}",
        f"- clients: {work} a round, batch {client.get('batch_size')}, lr {lr_text}, "
        f"label skew `{client.get('label_skew', 'none')}` (τ {client.get('label_skew_tau', '-')})"
        f", FedProx μ {client.get('proximal_mu')}",
        f"- server: `{server.get('aggregator')}`, optimiser {optimizer}, "
        f"{server.get('fraction')} of clients a round, {run.get('rounds')} rounds · head "
        f"started `{server.get('head_init', 'random')}`, set again "
        f"`{server.get('head_refresh', 'none')}`, bias moved "
        + (f"after round {', '.join(map(str, moved))}" if moved else "never")
        + f" (`bias_refresh = {server.get('bias_refresh', 'none')}`)",
    ]


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


def reference_lines(summary: dict[str, Any], reference: Path) -> list[str]:
    """Final accuracy and macro-F1 against a (centralised) reference run, and the gap."""
    ref = json.loads((reference / "summary.json").read_text())
    rows = [("accuracy", "final_accuracy"), ("macro-F1", "final_macro_f1")]
    lines = [
        f"## Against the reference run `{reference.name}`",
        "",
        f"Reference: {ref.get('num_clients')} client(s), {ref.get('rounds_completed')} rounds.",
        "",
        "| figure | this run | reference | gap (points) |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, key in rows:
        mine, theirs = summary.get(key), ref.get(key)
        if mine is None or theirs is None:
            continue
        lines.append(f"| {name} | {mine:.4f} | {theirs:.4f} | {100 * (theirs - mine):+.1f} |")
    return [*lines, ""]
