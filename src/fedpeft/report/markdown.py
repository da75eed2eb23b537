"""A run folder → ``report.md``: the configuration that matters, per-round table, summary
figures, per-class quality (``classes.json``), and the gap to a reference run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fedpeft.report.sections import class_lines, config_lines, read_config, reference_lines
from fedpeft.server.classes import ClassReport, read_class_report


def _rounds(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _chosen_lr(run_dir: Path) -> float | None:
    path = run_dir / "lr_search.json"
    return float(json.loads(path.read_text())["lr"]) if path.is_file() else None


def render_report(
    run_dir: Path,
    plots: list[Path],
    classes: ClassReport | None = None,
    reference: Path | None = None,
) -> str:
    rounds = _rounds(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    lines = [
        f"# fedpeft run `{run_dir.name}`",
        "",
        *config_lines(read_config(run_dir), _chosen_lr(run_dir)),
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
        e = r["eval"]
        lines.append(
            f"| {r['round']} | {e['accuracy']:.4f} | {e['macro_f1']:.4f} | {e['loss']:.4f} | "
            f"{r['train_loss']:.4f} | {r['accepted']}/{len(r['sampled'])} | "
            f"{r['bytes_up'] / 1e6:.2f} | {r['wall_time_s']:.1f} |"
        )
    lines.append("")
    if reference is not None:
        lines += reference_lines(summary, reference)
    if classes is not None:
        lines += class_lines(classes)
    lines += [f"![{p.stem}](plots/{p.name})" for p in plots]
    return "\n".join(lines) + "\n"


def _chance(run_dir: Path, classes: ClassReport | None) -> float | None:
    """The majority-class rate of the eval split, else 1 / the number of labels."""
    if classes is not None:
        return classes.majority_rate
    path = run_dir / "partitions.json"
    names = json.loads(path.read_text()).get("label_names") if path.is_file() else None
    return 1 / len(names) if names else None


def write_report(run_dir: Path, reference: Path | None = None) -> Path:
    """Writes ``plots/*.png`` (when matplotlib is installed) and ``report.md``; per-class
    sections when the run folder holds ``classes.json``, and the gap to ``reference`` (a
    finished run folder, e.g. the same data trained centrally) when given."""
    from fedpeft.report.plots import plot_run

    rounds = _rounds(run_dir)
    classes = read_class_report(run_dir)
    ref_curve = None
    if reference is not None:
        ref_rounds = _rounds(reference)
        ref_curve = (reference.name, [r["eval"]["accuracy"] for r in ref_rounds])
    plots = plot_run(run_dir, rounds, _chance(run_dir, classes), ref_curve, classes)
    out = run_dir / "report.md"
    out.write_text(render_report(run_dir, plots, classes, reference))
    return out
