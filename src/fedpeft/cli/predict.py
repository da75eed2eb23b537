"""``fedpeft predict RUN_DIR``: a finished run's final global model on new texts or images.

Texts come from ``--text`` (repeatable) or a data file (``--file``: CSV, TSV, JSONL, JSON
or Parquet, read by the readers of custom training data, ``data.sources.read_rows``);
images from ``--image`` (repeatable) or ``--file`` (a folder, or a table of image paths:
``cli.predict_images``). The model is the run's own, rebuilt and loaded by
``server.trained`` (the verified state of the last round, the run's precision and
autocast), and it predicts through the run's own evaluation code: ``predict_logits`` for a
classifier (softmax probabilities), greedy generation parsed to a class
(``generate_answers`` + ``parse_answer``) for an instruction-tuned decoder, so the run's
eval file gives the run's final accuracy. A file that holds the run's label column, or a
folder of class subfolders, is scored (accuracy, macro-F1) over its labelled rows.

Supported: classifiers of texts or images (``model.task = "classify"``: encoders and
decoders with a classification head, image models) and instruction-tuned decoders
(``"instruct"``). Other tasks are refused with one sentence.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from fedpeft.cli.predict_images import file_image_inputs, image_inputs, image_logits, no_images
from fedpeft.cli.predict_inputs import (
    Inputs,
    check_modality,
    file_inputs,
    label_ids,
    labels_are_ids,
    takes_images,
    text_inputs,
)
from fedpeft.errors import FedpeftError
from fedpeft.files import write_atomic
from fedpeft.models import get_model_spec
from fedpeft.server.generate import INVALID
from fedpeft.server.instruct import task_kind
from fedpeft.server.trained import FinalModel, FinishedRun, final_model, text_data

SUPPORTED = (
    "classifiers of texts or images (`model.task = 'classify'`) and instruction-tuned "
    "decoders (`model.task = 'instruct'`)"
)
SHOWN = 10  # rows of a file shown in the terminal without --out
TEXT_WIDTH = 40  # characters of a text shown there


@dataclass(frozen=True)
class Predictions:
    """Per input, the ``k`` most likely classes (ids; ``INVALID``: a generated answer that
    names none) with their probabilities (None for generated answers)."""

    class_names: list[str]
    top: np.ndarray  # (n, k) class ids
    probability: np.ndarray | None  # (n, k), or None: generation gives no probability
    answers: list[str] | None  # instruction-tuned models: the generated text
    metrics: dict[str, float] | None  # accuracy, macro-F1 over the labelled rows
    scored: int  # labelled rows scored
    method: str  # what predicted, e.g. "lora r=8 alpha=16.0"

    def name(self, i: int, j: int = 0) -> str:
        c = int(self.top[i, j])
        return self.class_names[c] if c != INVALID else ""


def check_supported(run: FinishedRun) -> None:
    spec = get_model_spec(run.cfg.model.name)
    kind = task_kind(run.cfg, spec)
    if kind not in ("classify", "instruct"):
        raise FedpeftError(
            f"run {run.root} is a `model.task = {kind!r}` run on `{spec.name}`; "
            f"`fedpeft predict` takes {SUPPORTED}."
        )


def gather(
    run: FinishedRun,
    text: list[str] | None,
    image: list[str] | None,
    file: Path | None,
    text_column: str | None,
    image_column: str | None,
    label_column: str | None = None,
) -> Inputs:
    """The inputs that exactly one of ``--text``, ``--image`` and ``--file`` gives, read as
    the run's model takes them (a file holds texts or image paths; a folder, images)."""
    images = image is not None or image_column is not None or (file is not None and file.is_dir())
    check_modality(run, images, text is not None or text_column is not None)
    if text is not None:
        return text_inputs(text, run)
    if image is not None:
        return image_inputs(image, run)
    assert file is not None
    if takes_images(run):
        return file_image_inputs(file, image_column, run, label_column)
    return file_inputs(file, text_column, run, label_column=label_column)


