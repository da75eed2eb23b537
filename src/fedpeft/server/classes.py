"""Per-class quality of a classifier: precision, recall, F1, support and the confusion
matrix (scikit-learn's ``precision_recall_fscore_support`` and ``confusion_matrix``), saved
as ``classes.json`` in the run folder for the report.

``evaluate_run(run_dir)`` rebuilds a finished run's model from its ``config.toml`` and
loads the global adapter of its last round (verified; never an older round's); a runtime
that still holds its task can call ``class_report(labels, preds, names)`` on the logits it
already has instead.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fedpeft.errors import FedpeftError
from fedpeft.files import read_json_object

if TYPE_CHECKING:
    from fedpeft.server.state import ServerState
    from fedpeft.server.store import RunStore
    from fedpeft.server.task import Task

CLASSES = "classes.json"
VERSION = 1


@dataclass(frozen=True)
class ClassReport:
    """Per-class figures, in label-id order; ``confusion[i][j]``: true i predicted j."""

    label_names: list[str]
    precision: list[float]
    recall: list[float]
    f1: list[float]
    support: list[int]
    confusion: list[list[int]]
    accuracy: float
    macro_f1: float

    def to_json(self) -> dict[str, Any]:
        return {"version": VERSION, **asdict(self)}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> ClassReport:
        """The report in ``raw``, verified; ``ValueError`` says what is wrong."""
        if raw.get("version") != VERSION:
            raise ValueError(f"it has version {raw.get('version')!r}, not {VERSION}")
        missing = [k for k in cls.__dataclass_fields__ if k not in raw]
        if missing:
            raise ValueError(f"it lacks {', '.join(missing)}")
        report = cls(**{k: raw[k] for k in cls.__dataclass_fields__})
        n = len(report.label_names) if isinstance(report.label_names, list) else -1
        kinds = {
            "label_names": (report.label_names, str),
            **{k: (getattr(report, k), float) for k in ("precision", "recall", "f1")},
            "support": (report.support, int),
            **{f"confusion row {i}": (row, int) for i, row in enumerate(report.confusion)},
        }
        for name, (values, kind) in kinds.items():
            if not _list_of(values, kind, n):
                raise ValueError(f"its {name} is not a list of {n} {kind.__name__}s")
        if len(report.confusion) != n or not all(
            _list_of([x], float, 1) for x in (report.accuracy, report.macro_f1)
        ):
            raise ValueError(f"its confusion matrix is not {n} × {n} or a figure is not a number")
        return report

    def rarest(self, k: int) -> list[int]:
        """The ``k`` classes with the fewest evaluation examples (ties: lower id first)."""
        return sorted(range(len(self.support)), key=lambda c: (self.support[c], c))[:k]

    @property
    def majority_rate(self) -> float:
        """Accuracy of always predicting the most frequent class: the chance baseline."""
        return max(self.support) / max(1, sum(self.support))


def _list_of(values: Any, kind: type, n: int) -> bool:
    """``values`` is a list of ``n`` ``kind`` (float: any number), no booleans."""
    want = (int, float) if kind is float else (kind,)
    return (
        isinstance(values, list)
        and len(values) == n
        and all(isinstance(v, want) and not isinstance(v, bool) for v in values)
    )


def class_report(labels: np.ndarray, preds: np.ndarray, names: list[str]) -> ClassReport:
    """Per-class precision/recall/F1 over every class in ``names`` (0 where undefined)."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    ids = list(range(len(names)))
    p, r, f, s = precision_recall_fscore_support(
        labels, preds, labels=ids, average=None, zero_division=0
    )
    cm = confusion_matrix(labels, preds, labels=ids)
    return ClassReport(
        label_names=list(names),
        precision=[float(x) for x in p],
        recall=[float(x) for x in r],
        f1=[float(x) for x in f],
        support=[int(x) for x in s],
        confusion=cm.astype(int).tolist(),
        accuracy=float((labels == preds).mean()),
        macro_f1=float(np.mean(f)),
    )


def read_class_report(run_dir: Path) -> ClassReport | None:
    """``classes.json``, verified (None when there is none); a damaged one is refused with
    one sentence: it is derived from the run, so deleting it lets the report rebuild it."""
    path = run_dir / CLASSES
    if not path.is_file():
        return None
    hint = f"delete it and run `fedpeft report {run_dir}` again to rebuild it"
    try:
        return ClassReport.from_json(read_json_object(path, hint))
    except (TypeError, ValueError) as e:
        raise FedpeftError(f"{path} is not a per-class report ({e}); {hint}.") from None


REPORTING = ("cannot be evaluated per class", "no classes.json was written")


def evaluate_run(run_dir: Path) -> ClassReport | None:
    """The per-class report of a finished run's global adapter on its eval split, written
    to ``classes.json``; None where there is no single classifier head (instruction
    tuning, allocated runs of several method groups), nothing was trained, or the folder
    is not a finished run's."""
    from fedpeft.config import build_config, read_toml
    from fedpeft.server.instruct import task_kind
    from fedpeft.server.store import CONFIG, RunStore
    from fedpeft.server.task import build_task
    from fedpeft.server.trained import final_state

    if not (run_dir / CONFIG).is_file() or not (run_dir / "summary.json").is_file():
        return None  # not a finished run: nothing to evaluate
    store = RunStore.open_existing(run_dir)
    cfg = build_config(read_toml(store.root / CONFIG), source=str(store.root / CONFIG))
    if task_kind(cfg) == "instruct" or cfg.allocation.enabled:
        return None  # generated answers / one model per method group: not a single head
    # the final round's state, verified, with the config it was made with: never an older
    # round's in place of a damaged last one (the report would show another model's figures)
    state = final_state(store.root, cfg, REPORTING)
    return write_class_report(build_task(cfg), state, store)


def write_class_report(task: Task, state: ServerState, store: RunStore) -> ClassReport | None:
    """``classes.json`` for the main group's global adapter of a classifier run (None and
    nothing written for instruction tuning, question answering, allocated runs or an
    untrained run)."""
    from fedpeft.peft import set_adapter_state
    from fedpeft.server.evaluate import predict_logits

    if task.kind != "classify" or task.cfg.allocation.enabled or state.main not in state.adapters:
        return None
    data = task.data
    set_adapter_state(task.model, {k: v.to(task.device) for k, v in state.adapter.items()})
    logits = predict_logits(task.model, data.eval, task.eval_batch_size, task.device)
    labels = np.asarray(data.eval.labels)
    report = class_report(labels, logits.argmax(-1).numpy(), data.dataset.label_names)
    store.write_json(CLASSES, report.to_json())
    return report
