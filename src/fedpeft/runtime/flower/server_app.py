"""fedpeft's ServerApp: the same round loop, run folder, checkpoints and export as the
in-process runtime (``run_local``), with clients reached through a ``FlowerClientPool``.

Besides the usual run folder it writes ``flower.json``: bytes of the messages as Flower
serialised them next to fedpeft's own count, which client processes answered, and every
record and tensor name the server received, by message type (``received``).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedpeft.compression import layout
from fedpeft.config import ExperimentConfig
from fedpeft.runtime.flower import keys
from fedpeft.runtime.flower.pool import FlowerClientPool
from fedpeft.runtime.flower.process import config_from_toml
from fedpeft.runtime.flower.runconfig import (
    WeightPolicy,
    run_config_text,
    run_timeout,
)
from fedpeft.runtime.local.simulator import RunResult, run_local
from fedpeft.server import Observer
from fedpeft.server.store import write_json
from fedpeft.server.task import Task

FLOWER_JSON = "flower.json"


def serve(
    grid: Grid,
    cfg: ExperimentConfig,
    *,
    resume: Path | None = None,
    observer: Observer | None = None,
    round_timeout_s: float = keys.DEFAULT_ROUND_TIMEOUT_S,
    connect_timeout_s: float = keys.DEFAULT_CONNECT_TIMEOUT_S,
    policy: WeightPolicy | None = None,
    stop: threading.Event | None = None,
) -> RunResult:
    """Runs (or resumes) ``cfg`` over the SuperNodes that ``grid`` reaches; ``policy``
    bounds each client's aggregation weight (default: the partition the server assigned);
    ``stop`` ends a wait for replies (``FlowerClientPool``)."""
    pools: list[FlowerClientPool] = []

    def make_pool(task: Task) -> FlowerClientPool:
        pool = FlowerClientPool(
            grid,
            cfg.data.num_clients,
            cfg.server.min_clients,
            round_timeout_s,
            connect_timeout_s,
            policy=policy,
            assigned=[len(p) for p in task.data.partitions],
            served=layout(task.initial),
            stop=stop,
        )
        pool.connect()
        pools.append(pool)
        return pool

    result = run_local(cfg, resume=resume, observer=observer, pool=make_pool)
    write_json(result.run_dir / FLOWER_JSON, flower_stats(pools[0], result))
    return result


def flower_stats(pool: FlowerClientPool, result: RunResult) -> dict[str, Any]:
    """What this Flower run carried. A resumed run is a new Flower run: its wire bytes and
    fedpeft's own count both cover the rounds it ran (``rounds``: first and last)."""
    w = pool.wire
    first = int(result.summary.get("resumed_from_round") or 0) + 1
    ran = [r for r in result.rounds if r["round"] >= first]
    return {
        "rounds": [first, ran[-1]["round"]] if ran else [],
        "wire_bytes_down": w.down,
        "wire_bytes_up": w.up,
        "fedpeft_bytes_down": sum(int(r.get("bytes_down", 0)) for r in ran),
        "fedpeft_bytes_up": sum(int(r.get("bytes_up", 0)) for r in ran),
        "messages": w.messages,
        "received": {kind: sorted(names) for kind, names in sorted(w.received.items())},
        "client_weight": {"policy": pool.policy.mode, "max_client_examples": pool.policy.cap},
        "clients": {
            str(cid): {
                "node_id": info.node_id,
                "num_examples": info.num_examples,
                "max_examples": pool.num_examples(cid),
                "own_data": info.own_data,
                "profile": info.profile.to_json(),
                "processes_seen": len(w.reply_pids.get(cid, ())),
                "model_loads_in_last_process": w.model_loads.get(cid),
            }
            for cid, info in sorted(pool.clients.items())
        },
    }


def make_server_app(
    cfg: ExperimentConfig | None = None,
    *,
    resume: Path | None = None,
    observer: Observer | None = None,
    outcome: list[RunResult | BaseException] | None = None,
    stop: threading.Event | None = None,
) -> ServerApp:
    """The ServerApp. ``cfg``/``resume`` default to the run config's ``fedpeft-config`` /
    ``fedpeft-resume``; ``outcome`` receives the result (or the error) for in-process use,
    where setting ``stop`` ends the run at its next wait for clients."""
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        rc = context.run_config
        try:
            run_cfg = cfg or config_from_toml(run_config_text(rc))
            folder = resume or (Path(str(rc[keys.RUN_RESUME])) if rc.get(keys.RUN_RESUME) else None)
            result = serve(
                grid,
                run_cfg,
                resume=folder,
                observer=observer,
                round_timeout_s=run_timeout(
                    rc, keys.RUN_ROUND_TIMEOUT, keys.DEFAULT_ROUND_TIMEOUT_S
                ),
                connect_timeout_s=run_timeout(
                    rc, keys.RUN_CONNECT_TIMEOUT, keys.DEFAULT_CONNECT_TIMEOUT_S
                ),
                policy=WeightPolicy.from_run_config(rc),
                stop=stop,
            )
        except BaseException as e:
            if outcome is None:
                raise
            outcome.append(e)
            return
        if outcome is not None:
            outcome.append(result)

    return server


app = make_server_app()  # the deployment's component: everything comes in the run config