def predict(
    run: FinishedRun, inputs: Inputs, batch_size: int | None, top_k: int, console: Console
) -> Predictions:
    """The run's final global model's predictions for ``inputs`` (a progress bar on
    ``console`` when it is a terminal)."""
    from fedpeft.cli.progress import items_progress
    from fedpeft.server.evaluate import classification_metrics, predict_logits
    from fedpeft.server.generate import answer_metrics, generate_answers, parse_answer

    names = run.label_names
    instruct = task_kind(run.cfg) == "instruct"
    if top_k > (1 if instruct else len(names)):
        most = "1 (a generated answer is one class)" if instruct else f"{len(names)} (its classes)"
        raise FedpeftError(f"--top-k is {top_k} but this run can give at most {most}.")
    ids = label_ids(inputs, names)
    known = None if ids is None else ids >= 0
    if inputs.images is not None:
        data = no_images(run)  # decoded and predicted a chunk at a time (``image_logits``)
    else:
        data = text_data(run, inputs.items, None if ids is None else ids.clip(0))
    final = final_model(run, data)
    task, model, size = final.task, final.model, batch_size or final.task.eval_batch_size
    split = task.data.eval
    console.print(_header(run, final, inputs), highlight=False)
    with items_progress(console, len(inputs.items), "predicting") as advance:
        if instruct:
            answers = generate_answers(model, split, size, task.device, advance)  # type: ignore[arg-type]
        elif inputs.images is not None:
            logits = image_logits(run, model, inputs.images, size, task.device, advance)
        else:
            logits = predict_logits(model, split, size, task.device, advance)
    metrics = None
    scored = 0 if known is None else int(known.sum())
    if instruct:
        top = np.asarray([[parse_answer(a, names)] for a in answers], dtype=np.int64)
        if ids is not None and known is not None and scored:
            metrics = answer_metrics(top[known, 0], ids[known], len(names))
        return Predictions(names, top, None, answers, metrics, scored, final.method)
    probs, best = torch.softmax(logits, dim=-1).topk(top_k, dim=-1)
    if ids is not None and known is not None and scored:
        metrics = classification_metrics(logits[torch.from_numpy(known)], ids[known])
    return Predictions(names, best.numpy(), probs.numpy(), None, metrics, scored, final.method)


def _header(run: FinishedRun, final: FinalModel, inputs: Inputs) -> str:
    p = run.cfg.personalization
    note = (
        " (the global model's predictions: the clients' personal modules stay with them)"
        if p.mode != "none" or p.baselines
        else ""
    )
    main = f"main group `{run.state.main}` · " if run.state.main != "global" else ""
    n = len(inputs.items)
    return (
        f"[bold]fedpeft predict[/] {run.cfg.model.name} · {main}{final.method} · "
        f"round {run.state.round} · {n} {inputs.what}{'s' * (n != 1)}{note}"
    )


def item_lines(inputs: Inputs, preds: Predictions) -> list[str]:
    """One line per input (an image's starts with its path): its class and probability
    (then the next most likely classes with theirs); an instruction-tuned model's: its
    class and the answer it generated."""
    lines = []
    for i in range(len(preds.top)):
        if preds.probability is None:
            assert preds.answers is not None
            cells = [f"{preds.name(i) or '(no class)'}\t{preds.answers[i]!r}"]
        else:
            cells = [
                f"{preds.name(i, j)}\t{preds.probability[i, j]:.4f}"
                for j in range(len(preds.top[i]))
            ]
        path = [inputs.items[i]] if inputs.images is not None else []
        lines.append("\t".join([*path, *cells]))
    return lines


def _columns(inputs: Inputs, preds: Predictions) -> list[str]:
    cols = [inputs.column] + ([inputs.label_column] if inputs.labels is not None else [])
    if preds.probability is None:
        return [*cols, "predicted", "answer"]
    cols += ["predicted", "probability"]
    for j in range(2, preds.top.shape[1] + 1):
        cols += [f"predicted_{j}", f"probability_{j}"]
    return cols


