"""The proposal's five expected outcomes, computed from an experiment's measurements, each
with the rule it is judged by and what was measured — holds, does not hold (and by how
much), or not measured (and why). Means are over seeds; a cell is one combination of the
grid's labels.

1. Communication: ``1 − up(proposed) / up(full fine-tuning)``, bytes up per client per
   round, in every cell; the claim is 95–99 % less.
2. Non-IID gain: final accuracy of the proposed variant relative to the strongest existing
   federated PEFT baseline (role ``peft``) in every non-IID cell; the claim is +10–25 %.
3. Client cost: full fine-tuning's client training time per round and memory over the
   proposed variant's; the claim is 5–10× less. Time is CPU seconds where the runs record
   them (``train_cpu_s``: unlike wall time, not inflated by other work on a shared
   machine), else wall seconds. Memory is judged on the whole client
   process's peak (what a device must hold); the rise above the loaded model is shown too.
4. Personalisation: the clients' mean personalised accuracy on their own held-out data over
   their mean fully personalised accuracy (each client's whole PEFT module fine-tuned from
   the global, in the same run: ``personalization.baselines``), for the personalised
   variant (``experiment.personalised``) in every cell; the claim is within 90–95 %.
5. Centralised gap: ``(central − proposed) / central`` in the most extreme non-IID cell
   of each dataset (pathological, else the smallest Dirichlet α); the claim is within 5–10 %.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from fedpeft.report.tables import RunFigures, client_clock, in_cell, stat

HOLDS, FAILS, UNMEASURED = "holds", "does not hold", "not measured"


@dataclass(frozen=True)
class Outcome:
    number: int
    claim: str
    rule: str
    verdict: str
    measured: str
    details: tuple[str, ...] = ()
    cells: int = 0  # the cells it was measured in


@dataclass(frozen=True)
class Study:
    figures: list[RunFigures]
    cells: list[dict[str, str]]
    roles: dict[str, str]  # variant → role
    keys: dict[str, dict[str, Any]]  # run id → its config keys
    proposed: str | None
    personalised: str | None = None  # outcome 4's variant (None: the proposed one)
    # every cell the plan holds, finished or not, with one of its runs' config keys: the most
    # extreme cell of a dataset is the plan's, not the most extreme that has finished so far
    planned: tuple[tuple[dict[str, str], dict[str, Any]], ...] = ()

    def mean(
        self, variant: str, cell: dict[str, str], value: Callable[[RunFigures], Any]
    ) -> float | None:
        runs = [f for f in self.figures if f.variant == variant and in_cell(f, cell)]
        return stat(runs, value).mean

    def with_role(self, role: str) -> list[str]:
        return [v for v, r in self.roles.items() if r == role]

    def cell_key(self, cell: dict[str, str], key: str, default: Any) -> Any:
        """A config key of the runs in ``cell`` (they share it): from the plan where it has
        the cell (finished or not), else from a finished run's keys."""
        for labels, keys in self.planned:
            if labels == cell:
                return keys.get(key, default)
        for f in self.figures:
            if f.labels == cell or in_cell(f, cell) and "*" not in f.labels.values():
                return self.keys.get(f.run, {}).get(key, default)
        return default

    def non_iid(self, cell: dict[str, str]) -> bool:
        return self.cell_key(cell, "data.partition", "dirichlet") != "iid"


def label(cell: dict[str, str]) -> str:
    return ", ".join(cell.values()) or "all"


def outcomes(study: Study) -> list[Outcome]:
    if study.proposed is None:
        why = "no variant is marked as the proposed system (`experiment.proposed`)"
        return [Outcome(i, c, "", UNMEASURED, why) for i, c in enumerate(CLAIMS, start=1)]
    results = [
        communication(study),
        non_iid_gain(study),
        client_cost(study),
        personal(study),
        central_gap(study),
    ]
    finished = {tuple(sorted(c.items())) for c in study.cells}
    planned = {tuple(sorted(c.items())) for c, _ in study.planned}
    if planned - finished:  # "holds in every cell" can only be said of the cells that ran
        done = f"{len(planned & finished)} of the plan's {len(planned)} cells have finished runs"
        results = [
            replace(o, measured=o.measured + f" — in {_cells(o.cells)} measured so far ({done})")
            if o.verdict == HOLDS
            else o
            for o in results
        ]
    return results


