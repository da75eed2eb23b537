"""A client's CPU seconds (``train_cpu_s``): what the experiment report's client-cost
outcome compares, because wall time on a shared machine grows with whatever else runs."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from fedpeft.client import ClientData, train
from fedpeft.server.configure import instruction_for
from fedpeft.server.task import build_task
from tests.conftest import tiny_config


def test_cpu_seconds_leave_out_time_the_client_waited(tmp_path: Path) -> None:
    """Waiting (here a sleep after every backward pass, as a starved process waits for a
    core) adds to ``train_time_s`` and not to ``train_cpu_s``."""
    cfg = tiny_config(tmp_path)
    task = build_task(cfg)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        update = train(
            task.model,
            instruction_for(cfg, 1, 0),
            ClientData(task.data.train, np.arange(32)),
            task.device,
            after_backward=lambda: time.sleep(0.1),
        )
    finally:
        torch.set_num_threads(threads)
    m = update.metrics
    steps = int(m["steps"])
    assert steps >= 1 and m["train_cpu_s"] > 0
    assert m["train_time_s"] - m["train_cpu_s"] >= 0.1 * steps