def _row(inputs: Inputs, preds: Predictions, i: int, digits: int) -> list[str]:
    cells = [inputs.items[i]]
    if inputs.labels is not None:
        cells.append(inputs.labels[i] or "")
    if preds.probability is None:
        assert preds.answers is not None
        return [*cells, preds.name(i), preds.answers[i]]
    for j in range(preds.top.shape[1]):
        cells += [preds.name(i, j), f"{preds.probability[i, j]:.{digits}f}"]
    return cells


def check_device(device: str) -> None:
    """``--device``: auto, cpu, or cuda where this machine has one (before any work)."""
    if device not in ("auto", "cpu", "cuda"):
        raise FedpeftError(f"--device is {device!r}; give auto, cpu or cuda.")
    if device == "cuda" and not torch.cuda.is_available():
        raise FedpeftError("--device is 'cuda' but no CUDA device is available; use auto or cpu.")


def check_out(path: Path, source: Path) -> None:
    """Refuses an ``--out`` that is a folder or the input file itself (before any work)."""
    if path.is_dir():
        raise FedpeftError(f"--out {path} is a folder; name a file to write, e.g. preds.csv.")
    if path.resolve() == source.resolve():
        raise FedpeftError(f"--out {path} is the input file; name another file.")


def write_csv(path: Path, inputs: Inputs, preds: Predictions) -> None:
    """Every input's row (text, label when the file has one, predictions) as CSV, written
    atomically (``check_out`` first)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(_columns(inputs, preds))
    writer.writerows(_row(inputs, preds, i, 6) for i in range(len(inputs.items)))
    try:
        # a file name that is not UTF-8 (Linux names are bytes) is written as its own bytes
        write_atomic(path, buf.getvalue().encode("utf-8", "surrogateescape"))
    except OSError as e:
        raise FedpeftError(f"cannot write --out {path} ({e.strerror}).") from None


def table(inputs: Inputs, preds: Predictions, rows: int = SHOWN) -> Table:
    """The first ``rows`` inputs with their predictions; with ``--top-k`` the next most
    likely classes share one column, a line each."""
    out = Table()
    k = preds.top.shape[1]
    cols = _columns(inputs, preds)[: None if k == 1 else -2 * (k - 1)]
    for col in [*cols, *(["next"] if k > 1 else [])]:
        out.add_column(col, overflow="fold")
    for i in range(min(rows, len(inputs.items))):
        cells = _row(inputs, preds, i, 4)
        cells[0] = _cut(cells[0], TEXT_WIDTH, keep_end=inputs.images is not None)
        if k > 1:
            rest = cells[len(cols) :]
            cells = [
                *cells[: len(cols)],
                "\n".join(map(" ".join, zip(rest[::2], rest[1::2], strict=True))),
            ]
        elif preds.answers is not None:
            cells[-1] = _cut(cells[-1], TEXT_WIDTH)
        out.add_row(*cells)
    return out


def _cut(text: str, width: int, keep_end: bool = False) -> str:
    """``text`` on one line, at most ``width`` characters: a cut one ends with an ellipsis
    or, ``keep_end`` (a path: its file name matters), starts with one."""
    flat = " ".join(text.split())
    if len(flat) <= width:
        return flat
    return "…" + flat[1 - width :] if keep_end else flat[: width - 1] + "…"


def metrics_line(inputs: Inputs, preds: Predictions) -> str | None:
    if preds.metrics is None:
        return None
    m, n = preds.metrics, preds.scored
    ids = f", read as class ids 0 … {len(preds.class_names) - 1}" * labels_are_ids(
        inputs, preds.class_names
    )
    against = (
        f"the class folders ({n} image{'s' * (n != 1)})"
        if inputs.folder
        else f"`{inputs.label_column}` ({n} labelled row{'s' * (n != 1)}{ids})"
    )
    return f"accuracy {m['accuracy']:.4f} · macro-F1 {m['macro_f1']:.4f} against {against}"
