"""Rich progress display: one bar for rounds, one for the clients of the current round;
one bar for the items of a long job (``items_progress``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedpeft.report.fmt import MISSING, clients_text, eval_of, num, scaled
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
        e = record.eval
        loss = num(record.train_loss) if record.accepted else MISSING
        self.progress.console.print(
            f"round {record.round}: accuracy {num(e.get('accuracy'))}  "
            f"macro-F1 {num(e.get('macro_f1'))}  "
            f"train loss {loss}  clients {record.accepted}/{len(record.sampled)}  "
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
        e = eval_of(r)
        table.add_row(
            str(r.get("round")),
            num(e.get("accuracy")),
            num(e.get("macro_f1")),
            num(e.get("loss")),
            num(r.get("train_loss")) if r.get("accepted") else MISSING,
            clients_text(r),
            scaled(r.get("bytes_down"), 1e6),
            scaled(r.get("bytes_up"), 1e6),
            num(r.get("wall_time_s"), ".1f"),
        )
    return table


@contextmanager
def items_progress(console: Console, total: int, what: str) -> Iterator[Callable[[int], None]]:
    """A bar of ``total`` items on a terminal (none elsewhere, e.g. in a pipe), cleared when
    done; yields the function that advances it by a number of items."""
    progress = Progress(
        TextColumn(what),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )
    task = progress.add_task(what, total=total)
    with progress:
        yield lambda n: progress.advance(task, n)
