"""A run folder → ``report.md``: settings, per-round table, summary figures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _rounds(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def render_report(run_dir: Path, plots: list[Path]) -> str:
    rounds = _rounds(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    lines = [
        f"# fedpeft run `{run_dir.name}`",
        "",
        f"- model: {summary.get('model')} · dataset: {summary.get('dataset')} · "
        f"clients: {summary.get('num_clients')}",
        f"- final accuracy **{summary['final_accuracy']:.4f}**, macro-F1 "
        f"{summary['final_macro_f1']:.4f} after {summary['rounds_completed']} rounds",
        f"- bytes up per client per round: {summary['bytes_up_per_client_round']:,.0f} "
        f"(1/{1 / summary['up_fraction_of_full_model']:.0f} of the full model's "
        f"{summary['full_model_bytes']:,} bytes)",
        f"- wall time {summary['wall_time_s']:.1f} s · peak RSS "
        f"{summary['peak_rss_bytes'] / 2**20:.0f} MiB",
        "",
        "| round | accuracy | macro-F1 | eval loss | train loss | clients ok | MB up | s |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rounds:
        e = _metrics(r["eval"])
        lines.append(
            f"| {r['round']} | {e['accuracy']} | {e['macro_f1']} | {e['loss']} | "
            f"{r['train_loss']:.4f} | {r['accepted']}/{len(r['sampled'])} | "
            f"{r['bytes_up'] / 1e6:.2f} | {r['wall_time_s']:.1f} |"
        )
    lines.append("")
    lines += [f"![{p.stem}](plots/{p.name})" for p in plots]
    return "\n".join(lines) + "\n"


def _metrics(e: dict[str, float]) -> dict[str, str]:
    """Evaluation metrics to 4 decimals; "–" in a round without evaluation (eval.every)."""
    return {k: f"{e[k]:.4f}" if k in e else "–" for k in ("accuracy", "macro_f1", "loss")}


def write_report(run_dir: Path) -> Path:
    """Writes ``plots/*.png`` (when matplotlib is installed) and ``report.md``."""
    from fedpeft.report.plots import plot_run

    plots = plot_run(run_dir, _rounds(run_dir))
    out = run_dir / "report.md"
    out.write_text(render_report(run_dir, plots))
    return out