def _cells(n: int) -> str:
    return "the one cell" if n == 1 else f"the {n} cells"


CLAIMS = (
    "95–99 % less communication than full fine-tuning",
    "+10–25 % accuracy under non-IID data vs existing federated PEFT",
    "5–10× less client time and memory than full fine-tuning",
    "personalised accuracy within 90–95 % of fully personalised",
    "within 5–10 % of centralised accuracy under extreme non-IID data",
)


def _verdict(ok: list[bool]) -> str:
    return HOLDS if ok and all(ok) else FAILS


def communication(s: Study) -> Outcome:
    rule = "1 − bytes up per client-round (proposed / full fine-tuning) ≥ 95 % in every cell"
    full = s.with_role("full")
    if not full:
        return Outcome(1, CLAIMS[0], rule, UNMEASURED, "no full fine-tuning variant in the grid")
    p = s.proposed or ""
    cuts, details = [], []
    for cell in s.cells:
        mine = s.mean(p, cell, lambda f: f.mean("bytes_up_per_client"))
        ref = s.mean(full[0], cell, lambda f: f.mean("bytes_up_per_client"))
        if mine is None or not ref:
            continue
        cut = 1 - mine / ref
        cuts.append(cut)
        details.append(
            f"{label(cell)}: {mine:,.0f} vs {ref:,.0f} bytes → {100 * cut:.2f} % less "
            f"({ref / mine:,.0f}× fewer)"
        )
    if not cuts:
        return Outcome(1, CLAIMS[0], rule, UNMEASURED, "no cell has both variants finished")
    verdict = _verdict([c >= 0.95 for c in cuts])
    lo, hi = min(cuts), max(cuts)
    text = f"{100 * lo:.2f}–{100 * hi:.2f} % less" if lo != hi else f"{100 * lo:.2f} % less"
    if verdict == HOLDS and lo > 0.99:
        text += " (beyond the claimed 99 %)"
    if verdict == FAILS:
        text += f" (short of 95 % by {100 * (0.95 - lo):.2f} points in the worst cell)"
    return Outcome(1, CLAIMS[0], rule, verdict, text, tuple(details), len(cuts))


def non_iid_gain(s: Study) -> Outcome:
    rule = (
        "final accuracy (proposed − strongest `peft` baseline) / strongest ≥ +10 % in every "
        "non-IID cell"
    )
    baselines = s.with_role("peft")
    cells = [c for c in s.cells if s.non_iid(c)]
    if not baselines or not cells:
        why = "no existing federated PEFT baseline" if not baselines else "no non-IID cell"
        return Outcome(2, CLAIMS[1], rule, UNMEASURED, why)
    gains, details = [], []
    for cell in cells:
        mine = s.mean(s.proposed or "", cell, lambda f: f.final("accuracy"))
        scores = {
            b: a
            for b in baselines
            if (a := s.mean(b, cell, lambda f: f.final("accuracy"))) is not None
        }
        if mine is None or not scores:
            continue
        best = max(scores, key=lambda b: scores[b])
        gain = (mine - scores[best]) / scores[best]
        gains.append(gain)
        details.append(
            f"{label(cell)}: {mine:.4f} vs {best} {scores[best]:.4f} → {100 * gain:+.1f} % "
            f"({100 * (mine - scores[best]):+.1f} points)"
        )
    if not gains:
        return Outcome(2, CLAIMS[1], rule, UNMEASURED, "no non-IID cell has the variants finished")
    verdict = _verdict([g >= 0.10 for g in gains])
    lo, hi = min(gains), max(gains)
    text = f"{100 * lo:+.1f} % to {100 * hi:+.1f} %" if lo != hi else f"{100 * lo:+.1f} %"
    text += " vs the strongest baseline"
    if verdict == FAILS:
        text += f" (short of +10 % by {100 * (0.10 - min(gains)):.1f} points in the worst cell)"
    return Outcome(2, CLAIMS[1], rule, verdict, text, tuple(details), len(gains))


