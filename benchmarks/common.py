"""Shared by the benchmark scripts: run `fedpeft run` in a fresh process, read its folder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any


def emit(result: dict[str, Any], out: Path | None) -> None:
    """Prints a benchmark's result as indented JSON, and writes it to ``out`` when given."""
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        out.write_text(text + "\n")


def run_fedpeft(out: Path, tag: str, sets: list[str]) -> Path:
    """Runs ``fedpeft run`` with ``--set`` overrides into ``out``; returns the run folder."""
    cmd = [
        sys.executable,
        "-m",
        "fedpeft.cli.main",
        "run",
        "--set",
        f"run.output_dir='{out}'",
        "--set",
        f"run.name='{tag}'",
    ]
    for s in sets:
        cmd += ["--set", s]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:]
        raise RuntimeError(f"fedpeft run failed (exit {proc.returncode}): {tail}")
    return sorted(out.glob(f"{tag}-*"))[-1]


class TreeMemory:
    """Peak summed PSS of this process's descendants (and optionally itself), sampled every
    ``interval`` seconds: shared pages (one base model under forked workers) count once."""

    def __init__(self, include_self: bool = False, interval: float = 1.0) -> None:
        import threading

        self.include_self, self.interval, self.peak = include_self, interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        import psutil

        me = psutil.Process()
        while not self._stop.wait(self.interval):
            procs = me.children(recursive=True) + ([me] if self.include_self else [])
            total = 0
            for p in procs:
                try:
                    total += p.memory_full_info().pss
                except (psutil.Error, AttributeError):
                    continue
            self.peak = max(self.peak, total)


def read_run(run_dir: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(summary.json, metrics.jsonl rows) of a finished run."""
    summary = json.loads((run_dir / "summary.json").read_text())
    rounds = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return summary, rounds


def measure_steps(model: Any, inputs: dict[str, Any], steps: int, warmup: int) -> dict[str, float]:
    """AdamW steps of ``model`` on one batch: median step time after ``warmup`` steps, the
    process's peak RSS and its rise over the RSS before training (MiB)."""
    import statistics
    import time

    import psutil
    import torch

    proc = psutil.Process()
    rss_loaded = proc.memory_info().rss
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    times, peak = [], rss_loaded
    for step in range(steps):
        start = time.perf_counter()
        model(**inputs).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step >= warmup:
            times.append(time.perf_counter() - start)
        peak = max(peak, proc.memory_info().rss)
    return {
        "peak_rss_mib": peak / 2**20,
        "train_rss_rise_mib": (peak - rss_loaded) / 2**20,
        "median_step_s": statistics.median(times),
    }


def update_counts(model: Any, spec: Any, arch: Any) -> dict[str, int]:
    """Real and predicted trainable parameters and update bytes of a PEFT model."""
    from fedpeft.peft import get_adapter_state

    state = get_adapter_state(model)
    return {
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "predicted_params": spec.trainable_params(arch),
        "update_bytes": sum(t.numel() * t.element_size() for t in state.values()),
        "predicted_bytes": spec.update_bytes(arch),
    }


def time_to_target(accuracy: list[float], clock: list[float], target: float) -> float | None:
    """The simulated time of the first round at or above ``target`` (None: never)."""
    return next((t for a, t in zip(accuracy, clock, strict=True) if a >= target), None)


def plot_against_clock(
    curves: dict[str, tuple[list[float], list[float]]], path: Path, target: float, title: str
) -> None:
    """Accuracy against simulated time, one line per run, the target dashed."""
    plot_curves(curves, path, title, "simulated time (s)", target)


def plot_curves(
    curves: dict[str, tuple[list[float], list[float]]],
    path: Path,
    title: str,
    xlabel: str,
    target: float | None = None,
) -> None:
    """Dev accuracy against ``xlabel``, one line per run; ``target`` as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
    for label, (x, acc) in curves.items():
        ax.plot(x, acc, marker="o", ms=3, label=label)
    if target is not None:
        ax.axhline(target, color="grey", lw=0.8, ls="--")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("dev accuracy")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
