"""Peak memory of one causal-LM training step with whole-sequence logits against the
answer positions' logits only (``fedpeft.client.train.forward_inputs``): SmolLM2-135M-Instruct
+ LoRA on SQuAD questions (``examples/smollm2_squad.toml``), one forward and backward of
one batch, each mode in its own process (peak RSS is per process).

    PYTHONPATH=src .venv/bin/python benchmarks/lm_step_memory.py [--batch 8] [--max-length 160]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "smollm2_squad.toml"


def one(mode: str, batch_size: int, max_length: int) -> dict[str, object]:
    import numpy as np

    from fedpeft.client.train import forward_inputs
    from fedpeft.config import load_config
    from fedpeft.server.task import build_task

    sets = ["run.threads=1", f"data.train_size={batch_size}", "data.eval_size=4"]
    sets += ["data.num_clients=1", f"model.max_length={max_length}"]
    task = build_task(load_config(EXAMPLE, sets))
    model, batch = task.model.train(), task.data.train.collate(np.arange(batch_size))
    inputs = forward_inputs(model, batch) if mode == "answer" else batch.model_inputs()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.process_time()
    out = model(**inputs)
    out.loss.backward()
    return {
        "mode": mode,
        "batch": list(batch.input_ids.shape),
        "logits_positions": int(out.logits.shape[1]),
        "loss": float(out.loss.detach()),
        "peak_rss_before_step_bytes": before,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "step_cpu_s": time.process_time() - start,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=160)
    ap.add_argument("--mode", choices=["whole", "answer"])
    args = ap.parse_args()
    if args.mode:
        print(json.dumps(one(args.mode, args.batch, args.max_length)))
        return
    rows = []
    for mode in ("whole", "answer"):
        cmd = [sys.executable, __file__, "--mode", mode, "--batch", str(args.batch)]
        cmd += ["--max-length", str(args.max_length)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    for r in rows:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
