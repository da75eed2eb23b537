"""``client.lr = "auto"``: the server chooses the clients' learning rate before round 1 by a
range test (``client/lr_range.py``) on the client with the most examples, from the fresh
global adapter, and records what it tried in ``lr_search.json``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from fedpeft.client import ClientData
from fedpeft.client.lr_range import LrSearch, lr_range_test
from fedpeft.config import ExperimentConfig
from fedpeft.types import TrainInstruction

if TYPE_CHECKING:
    from fedpeft.server.task import Task

LR_SEARCH = "lr_search.json"


def with_lr(cfg: ExperimentConfig, lr: float) -> ExperimentConfig:
    return cfg.model_copy(update={"client": cfg.client.model_copy(update={"lr": lr})})


def choose_lr(task: Task) -> LrSearch:
    """The range test on the largest client's data with its label-skew objective."""
    cfg = task.cfg
    cid = int(np.argmax([len(p) for p in task.data.partitions]))
    c = cfg.client
    instruction = TrainInstruction(
        round=0,
        client_id=cid,
        epochs=1,
        steps=None,
        batch_size=c.batch_size,
        lr=0.0,  # the range test sets its own
        weight_decay=c.weight_decay,
        proximal_mu=0.0,
        seed=cfg.run.seed,
        label_skew=c.label_skew,
        label_skew_tau=c.label_skew_tau,
    )
    data = ClientData(task.data.train, task.data.partitions[cid])
    return lr_range_test(task.model, instruction, data, task.device)


def resolved_lr(task: Task) -> tuple[ExperimentConfig, LrSearch | None]:
    """The task's config with ``client.lr = "auto"`` replaced by the range test's choice
    (and the search), or the config unchanged (and None) for a fixed learning rate."""
    if task.cfg.client.lr != "auto":
        return task.cfg, None
    search = choose_lr(task)
    return with_lr(task.cfg, search.lr), search
