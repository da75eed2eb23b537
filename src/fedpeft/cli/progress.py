"""Rich progress display: one bar for rounds, one for the clients of the current round."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedpeft.server import Observer
from fedpeft.types import ClientRecord, RoundRecord


class RichObserver(Observer):
    def __init__(self, console: Console, total_rounds: int, first_round: int = 1) -> None:
        self.console = console
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self.rounds = self.progress.add_task(
            "rounds", total=total_rounds, completed=first_round - 1
        )
        self.clients = self.progress.add_task("clients", total=1, visible=False)

    def __enter__(self) -> RichObserver:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def on_round_start(self, rnd: int, sampled: Sequence[int]) -> None:
        self.progress.update(self.rounds, description=f"round {rnd}")
        self.progress.reset(
            self.clients, total=len(sampled), visible=True, description=f"  clients of round {rnd}"
        )

    def on_client_done(self, rnd: int, record: ClientRecord) -> None:
        loss = record.metrics.get("loss")
        what = f"loss {loss:.3f}" if loss is not None else record.status
        what = f"{record.config} {what}" if record.config and record.group != "global" else what
        self.progress.update(
            self.clients, advance=1, description=f"  client {record.client_id}: {what}"
        )

    def on_round_end(self, record: RoundRecord) -> None:
        self.progress.advance(self.rounds)
        e = _metrics(record.eval)
        self.progress.console.print(
            f"round {record.round}: accuracy {e['accuracy']}  macro-F1 {e['macro_f1']}  "
            f"train loss {record.train_loss:.4f}  clients {record.accepted}/{len(record.sampled)}  "
            f"up {record.bytes_up / 1e6:.2f} MB  {record.wall_time_s:.1f} s"
            + (f"  (simulated {record.sim_time_s:.0f} s)" if record.sim_time_s is not None else "")
            + (f"  groups: {', '.join(record.groups)}" if record.groups else "")
        )


def rounds_table(rounds: list[dict[str, Any]]) -> Table:
    table = Table(title="fedpeft run")
    for col in (
        "round",
        "acc",
        "F1",
        "eval loss",
        "train loss",
        "clients",
        "MB down",
        "MB up",
        "s",
    ):
        table.add_column(col, justify="right")
    for r in rounds:
        e = _metrics(r["eval"])
        table.add_row(
            str(r["round"]),
            e["accuracy"],
            e["macro_f1"],
            e["loss"],
            f"{r['train_loss']:.4f}",
            f"{r['accepted']}/{len(r['sampled'])}",
            f"{r['bytes_down'] / 1e6:.2f}",
            f"{r['bytes_up'] / 1e6:.2f}",
            f"{r['wall_time_s']:.1f}",
        )
    return table


def _metrics(e: dict[str, float]) -> dict[str, str]:
    """Evaluation metrics to 4 decimals; "–" in a round without evaluation (eval.every)."""
    return {k: f"{e[k]:.4f}" if k in e else "–" for k in ("accuracy", "macro_f1", "loss")}
