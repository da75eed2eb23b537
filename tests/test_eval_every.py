"""``eval.every``: central evaluation every N rounds and after the last; reports cope."""

from __future__ import annotations

import pytest

from fedpeft.config import load_config
from fedpeft.errors import FedpeftError
from fedpeft.report import write_report
from fedpeft.runtime.local import run_local
from fedpeft.server.record import evaluation_due


def test_evaluation_is_due_every_n_rounds_and_after_the_last() -> None:
    cfg = load_config(overrides=["eval.every=3", "run.rounds=7"])
    assert [r for r in range(1, 8) if evaluation_due(cfg, r)] == [3, 6, 7]
    every = load_config(overrides=["run.rounds=3"])
    assert [r for r in range(1, 4) if evaluation_due(every, r)] == [1, 2, 3]


def test_a_run_evaluates_only_when_due(tiny) -> None:
    result = run_local(tiny("eval.every=2", "run.rounds=3", "run.workers=1"))
    evals = [r["eval"] for r in result.rounds]
    assert evals[0] == {} and set(evals[1]) == set(evals[2]) == {"accuracy", "macro_f1", "loss"}
    assert result.summary["final_accuracy"] == evals[2]["accuracy"]
    assert result.summary["best_accuracy"] == max(evals[1]["accuracy"], evals[2]["accuracy"])
    report = write_report(result.run_dir).read_text()
    assert "| 1 | — | — | — |" in report


def test_allocation_needs_every_round_evaluated() -> None:
    with pytest.raises(FedpeftError, match="eval.every"):
        load_config(overrides=["eval.every=2", "allocation.enabled=true"])


def test_the_evaluation_batch_is_chosen_by_device_unless_set_and_does_not_change_logits(
    tiny,
) -> None:
    """``eval.batch_size`` unset: 32 on the CPU (128 on CUDA); set: as set. The batches are
    length-sorted and masked, so the size changes only float rounding, not the logits."""
    import torch

    from fedpeft.server.evaluate import predict_logits
    from fedpeft.server.task import build_task

    task = build_task(tiny())
    assert task.cfg.eval.batch_size is None and task.eval_batch_size == 32
    assert build_task(tiny("eval.batch_size=7")).eval_batch_size == 7
    split = task.data.eval
    small = predict_logits(task.model, split, 5, task.device)
    whole = predict_logits(task.model, split, len(split), task.device)
    torch.testing.assert_close(small, whole, rtol=1e-4, atol=1e-5)
    with pytest.raises(FedpeftError):
        load_config(overrides=["eval.batch_size=0"])
