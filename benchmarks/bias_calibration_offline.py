"""Is a swinging federation's score its decision threshold? (issue 12)

Runs one ``fedpeft run`` in this process with every round's global kept (as
``serve_average_offline.py`` does), or rescores a run directory that kept them, and then
scores each round's global on the eval split as it is (``none``) and with only its head's
bias moved by a rule over the logits of the federation's training examples under that
global — what every client could compute on its own data and send as sums:

- ``mid``: for every pair of classes (a, b) present, the threshold of the margin
  ``z_a − z_b`` halfway between the two classes' mean margins; the bias shift is the
  least-squares fit of those pairwise thresholds (for two classes exactly the midpoint).
  Its statistics are per-class sums of logit vectors: C·C + C numbers a client.
- ``ml``: the bias that maximises the training examples' likelihood under the global's
  logits (prior matching; a reference — it needs every logit, or several exchanges).
- ``oracle`` (two classes only): the best threshold on the eval split itself, an upper bound.

    PYTHONPATH=src .venv/bin/python benchmarks/bias_calibration_offline.py NAME RESULTS \\
        [RUN_DIR | "data.alpha=0.1" "run.seed=1" ...] [--rounds 9,10,11,12]
    PYTHONPATH=src .venv/bin/python benchmarks/bias_calibration_offline.py --table RESULTS...

Results are merged into ``RESULTS`` under ``NAME`` (accuracy and macro-F1 per rule and
round). Offline: the calibrated global is scored, never sent back into training.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
import serve_average_offline as sa  # noqa: E402

from fedpeft.config import build_config, read_toml  # noqa: E402
from fedpeft.peft import set_adapter_state  # noqa: E402
from fedpeft.server.evaluate import predict_logits  # noqa: E402
from fedpeft.server.task import build_task  # noqa: E402


def mid_shift(logits: np.ndarray, labels: np.ndarray, classes: int) -> np.ndarray:
    """The least-squares bias shift that puts every pairwise threshold halfway between the
    two classes' mean margins (classes absent from ``labels`` keep their bias)."""
    present = [c for c in range(classes) if (labels == c).any()]
    mu = {c: logits[labels == c].mean(0) for c in present}
    shift = np.zeros(classes)
    for a in present:
        t = [-0.5 * ((mu[a][a] - mu[a][b]) + (mu[b][a] - mu[b][b])) for b in present if b != a]
        shift[a] = sum(t) / len(present)  # δ_a − δ_b ≈ t_ab in least squares, Σ δ = 0
    return shift


def ml_shift(logits: np.ndarray, labels: np.ndarray, classes: int) -> np.ndarray:
    z, y = torch.from_numpy(logits).double(), torch.from_numpy(labels).long()
    d = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([d], max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z + d, y)
        loss.backward()
        return loss

    opt.step(closure)
    return d.detach().numpy()


def macro_f1(pred: np.ndarray, labels: np.ndarray, classes: int) -> float:
    f1 = []
    for c in range(classes):
        tp = float(((pred == c) & (labels == c)).sum())
        p, t = float((pred == c).sum()), float((labels == c).sum())
        if t == 0:
            continue
        f1.append(0.0 if tp == 0 else 2 * tp / (p + t))
    return float(np.mean(f1))


def table(paths: list[Path]) -> None:
    """The Markdown table of every run in ``paths``: accuracy (macro-F1) per rule at the
    last round scored, and the mean accuracy over the rounds scored."""
    rules = ("none", "mid", "ml", "oracle")
    print(
        "| run | rounds scored | "
        + " | ".join(f"{r}: last round" for r in rules)
        + " | "
        + " | ".join(f"{r}: mean" for r in rules[:3])
        + " |"
    )
    print("| --- | --- |" + " ---: |" * 7)
    for path in paths:
        for name, v in json.loads(path.read_text()).items():
            cells = []
            for rule in rules:
                if rule not in v:
                    cells.append("—")
                    continue
                acc, f1 = v[rule]["accuracy"][-1], v[rule].get("macro_f1", [None])[-1]
                cells.append(f"{acc:.3f}" + ("" if f1 is None else f" ({f1:.3f})"))
            means = [f"{np.mean(v[r]['accuracy']):.3f}" for r in rules[:3]]
            rounds = ",".join(str(r) for r in v["round"]["r"])
            print(f"| {name} | {rounds} | " + " | ".join(cells + means) + " |")


def main() -> None:
    args = sys.argv[1:]
    if args and args[0] == "--table":
        table([Path(a) for a in args[1:]])
        return
    rounds = None
    if "--rounds" in args:
        i = args.index("--rounds")
        rounds = {int(r) for r in args[i + 1].split(",")}
        args = args[:i] + args[i + 2 :]
    name, results, rest = args[0], Path(args[1]), args[2:]
    run_dir = Path(rest[0]) if rest and Path(rest[0]).is_dir() else sa.train(name, rest)
    cfg = build_config(read_toml(run_dir / "config.toml"))
    task = build_task(cfg)
    ye = np.asarray(task.data.eval.labels)
    pool = np.concatenate(task.data.partitions)
    yt = np.asarray(task.data.train.labels)[pool]
    classes = task.data.dataset.num_labels
    out: dict[str, dict[str, list[float]]] = {"round": {"r": []}}
    for r, state in sorted(sa.globals_by_round(run_dir).items()):
        if r == 0 or (rounds is not None and r not in rounds):
            continue
        set_adapter_state(task.model, {k: v.to(task.device) for k, v in state.items()})
        le = predict_logits(task.model, task.data.eval, task.eval_batch_size, task.device).numpy()
        lt = predict_logits(task.model, task.data.train, task.eval_batch_size, task.device)
        lt = lt.numpy()[pool]
        shifts = {
            "none": np.zeros(classes),
            "mid": mid_shift(lt, yt, classes),
            "ml": ml_shift(lt, yt, classes),
        }
        out["round"]["r"].append(r)
        for rule, d in shifts.items():
            pred = (le + d).argmax(-1)
            row = out.setdefault(rule, {"accuracy": [], "macro_f1": []})
            row["accuracy"].append(float((pred == ye).mean()))
            row["macro_f1"].append(macro_f1(pred, ye, classes))
        if classes == 2:
            m = le[:, 1] - le[:, 0]
            ths = np.concatenate([[-np.inf], np.sort(m)])
            best = max(float(((m > t) == ye).mean()) for t in ths)
            out.setdefault("oracle", {"accuracy": []})["accuracy"].append(best)
        print(
            r, {k: round(v["accuracy"][-1], 4) for k, v in out.items() if k != "round"}, flush=True
        )
    merged = json.loads(results.read_text()) if results.is_file() else {}
    merged[name] = {"run_dir": str(run_dir), "config": sys.argv[3:], **out}
    results.write_text(json.dumps(merged, indent=1))


if __name__ == "__main__":
    main()
