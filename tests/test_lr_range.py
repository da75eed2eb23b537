"""The learning-rate range test: its schedule, smoothing and rule by formula, and a run on
a real client that leaves the adapter as it found it."""

from pathlib import Path

import numpy as np
import pytest
import torch

from fedpeft.client import ClientData
from fedpeft.client.lr_range import RangeTest, lr_range_test, smooth
from fedpeft.peft import get_adapter_state
from fedpeft.server.configure import instruction_for
from fedpeft.server.task import build_task
from tests.conftest import tiny_config


def test_schedule_smoothing_and_rule() -> None:
    t = RangeTest(start=1e-4, end=1e-1, steps=4)
    assert np.allclose(t.schedule(), [1e-4, 1e-3, 1e-2, 1e-1])
    losses = [4.0, 2.0, 1.0, 3.0]
    ema, want = 0.0, []
    for k, x in enumerate(losses, 1):
        ema = 0.5 * ema + 0.5 * x
        want.append(ema / (1 - 0.5**k))
    assert np.allclose(smooth(losses, 0.5), want)
    assert smooth([2.0, 2.0, 2.0], 0.9) == pytest.approx([2.0, 2.0, 2.0])  # bias-corrected
    assert t.choose(t.schedule(), [3.0, 2.0, 1.0, 5.0]) == pytest.approx(1e-3)  # 1e-2 / 10
    assert t.choose(t.schedule(), [1.0, 2.0, 3.0, 4.0]) == pytest.approx(1e-4)  # clipped low
    assert RangeTest(high=5e-3).choose(t.schedule(), [4, 3, 2, 1]) == pytest.approx(5e-3)
    with pytest.raises(ValueError):
        RangeTest(start=1.0, end=0.1)


def test_range_test_on_a_client_restores_the_adapter(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path)
    task = build_task(cfg)
    before = get_adapter_state(task.model)
    ins = instruction_for(cfg, 0, 0)
    data = ClientData(task.data.train, task.data.partitions[0])
    found = lr_range_test(task.model, ins, data, task.device, RangeTest(steps=12, end=10.0))
    after = get_adapter_state(task.model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert (
        1 <= len(found.losses) <= 12
        and found.lrs == RangeTest(steps=12, end=10.0).schedule()[: len(found.losses)]
    )
    assert RangeTest().low <= found.lr <= RangeTest().high
    assert found.lr == pytest.approx(
        min(3e-2, max(1e-4, found.lrs[int(np.argmin(found.losses))] / 10))
    )
    again = lr_range_test(task.model, ins, data, task.device, RangeTest(steps=12, end=10.0))
    assert again == found  # seeded: the same batches, dropout and choice


def test_auto_lr_run_records_and_uses_its_choice(tiny) -> None:  # type: ignore[no-untyped-def]
    import json
    import tomllib

    from fedpeft.report import write_report
    from fedpeft.runtime.local import run_local

    result = run_local(tiny("client.lr='auto'"))
    search = json.loads((result.run_dir / "lr_search.json").read_text())
    config = tomllib.loads((result.run_dir / "config.toml").read_text())
    assert config["client"]["lr"] == search["lr"] and RangeTest().low <= search["lr"]
    assert len(search["lrs"]) == len(search["losses"]) >= 1
    assert f"auto (range test: {search['lr']:.3g})" in write_report(result.run_dir).read_text()
