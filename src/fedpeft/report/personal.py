"""The personalisation part of ``report.md``: every client scored on its own held-out share
(``personal.jsonl``), summarised per model, and one bar group per client (global vs
personalised vs local-only vs fully personalised) in ``plots/personal.png``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedpeft.report.fmt import num
from fedpeft.server.personal import MODELS, read_personal

LABELS = {
    "global": "global",
    "personal": "personalised",
    "local": "local only",
    "full": "fully personalised",
}


def last_round_rows(run_dir: Path) -> list[dict[str, Any]]:
    """The scored rows of the last evaluated round, by client id ([] when none)."""
    rows = read_personal(run_dir)
    if not rows:
        return []
    last = max(int(r.get("round", 0)) for r in rows)
    ok = [r for r in rows if r.get("round") == last and r.get("status") == "ok"]
    return sorted(ok, key=lambda r: int(r.get("client_id", 0)))


def personal_lines(summary: dict[str, Any]) -> list[str]:
    """The summary's ``personal`` section as a Markdown table ([] when the run has none)."""
    p = summary.get("personal")
    models = p.get("models") if isinstance(p, dict) else None
    if not isinstance(p, dict) or not isinstance(models, dict) or not models:
        return []
    lines = [
        f"## Clients on their own data (round {p.get('round')}, "
        f"{p.get('clients_scored')} clients scored, {p.get('clients_failed')} failed)",
        "",
        "| model | mean | worst 10 % | std | min | max |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in MODELS:
        s = models.get(name)
        if isinstance(s, dict):
            lines.append(
                f"| {LABELS[name]} | {num(s.get('mean'))} | {num(s.get('worst10'))} | "
                f"{num(s.get('std'))} | {num(s.get('min'))} | {num(s.get('max'))} |"
            )
    ratio = p.get("personal_over_full")
    which = "the global" if p.get("personal_is_global") else "personalised"
    lines += [
        "",
        f"- {which} ÷ fully personalised (mean accuracy): **{num(ratio, '.3f')}** · "
        f"personal parameters per client: {num(p.get('personal_params', 0), ',')}",
        "",
    ]
    return lines


def plot_personal(run_dir: Path, folder: Path, plt: Any) -> Path | None:
    """``plots/personal.png``: each client's accuracy under every model it scored (None:
    the run scored no client)."""
    rows = last_round_rows(run_dir)
    names = [m for m in MODELS if any(m in r.get("models", {}) for r in rows)]
    if not rows or not names:
        return None
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.45 * len(rows) * len(names)), 3.2), dpi=120)
    for i, name in enumerate(names):
        xs = [j + (i - (len(names) - 1) / 2) * width for j in range(len(rows))]
        ys = [r["models"].get(name, {}).get("accuracy", 0.0) for r in rows]
        ax.bar(xs, ys, width, label=LABELS[name])
    ax.set_xticks(range(len(rows)), [str(r.get("client_id")) for r in rows], fontsize=7)
    ax.set_xlabel("client")
    ax.set_ylabel("accuracy on its held-out share")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = folder / "personal.png"
    fig.savefig(path)
    plt.close(fig)
    return path
