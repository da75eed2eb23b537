#!/usr/bin/env python
"""Runs a fedpeft config on a loopback Flower deployment and cleans up after itself.

The secure setup is the default and the only one: a SuperLink and N SuperNodes on
127.0.0.1, TLS on (a test CA and server certificate generated into the work folder),
SuperNode authentication on with keys pre-registered from loopback (``flwr supernode
register``), and the SuperLink's Control and Runtime APIs answering loopback only
(``fedpeft.runtime.flower.superlink``). SuperNode i serves data partition i
(``--node-config partition-id=i``) with its own client host, so the base model loads once per
node. The checkout is submitted as the Flower App it is (``flwr run <checkout>``); logs stay
in WORK/logs.

    .venv/bin/python scripts/flower_deploy.py --nodes 2 [--config FILE] [--set k=v ...]

data.num_clients is set to --nodes. See docs/flower.md for the same across machines and the
threat model.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

from fedpeft.config import config_to_toml, load_config
from fedpeft.errors import FedpeftError
from fedpeft.report import write_report
from fedpeft.runtime.flower.deploy import COMPLETED, run_deployed


def _progress(row: dict[str, Any]) -> None:
    """One line a round as the run writes it (the run goes on in other processes)."""
    accuracy = (row.get("eval") or {}).get("accuracy")
    shown = f"{accuracy:.4f}" if isinstance(accuracy, float) else "–"
    print(
        f"round {row.get('round')}: accuracy {shown}  clients "
        f"{row.get('accepted')}/{len(row.get('sampled') or [])}",
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description="fedpeft on a loopback Flower deployment")
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--config", type=Path)
    parser.add_argument("--set", dest="sets", action="append", default=[])
    parser.add_argument("--work", type=Path, help="work folder (default: a temporary one)")
    parser.add_argument("--round-timeout", type=float, default=600.0)
    parser.add_argument("--timeout", type=float, default=3600.0, help="whole run, seconds")
    args = parser.parse_args()
    work = (args.work or Path(tempfile.mkdtemp(prefix="fedpeft-flower-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    try:
        cfg = load_config(args.config, [f"data.num_clients={args.nodes}", *args.sets])
        if cfg.data.num_clients != args.nodes:  # a node per client, or rounds wait for none
            raise FedpeftError(
                f"--nodes {args.nodes} starts one SuperNode per client, but --set makes "
                f"data.num_clients {cfg.data.num_clients}; set the count with --nodes only."
            )
        out = Path(cfg.run.output_dir).resolve()
        cfg = cfg.model_copy(update={"run": cfg.run.model_copy(update={"output_dir": str(out)})})
        print(f"{args.nodes} SuperNodes and a SuperLink on 127.0.0.1; logs: {work / 'logs'}")
        status, run_dir = run_deployed(
            config_to_toml(cfg), args.nodes, work, output_dir=out,
            round_timeout_s=args.round_timeout, timeout_s=args.timeout, on_round=_progress,
        )  # fmt: skip
    except FedpeftError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"run status: {status}\nrun folder: {run_dir}\nlogs: {work / 'logs'}")
    if status != COMPLETED or run_dir is None:
        return 1
    try:  # as `fedpeft run` does after its run
        print(f"report: {write_report(run_dir)}")
    except FedpeftError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