def client_cost(s: Study) -> Outcome:
    rule = (
        "full fine-tuning / proposed ≥ 5× for client training time per round and for peak "
        "client memory"
    )
    full = s.with_role("full")
    if not full:
        return Outcome(3, CLAIMS[2], rule, UNMEASURED, "no full fine-tuning variant in the grid")
    # over every run of both variants, in every cell: one clock for all the ratios
    clock = client_clock([f for f in s.figures if f.variant in (s.proposed, full[0])])
    cpu = clock == "client_train_cpu_mean_s"
    measures = {
        "time": lambda f: f.mean(clock),
        "memory": lambda f: f.peak("client_peak_mem_max_bytes"),
        "rise": lambda f: f.peak("client_mem_rise_max_bytes"),
    }
    ratios: dict[str, list[float]] = {k: [] for k in measures}
    details = []
    for cell in s.cells:
        parts = []
        for name, fn in measures.items():
            mine, ref = s.mean(s.proposed or "", cell, fn), s.mean(full[0], cell, fn)
            if mine and ref:
                ratios[name].append(ref / mine)
                parts.append(f"{name} {ref / mine:.2f}×")
        if parts:
            details.append(f"{label(cell)}: " + ", ".join(parts))
    if not ratios["time"] or not ratios["memory"]:

        def finished(v: str, cell: dict[str, str]) -> bool:
            return s.mean(v, cell, lambda f: 1.0) is not None

        paired = any(finished(s.proposed or "", c) and finished(full[0], c) for c in s.cells)
        why = (
            "the runs record no client time or memory"
            if paired
            else ("no cell has both variants finished")
        )
        return Outcome(3, CLAIMS[2], rule, UNMEASURED, why)
    t, m = min(ratios["time"]), min(ratios["memory"])
    verdict = _verdict([t >= 5, m >= 5])
    text = f"{'CPU ' if cpu else ''}time {t:.2f}×, peak memory {m:.2f}× less (worst cell)"
    if ratios["rise"]:
        text += f"; training-memory rise above the loaded model {min(ratios['rise']):.2f}× less"
    if verdict == FAILS:
        short = [f"{n} by {5 / v:.1f}×" for n, v in (("time", t), ("memory", m)) if v < 5]
        text += f" (short of 5×: {', '.join(short)})"
    cells = min(len(ratios["time"]), len(ratios["memory"]))
    return Outcome(3, CLAIMS[2], rule, verdict, text, tuple(details), cells)


PERSONAL, GLOBAL, FULL = (f"personal.{m}_accuracy" for m in ("personal", "global", "full"))


def personalised_accuracy(f: RunFigures) -> float | None:
    """The run's clients' mean personalised accuracy (the global's where the run kept
    nothing personal) at its last scored round."""
    mine = f.final(PERSONAL)
    return mine if mine is not None else f.final(GLOBAL)


def personal(s: Study) -> Outcome:
    rule = (
        "mean personalised client accuracy / mean fully personalised (each client's whole "
        "PEFT module fine-tuned from the global, same run) ≥ 90 % in every cell"
    )
    judged = s.personalised or s.proposed or ""
    recorded = [
        v for v in s.roles if any(f.variant == v and f.final(FULL) is not None for f in s.figures)
    ]
    if not any(f.variant == judged for f in s.figures):
        return Outcome(4, CLAIMS[3], rule, UNMEASURED, f"no run of `{judged}` has finished")
    if judged not in recorded:
        others = f" (recorded by {', '.join(f'`{v}`' for v in recorded)})" if recorded else ""
        why = (
            f"`{judged}`'s runs record no personalised and fully personalised client accuracy"
            f"{others}; it needs `personalization.baselines = true` and "
            "`data.client_test_fraction` > 0 (see `experiment.personalised`)"
        )
        return Outcome(4, CLAIMS[3], rule, UNMEASURED, why)
    ratios, details = [], []
    for cell in s.cells:
        mine = s.mean(judged, cell, personalised_accuracy)
        ref = s.mean(judged, cell, lambda f: f.final(FULL))
        if mine is None or not ref:
            continue
        ratios.append(mine / ref)
        line = f"{label(cell)}: `{judged}` {mine:.4f} / {ref:.4f} = {100 * mine / ref:.1f} %"
        compare = [
            f"`{v}` {100 * m / r:.1f} %"
            for v in recorded
            if v != judged
            and (m := s.mean(v, cell, personalised_accuracy)) is not None
            and (r := s.mean(v, cell, lambda f: f.final(FULL)))
        ]
        details.append(line + (f" (beside it: {', '.join(compare)})" if compare else ""))
    if not ratios:
        return Outcome(4, CLAIMS[3], rule, UNMEASURED, f"no cell has `{judged}` finished")
    verdict = _verdict([r >= 0.90 for r in ratios])
    lo, hi = min(ratios), max(ratios)
    text = f"{100 * lo:.1f}–{100 * hi:.1f} %" if lo != hi else f"{100 * lo:.1f} %"
    text += " of fully personalised"
    if verdict == FAILS:
        text += f" (short of 90 % by {100 * (0.90 - lo):.1f} points in the worst cell)"
    elif lo > 1:
        text += " (above the claimed band: personalised beats fully personalised)"
    elif lo > 0.95:
        text += " (above the claimed 95 %)"
    return Outcome(4, CLAIMS[3], rule, verdict, text, tuple(details), len(ratios))


