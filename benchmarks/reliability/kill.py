"""Kill-and-resume: ``fedpeft run`` SIGKILLed at points spread over an uninterrupted run
and at points aimed at its writes, then ``fedpeft run --resume``d once; the resumed folder
is compared with an uninterrupted run's.

A trial ends as ``equal`` (exit 0, the exported adapter byte for byte and the logs but for
measured values), ``refused`` (exit 2 with one sentence), ``different`` or ``crashed`` (a
defect), or ``not_killed`` (the run finished before the kill landed).
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .common import TINY, Exit, compare, leftovers, merged, sets
from .launch import Launcher, Proc

POLL_S = 0.0005


@dataclass(frozen=True)
class Point:
    """Where a trial kills: as soon as ``event`` is seen (``folder``, ``round0``,
    ``line<k>``, ``writing<k>``, ``export``, ``summary``), then ``delay`` seconds later."""

    event: str
    delay: float = 0.0
    label: str = ""

    @property
    def name(self) -> str:
        return self.label or self.event


def run_args(out: Path, extra: tuple[str, ...]) -> list[str]:
    return ["run", *sets((*TINY, *extra, f"run.output_dir={str(out)!r}", "run.name='kill'"))]


def run_folder(out: Path) -> Path | None:
    return next(iter(sorted(out.glob("kill-*"))), None) if out.is_dir() else None


def _lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except OSError:
        return 0


def seen(run: Path, event: str) -> bool:
    """Is ``event`` visible in the run folder now?"""
    ckpt = run / "checkpoint"
    if event == "folder":
        return True
    if event == "round0":
        return (ckpt / "round-000000.manifest.json").exists()
    if event.startswith("line"):
        return _lines(run / "metrics.jsonl") >= int(event[4:])
    if event.startswith("writing"):  # round k's files (or their temporaries) before its manifest
        stem = f"round-{int(event[7:]):06d}"
        try:
            names = os.listdir(ckpt)
        except OSError:
            return False
        return f"{stem}.manifest.json" not in names and any(stem in n for n in names)
    if event == "export":
        return (run / ".adapter.tmp").exists()
    if event == "summary":
        return (run / "summary.json").exists()
    raise ValueError(f"unknown event {event!r}")


def timeline(
    launcher: Launcher, out: Path, extra: tuple[str, ...], log: Path, rounds: int
) -> dict[str, float]:
    """An uninterrupted run, and when each event was first seen (seconds after its folder)."""
    events = ["round0", *(f"line{k}" for k in range(1, rounds + 1)), "export", "summary"]
    proc = launcher.start(run_args(out, extra), log)
    t0, first, run = time.perf_counter(), {}, None
    while proc.poll() is None:
        run = run or run_folder(out)
        if run is not None:
            first.setdefault("folder", time.perf_counter())
            for e in events:
                if e not in first and seen(run, e):
                    first[e] = time.perf_counter()
        time.sleep(POLL_S)
    end = time.perf_counter()
    if proc.returncode != 0 or "folder" not in first:
        raise RuntimeError(f"the uninterrupted run failed: {log.read_text()[-2000:]}")
    base = first["folder"]
    return {"imports_s": base - t0, **{e: t - base for e, t in first.items()}, "exit": end - base}


def kill_at(proc: Proc, out: Path, point: Point) -> tuple[Path | None, bool]:
    """SIGKILLs ``proc`` at ``point``; (its run folder, whether the kill landed)."""
    run, seen_at = None, None
    while proc.poll() is None:
        run = run or run_folder(out)
        if run is not None and seen_at is None and seen(run, point.event):
            seen_at = time.perf_counter()
        if seen_at is not None and time.perf_counter() - seen_at >= point.delay:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return run, True
        time.sleep(POLL_S)
    return run or run_folder(out), False


def snapshot(run: Path) -> dict[str, Any]:
    """What the kill left: committed rounds, uncommitted files, temporaries, log lines."""
    ckpt = run / "checkpoint"
    names = sorted(os.listdir(ckpt)) if ckpt.is_dir() else []
    committed = sorted(
        int(n[6:12]) for n in names if n.endswith(".manifest.json") and n.startswith("round-")
    )
    return {
        "committed_rounds": committed,
        "uncommitted": [
            n for n in names if n.startswith("round-") and int(n[6:12]) not in committed
        ],
        "temporaries": leftovers(run),
        "metrics_lines": _lines(run / "metrics.jsonl"),
        "adapter": (run / "adapter").is_dir(),
        "summary": (run / "summary.json").is_file(),
    }


def trial(
    launcher: Launcher,
    point: Point,
    extra: tuple[str, ...],
    reference: Path,
    work: Path,
    resume: Callable[[Path, Path], Exit] | None = None,
) -> dict[str, Any]:
    """One ``fedpeft run`` process killed at ``point``, then ``fedpeft run --resume``d once
    (by ``resume`` when given)."""
    work.mkdir(parents=True)
    out = work / "runs"
    proc = launcher.start(run_args(out, extra), work / "killed.log")
    run, killed = kill_at(proc, out, point)
    row: dict[str, Any] = {"point": point.name, "killed": killed}
    if run is None:
        return {**row, "outcome": "no_folder", "exit_killed": proc.returncode}
    row["after_kill"] = snapshot(run)
    log = work / "resumed.log"
    resumed = resume(run, log) if resume else launcher.run(["run", "--resume", str(run)], log)
    row.update(exit=resumed.code, resume_s=round(resumed.seconds, 1))
    if resumed.code == 0:
        row.update(compare(run, reference), leftovers=leftovers(run))
        ok = row["adapter_equal"] and row["logs_equal"] and not row["leftovers"]
        row["outcome"] = ("equal" if ok else "different") if killed else "not_killed"
    elif resumed.one_sentence:
        row.update(outcome="refused", sentence=resumed.error())
    else:
        row.update(outcome="crashed", stderr_tail=resumed.stderr[-1500:])
    return row


def points(tl: dict[str, float], rounds: int, timed: int, events: bool) -> list[Point]:
    """``timed`` kills spread over the run: after round 0's checkpoint and after each
    round's log line, at fractions of a round's duration (from the timeline ``tl``), so
    that they land through every round whatever the machine's load; and, with ``events``,
    one kill as soon as each of the run's writes is seen."""
    anchors = ["round0", *(f"line{k}" for k in range(1, rounds + 1))]
    per = -(-timed // len(anchors))
    round_s = (tl[f"line{rounds}"] - tl["round0"]) / rounds
    fractions = [(j + 1) / (per + 1) for j in range(per)]
    out = [
        Point(a, f * round_s, f"{a}+{f:.2f}·round ({f * round_s:.2f} s)")
        for f in fractions
        for a in anchors
    ][:timed]
    if events:
        names = ["folder", "round0"]
        names += [e for k in range(1, rounds + 1) for e in (f"line{k}", f"writing{k}")]
        out += [Point(e) for e in (*names, "export", "summary")]
    return out


def study(
    mode: str,
    extra: tuple[str, ...],
    work: Path,
    timed: int,
    events: bool,
    launcher: Launcher,
    rounds: int = 4,
) -> dict[str, Any]:
    """One configuration: an uninterrupted run exec'd (the reference), the same by
    ``launcher`` (the control: bitwise equal across processes and launchers; its timeline
    places the kills), then the kill trials by ``launcher``."""
    timelines, folders = {}, {}
    for name, by in (("reference", Launcher("exec")), ("again", launcher)):
        out = work / mode / name
        out.mkdir(parents=True)
        timelines[name] = timeline(by, out, extra, work / mode / f"{name}.log", rounds)
        folders[name] = run_folder(out)
    reference, twin = folders["reference"], folders["again"]
    assert reference is not None and twin is not None
    determinism = compare(twin, reference)
    tl = timelines["again"]
    trials = []
    for i, point in enumerate(points(tl, rounds, timed, events)):
        row = trial(launcher, point, extra, reference, work / mode / f"trial-{i:02d}")
        print(f"{mode} {point.name}: {row['outcome']}", flush=True)
        trials.append(row)
    return {
        "config": merged(TINY, extra),
        "launcher": launcher.kind,
        "timeline_s": {n: {k: round(v, 3) for k, v in t.items()} for n, t in timelines.items()},
        "uninterrupted_twice_equal": determinism,
        "counts": dict(Counter(t["outcome"] for t in trials)),
        "trials": trials,
    }
