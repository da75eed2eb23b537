"""Live tracking of a run with the tools people already use: TensorBoard event files in
``<run>/tensorboard/`` (``tensorboard --logdir runs/``), and MLflow (an optional extra) with
a local store — ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<run.output_dir>/mlflow.db``.

Each round logs the central evaluation (``eval/<metric>``, and ``group/<name>/<metric>`` in
heterogeneous runs), the training loss, bytes up and down, and wall, client and simulated
times, with the round as the step."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from fedpeft.errors import FedpeftError
from fedpeft.server import Observer
from fedpeft.types import ClientRecord, RoundRecord

Tracker = Literal["tensorboard", "mlflow"]
TENSORBOARD_DIR = "tensorboard"


def round_scalars(record: RoundRecord) -> dict[str, float]:
    """What a round logs, by tag; values that are missing or not finite are left out."""
    values: dict[str, Any] = {f"eval/{k}": v for k, v in record.eval.items()}
    for group, metrics in record.groups.items():
        values.update({f"group/{group}/{k}": v for k, v in metrics.items()})
    values.update(
        {
            "train/loss": record.train_loss if record.accepted else None,
            "clients/accepted": record.accepted,
            "clients/rejected": record.rejected,
            "bytes/up": record.bytes_up,
            "bytes/down": record.bytes_down,
            "time/wall_s": record.wall_time_s,
            "time/client_s": record.client_time_s,
            "time/eval_s": record.eval_time_s,
            "time/sim_s": record.sim_time_s,
            "time/sim_clock_s": record.sim_clock_s,
        }
    )
    return {
        k: float(v)
        for k, v in values.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    }


class TrackingObserver(Observer):
    """An observer that holds something open (a writer, a tracking run) until ``close``."""

    def close(self) -> None: ...


class TensorBoardObserver(TrackingObserver):
    """Writes each round's scalars to ``<run>/tensorboard/``; a resumed run purges the
    steps from its first new round on, so a curve never holds a round twice."""

    def __init__(self) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self._writer_cls = SummaryWriter
        self.run_dir: Path | None = None
        self.writer: Any = None

    def on_run_start(self, run_dir: Path) -> None:
        self.run_dir = run_dir

    def on_round_start(self, rnd: int, sampled: Sequence[int]) -> None:
        if self.writer is None and self.run_dir is not None:
            log_dir = str(self.run_dir / TENSORBOARD_DIR)
            self.writer = self._writer_cls(log_dir=log_dir, purge_step=rnd)

    def on_round_end(self, record: RoundRecord) -> None:
        if self.writer is None:
            return
        for tag, value in round_scalars(record).items():
            self.writer.add_scalar(tag, value, record.round)
        self.writer.flush()  # watched live: every round is on disk when it ends

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class MlflowObserver(TrackingObserver):
    def __init__(self, output_dir: str, experiment: str) -> None:
        try:
            import mlflow
        except ImportError:
            raise FedpeftError(
                "`--track mlflow` needs MLflow, which is not installed; install the optional "
                "extra (pip install 'fedpeft[mlflow]') or track with tensorboard."
            ) from None
        self.mlflow = mlflow
        uri = (
            os.environ.get("MLFLOW_TRACKING_URI")
            or f"sqlite:///{Path(output_dir).resolve()}/mlflow.db"
        )
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment(experiment)
        self.active = False

    def on_run_start(self, run_dir: Path) -> None:
        self.mlflow.start_run(run_name=run_dir.name)
        self.mlflow.set_tag("fedpeft.run_dir", str(run_dir))
        self.active = True

    def on_round_end(self, record: RoundRecord) -> None:
        if self.active:
            safe = {k.replace("/", "."): v for k, v in round_scalars(record).items()}
            self.mlflow.log_metrics(safe, step=record.round)

    def close(self) -> None:
        if self.active:
            self.mlflow.end_run()


class Observers(Observer):
    """Several observers as one (progress display and trackers)."""

    def __init__(self, *observers: Observer) -> None:
        self.observers = observers

    def on_run_start(self, run_dir: Path) -> None:
        for o in self.observers:
            o.on_run_start(run_dir)

    def on_round_start(self, rnd: int, sampled: Sequence[int]) -> None:
        for o in self.observers:
            o.on_round_start(rnd, sampled)

    def on_client_done(self, rnd: int, record: ClientRecord) -> None:
        for o in self.observers:
            o.on_client_done(rnd, record)

    def on_round_end(self, record: RoundRecord) -> None:
        for o in self.observers:
            o.on_round_end(record)


def make_trackers(names: Sequence[str], output_dir: str, experiment: str) -> list[TrackingObserver]:
    """The observers for ``--track`` names (built before the run, so a missing MLflow stops
    it at once)."""
    out: list[TrackingObserver] = []
    for name in dict.fromkeys(names):
        if name == "tensorboard":
            out.append(TensorBoardObserver())
        elif name == "mlflow":
            out.append(MlflowObserver(output_dir, experiment))
        else:
            raise FedpeftError(f"`--track` is {name!r}; expected tensorboard or mlflow.")
    return out