def central_gap(s: Study) -> Outcome:
    rule = (
        "(centralised − proposed) / centralised ≤ 10 % in each dataset's most extreme non-IID cell"
    )
    central = s.with_role("centralised")
    if not central:
        return Outcome(5, CLAIMS[4], rule, UNMEASURED, "no centralised reference in the grid")
    extreme = _extreme_cells(s)
    if not extreme:
        return Outcome(5, CLAIMS[4], rule, UNMEASURED, "no non-IID cell")
    gaps, details, waiting = [], [], []
    for cell in extreme:
        mine = s.mean(s.proposed or "", cell, lambda f: f.final("accuracy"))
        ref = s.mean(central[0], cell, lambda f: f.final("accuracy"))
        if mine is None or not ref:
            waiting.append(label(cell))
            continue
        gap = (ref - mine) / ref
        gaps.append(gap)
        details.append(f"{label(cell)}: {mine:.4f} vs centralised {ref:.4f} → {_side(gap)}")
    details += [f"{c}: not finished (the plan's most extreme cell of its dataset)" for c in waiting]
    if not gaps:
        return Outcome(
            5,
            CLAIMS[4],
            rule,
            UNMEASURED,
            "no extreme cell has both variants finished",
            tuple(details),
        )
    verdict = _verdict([g <= 0.10 for g in gaps])
    text = f"{_side(max(gaps))} centralised in the worst cell"
    if verdict == FAILS:
        text += f" (beyond 10 % by {100 * (max(gaps) - 0.10):.1f} points)"
    elif waiting:  # a claim about every dataset cannot hold while one's cell is unfinished
        verdict = UNMEASURED
        text += f" of those finished; {len(waiting)} of {len(extreme)} not finished"
    return Outcome(5, CLAIMS[4], rule, verdict, text, tuple(details), len(gaps))


def _side(gap: float) -> str:
    """A relative gap to the centralised reference in words: federated runs can end above it."""
    return f"{100 * gap:.1f} % below" if gap >= 0 else f"{-100 * gap:.1f} % above"


def _extreme_cells(s: Study) -> list[dict[str, str]]:
    """Each dataset's most extreme non-IID cell: pathological (fewest classes a client),
    else the smallest Dirichlet α — among the plan's cells where the study has a plan."""
    by_dataset: dict[str, list[dict[str, str]]] = {}
    for cell in [c for c, _ in s.planned] or s.cells:
        if s.non_iid(cell):
            by_dataset.setdefault(str(s.cell_key(cell, "data.dataset", "sst2")), []).append(cell)

    def severity(cell: dict[str, str]) -> tuple[int, float]:
        if s.cell_key(cell, "data.partition", "dirichlet") == "pathological":
            return (0, float(s.cell_key(cell, "data.classes_per_client", 1)))
        return (1, float(s.cell_key(cell, "data.alpha", 0.5)))

    return [min(group, key=severity) for group in by_dataset.values()]


def summary_rows(results: Sequence[Outcome]) -> list[list[str]]:
    return [[str(o.number), o.claim, o.measured, f"**{o.verdict}**"] for o in results]
