"""``client.head_lr``: the task head trains at its own learning rate."""

from pathlib import Path

import numpy as np
import torch

from fedpeft.client import ClientData, train
from fedpeft.client.train import HEAD_MODULES
from fedpeft.peft import get_adapter_state, set_adapter_state
from fedpeft.server.configure import instruction_for
from fedpeft.server.task import build_task
from tests.conftest import tiny_config


def _moves(tmp_path: Path, *extra: str) -> dict[str, float]:
    cfg = tiny_config(tmp_path, *extra)
    task = build_task(cfg)
    start = get_adapter_state(task.model)
    set_adapter_state(task.model, start)
    train(
        task.model,
        instruction_for(cfg, 1, 0),
        ClientData(task.data.train, np.arange(16)),
        task.device,
    )
    end = get_adapter_state(task.model)
    head = [k for k in start if set(k.split(".")) & set(HEAD_MODULES)]
    body = [k for k in start if k not in head]
    assert head and body
    return {
        part: max(float((end[k] - start[k]).abs().max()) for k in keys)
        for part, keys in (("head", head), ("body", body))
    }


def test_head_lr_sets_the_head_apart(tmp_path: Path) -> None:
    same = _moves(tmp_path, "client.lr=1e-3")
    still = _moves(tmp_path, "client.lr=1e-3", "client.head_lr=1e-9")
    fast = _moves(tmp_path, "client.lr=1e-3", "client.head_lr=1e-1")
    # one step (16 examples): Adam moves a parameter by at most ~lr, the body as before
    assert still["head"] < 1e-7 < same["head"] <= 1.1e-3 < fast["head"]
    assert torch.isclose(torch.tensor(still["body"]), torch.tensor(same["body"]))
