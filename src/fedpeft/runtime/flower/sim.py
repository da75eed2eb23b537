"""``fedpeft run --runtime flower-sim``: a config on Flower's simulation engine (Ray).

The ServerApp runs in this process (progress bars and the run folder as usual); the
ClientApps run in ``workers`` Ray worker processes, each loading the base model once.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from fedpeft.config import ExperimentConfig, config_to_toml
from fedpeft.errors import FedpeftError
from fedpeft.profiling import usable_cores
from fedpeft.runtime.local.simulator import RunResult
from fedpeft.server import Observer
from fedpeft.server.config_checks import check_names


class _QuietEngine(logging.Filter):
    """Flower's engine talk as fedpeft's own: its DEBUG/INFO lines only when fedpeft runs
    verbose (``-v``), and never its advice to call ``flwr run`` instead of
    ``run_simulation`` — fedpeft's call, not the user's."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "`run_simulation` function is deprecated" in record.getMessage():
            return False
        return record.levelno >= logging.WARNING or logging.getLogger().level <= logging.INFO


def run_flower_sim(
    cfg: ExperimentConfig,
    *,
    resume: Path | None = None,
    observer: Observer | None = None,
    workers: int | None = None,
) -> RunResult:
    """Runs ``cfg`` with ``cfg.data.num_clients`` virtual SuperNodes (a config that cannot
    run is refused before the engine starts)."""
    check_names(cfg)
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")  # no network calls from flwr
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    # the Ray workers inherit this: transformers' FutureWarnings, which `fedpeft run`
    # silences in its own process, are not printed by every worker either
    os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning")
    from flwr.app import ConfigRecordValues
    from flwr.simulation import run_simulation

    from fedpeft.runtime.flower.client_app import make_client_app
    from fedpeft.runtime.flower.server_app import make_server_app

    outcome: list[RunResult | BaseException] = []
    stop = threading.Event()  # the ServerApp runs in flwr's thread, which outlives an error
    server = make_server_app(cfg, resume=resume, observer=observer, outcome=outcome, stop=stop)
    client = make_client_app(config_to_toml(cfg))
    n = max(1, min(workers or usable_cores(), cfg.data.num_clients))
    backend: dict[str, dict[str, ConfigRecordValues]] = {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {"num_cpus": n, "include_dashboard": False},
    }
    flwr_log, quiet = logging.getLogger("flwr"), _QuietEngine()
    flwr_log.addFilter(quiet)
    try:
        run_simulation(server, client, num_supernodes=cfg.data.num_clients, backend_config=backend)
    finally:  # (Ctrl-C, a dead engine): a ServerApp still waiting for replies ends now
        stop.set()
        flwr_log.removeFilter(quiet)
    if not outcome:
        raise FedpeftError("the Flower simulation ended without a result; see its log above.")
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return outcome[0]
