"""QA on SQuAD v1.1 with real weights: federated (whole articles per client) vs
centralised, SQuAD exact match / F1 (and ROUGE-L when generated) per round, bytes, time, RSS.

``--kind extractive`` (default): all-MiniLM-L6-v2 + LoRA with a span head,
``examples/squad.toml``. ``--kind generative``: SmolLM2-135M-Instruct + LoRA writing the
answer, ``examples/smollm2_squad.toml``. Each is shrunk for the 2 shared CPU cores
(``KINDS``: train/eval questions, length, rounds): federated = 5 clients with whole
articles (``natural``), R rounds of 1 local epoch; centralised = the same questions on 1
client, R rounds (= R epochs of the same optimiser steps per example). Round 0 is the
untrained model (LoRA is the identity at init; a span head is fresh), scored by one
evaluation.

    cd benchmarks; for p in round0 costs federated centralised; do   # one process each
      nice -n 10 ../.venv/bin/python squad_qa.py --part $p --out /tmp/squad_$p.json & done; wait
    ../.venv/bin/python squad_qa.py --merge /tmp/squad_*.json --out results/squad_qa.json
    # generative: the same with --kind generative (parts round0, federated, centralised)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import read_run

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
KINDS = {  # kind → (example config, what shrinks it for the shared 2-core CPU)
    "extractive": (
        EXAMPLES / "squad.toml",
        ["run.threads=1", "data.train_size=100", "data.eval_size=50"]
        + ["model.max_length=128", "model.doc_stride=32", "run.rounds=2"],
    ),
    "generative": (
        EXAMPLES / "smollm2_squad.toml",
        ["run.threads=1", "run.workers=1", "data.train_size=160", "data.eval_size=60"]
        + ["model.max_length=160", "run.rounds=2"],
    ),
}
SETTINGS = {
    "federated": ["data.num_clients=5", "data.partition='natural'"],
    "centralised": ["data.num_clients=1", "data.partition='iid'"],
}


def untrained(config: Path, shrink: list[str]) -> dict[str, float]:
    """Round 0: the fresh model (identity LoRA, a new span head) on the eval questions."""
    from fedpeft.config import load_config
    from fedpeft.server.evaluate import evaluate_model
    from fedpeft.server.task import build_task

    cfg = load_config(config, shrink)
    task = build_task(cfg)
    return evaluate_model(task.model, task.data.eval, task.eval_batch_size, task.device)


def costs(config: Path, shrink: list[str]) -> dict[str, float]:
    """Parameters and bytes (predicted and real) of MiniLM + LoRA with the span head, and
    the CPU time (``process_time``, less sensitive than wall time to other processes on a
    shared machine) of AdamW steps on one real batch of 16 training windows."""
    import statistics

    import numpy as np
    import torch
    from common import update_counts

    from fedpeft.config import load_config
    from fedpeft.server.task import build_task

    task = build_task(load_config(config, shrink))
    model, batch = task.model, task.data.train.collate(np.arange(16))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    cpu = []
    for _ in range(3):
        start = time.process_time()
        model(**batch.model_inputs()).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        cpu.append(time.process_time() - start)
    return {
        **update_counts(model, task.method, task.arch),
        "full_model_bytes": task.full_model_bytes,
        "batch_windows": 16,
        "batch_tokens": int(batch.attention_mask.sum()),
        "median_step_cpu_s": statistics.median(cpu[1:]),
    }


def run_cli(config: Path, out: Path, tag: str, sets: list[str]) -> Path:
    """``fedpeft run -c <config> --set …`` in a fresh process; its run folder."""
    cmd = [sys.executable, "-m", "fedpeft.cli.main", "run", "-c", str(config)]
    for s in [f"run.output_dir='{out}'", f"run.name='{tag}'", *sets]:
        cmd += ["--set", s]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"fedpeft run failed: {proc.stderr.strip().splitlines()[-3:]}")
    return sorted(out.glob(f"{tag}-*"))[-1]


def run(name: str, config: Path, sets: list[str], out: Path) -> dict[str, object]:
    start = time.perf_counter()
    folder = run_cli(config, out, "squad", sets)
    parts = json.loads((folder / "partitions.json").read_text())
    summary, rounds = read_run(folder)
    return {
        "setting": name,
        "sets": sets,
        "rounds": [
            {
                "round": r["round"],
                "exact_match": r["eval"]["exact_match"],
                "f1": r["eval"]["f1"],
                "rouge_l": r["eval"].get("rouge_l"),
                "loss": r["eval"]["loss"],
                "bytes_up": r.get("bytes_up"),
                "bytes_down": r.get("bytes_down"),
            }
            for r in rounds
        ],
        "partitions": parts,
        "wall_time_s": summary["wall_time_s"],
        "process_time_s": time.perf_counter() - start,
        "peak_rss_mib": summary["peak_rss_bytes"] / 2**20,
        "trainable_params": summary["trainable_params"],
        "bytes_up_per_client_round": summary["bytes_up_per_client_round"],
        "full_model_bytes": summary["full_model_bytes"],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kind", choices=sorted(KINDS), default="extractive")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--part", choices=["round0", "costs", *SETTINGS], help="one part (a process each)"
    )
    parser.add_argument("--merge", type=Path, nargs="*", help="parts' JSON files into --out")
    args = parser.parse_args()
    config, shrink = KINDS[args.kind]
    if args.merge:
        parts = [json.loads(p.read_text()) for p in args.merge]
        result = {"config": config.name, "shrink": shrink} | {
            k: v for p in parts for k, v in p.items()
        }
    elif args.part == "round0":
        result = {"round0": untrained(config, shrink)}
    elif args.part == "costs":
        result = {"costs": costs(config, shrink)}
    else:
        with tempfile.TemporaryDirectory() as tmp:
            parts = [args.part] if args.part else list(SETTINGS)
            result = {
                name: run(name, config, [*shrink, *SETTINGS[name]], Path(tmp)) for name in parts
            }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
