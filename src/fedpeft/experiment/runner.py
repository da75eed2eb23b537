"""Runs an experiment's runs as separate ``fedpeft run`` processes within a core and memory
budget: a run that crashes fails alone, and each holds only the threads it was given.

Finished runs are skipped and interrupted ones resumed from their checkpoint, so running
the same command again continues the grid. A later stage of a staged variant starts when
the stage before it is done, from that stage's run folder. Ctrl-C stops every run at its
next checkpointed round boundary (SIGINT to each run's process group).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import psutil
import tomli_w

from fedpeft.experiment.layout import ExperimentDir, RunState, lock_log, read_json
from fedpeft.experiment.plan import Plan, PlannedRun
from fedpeft.experiment.spec import Settings, nest

POLL_S = 0.5
STOP_WAIT_S = 120.0
BUSY = "another invocation's process is running it (it holds its log.txt); run again once it ends"


@dataclass
class Running:
    run: PlannedRun
    proc: subprocess.Popen[bytes]
    log: IO[bytes]
    memory_mib: float
    started: float = field(default_factory=time.monotonic)


@dataclass
class GridStatus:
    """Where the grid stands; what the progress display and the final line show."""

    total: int
    done: set[str] = field(default_factory=set)
    failed: dict[str, str] = field(default_factory=dict)  # key → why
    running: dict[str, Running] = field(default_factory=dict)
    skipped: int = 0  # done before this invocation


Notify = Callable[[GridStatus, str], None]


class Runner:
    def __init__(self, plan: Plan, folder: ExperimentDir, settings: Settings) -> None:
        self.plan, self.folder, self.settings = plan, folder, settings
        budget = settings.budget
        total_mib = psutil.virtual_memory().total / 2**20
        self.memory_mib = budget.memory_mib or 0.8 * total_mib
        self.estimates: dict[str, float] = {}  # variant → the largest peak RSS seen (MiB)

    def run(self, notify: Notify) -> GridStatus:
        status = GridStatus(total=len(self.plan.runs))
        pending = []
        for run in self.plan.runs:
            if self.folder.state(run.key, run.rounds) is RunState.DONE:
                status.done.add(run.key)
                status.skipped += 1
                self._learn(run)
            else:
                pending.append(run)
        notify(status, "")  # the runs done before: counted even when none is left to run
        try:
            while pending or status.running:
                self._reap(status, notify)
                pending = self._start_ready(pending, status, notify)
                notify(status, "")
                time.sleep(POLL_S)
        except KeyboardInterrupt:
            self.stop(status)
            raise
        return status

    def _reap(self, status: GridStatus, notify: Notify) -> None:
        for key, r in list(status.running.items()):
            code = r.proc.poll()
            if code is None:
                continue
            r.log.close()
            del status.running[key]
            if code == 0 and self.folder.state(key, r.run.rounds) is RunState.DONE:
                status.done.add(key)
                self._learn(r.run)
                notify(status, f"done {key} ({time.monotonic() - r.started:.0f} s)")
            else:
                status.failed[key] = f"exit code {code}: {_last_line(self.folder.log_path(key))}"
                notify(status, f"failed {key}: {status.failed[key]}")

    def _start_ready(
        self, pending: list[PlannedRun], status: GridStatus, notify: Notify
    ) -> list[PlannedRun]:
        left = []
        for run in pending:
            if run.after is not None and run.after in status.failed:
                status.failed[run.key] = f"its previous stage {run.after} failed"
                notify(status, f"skipped {run.key}: {status.failed[run.key]}")
                continue
            if (run.after is not None and run.after not in status.done) or not self._fits(
                run, status
            ):
                left.append(run)
                continue
            started = self._launch(run)
            if started is None:
                status.failed[run.key] = BUSY
                notify(status, f"skipped {run.key}: {BUSY}")
                continue
            status.running[run.key] = started
            notify(status, f"started {run.key}")
        return left

    def _fits(self, run: PlannedRun, status: GridStatus) -> bool:
        if len(status.running) >= self.settings.budget.slots:
            return False
        if not status.running:
            return True  # one run at a time always goes, whatever the estimate
        need = self._estimate(run)
        used = sum(r.memory_mib for r in status.running.values())
        available = psutil.virtual_memory().available / 2**20
        return used + need <= self.memory_mib and need <= available

    def _estimate(self, run: PlannedRun) -> float:
        return self.estimates.get(run.variant, float(self.settings.budget.run_memory_mib))

    def _learn(self, run: PlannedRun) -> None:
        folder = self.folder.run_folder(run.key)
        summary = read_json(folder / "summary.json") if folder else None
        peak = summary.get("peak_rss_bytes") if summary else None
        if isinstance(peak, int | float):
            mib = 1.1 * peak / 2**20  # a margin over the measured peak
            self.estimates[run.variant] = max(self.estimates.get(run.variant, 0.0), mib)

    def _launch(self, run: PlannedRun) -> Running | None:
        """Starts ``run``; None when another invocation's run process holds its folder."""
        home = self.folder.run_home(run.key)
        home.mkdir(parents=True, exist_ok=True)
        log = self.folder.log_path(run.key).open("ab")
        if not lock_log(log):  # before its folder is looked at, let alone cleared
            log.close()
            return None
        state = self.folder.state(run.key, run.rounds)
        folder = self.folder.run_folder(run.key)
        if state is RunState.PARTIAL and folder is not None:
            args = ["--resume", str(folder), "--set", f"run.rounds={run.rounds}"]
        else:
            self.folder.clear_stale(run.key)
            args = ["--config", str(self.write_config(run))]
        args += ["--runtime", self.settings.runtime]
        for tracker in self.settings.track:
            args += ["--track", tracker]
        proc = subprocess.Popen(
            [sys.executable, "-m", "fedpeft.cli.main", "run", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: Ctrl-C reaches it via stop()
            # a grid started in the background (`cmd &`) inherits SIGINT ignored, and so
            # would its runs: stop() could then only kill them, mid-round (cli/main.py)
            env={**os.environ, "COLUMNS": "120", "FEDPEFT_SIGINT": "1"},
        )
        return Running(run, proc, log, self._estimate(run))

    def write_config(self, run: PlannedRun) -> Path:
        keys: dict[str, Any] = dict(run.keys)
        if run.from_previous is not None and run.after is not None:
            previous = self.folder.run_folder(run.after)
            keys[run.from_previous] = str(previous.resolve()) if previous else ""
        keys.update(
            {
                "run.seed": run.seed,
                "run.output_dir": str(self.folder.run_home(run.key).resolve()),
                "run.name": "run",
                # a run is given threads_per_run cores: that many clients train at once
                # (one thread each), not one forked worker per core of the machine, which
                # would put budget.cores × cores CPU-bound processes on its cores
                "run.threads": self.settings.budget.threads_per_run,
                "run.workers": self.settings.budget.threads_per_run,
            }
        )
        path = self.folder.config_path(run.key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(tomli_w.dumps(nest(keys)), encoding="utf-8")
        return path

    def stop(self, status: GridStatus) -> None:
        """SIGINT to every run (each saves its last finished round), then waits."""
        for r in status.running.values():
            _signal(r.proc, signal.SIGINT)
        deadline = time.monotonic() + STOP_WAIT_S
        for r in status.running.values():
            try:
                r.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal(r.proc, signal.SIGKILL)
                r.proc.wait()
            r.log.close()


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (a scheduler's or a service manager's stop) stops the grid as Ctrl-C does —
    every run at its round boundary — instead of killing the runner and orphaning its runs,
    which live in their own process groups."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _signal(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # it ended already
        os.killpg(proc.pid, sig)  # the run's own group (start_new_session), by its id


def _last_line(path: Path) -> str:
    try:
        lines = [x.strip() for x in path.read_text(errors="replace").splitlines() if x.strip()]
    except OSError:
        return "no log"
    return lines[-1][:300] if lines else "no output"
