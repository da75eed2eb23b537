"""``server.bias_refresh``: after a round, only the head's bias moves, to the pairwise
midpoints of the class-mean logits that the clients' feature statistics give — checked
against a direct least-squares solve, on a run against the statistics recomputed by hand,
and where it must stay off."""

import json
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
import torch

from fedpeft.aggregation.head_init import (
    STATS_COUNT,
    STATS_SUM,
    bias_midpoints,
    sum_stats,
)
from fedpeft.client import ClientData
from fedpeft.client.features import class_feature_stats
from fedpeft.errors import FedpeftError
from fedpeft.peft import set_adapter_state
from fedpeft.server.config_checks import check_combinations
from fedpeft.server.head_when import bias_refresh_due
from fedpeft.server.task import build_task
from tests.conftest import class_stats, tiny_config


def _head(classes: int, dim: int, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "classifier.weight": torch.randn(classes, dim, generator=gen),
        "classifier.bias": torch.randn(classes, generator=gen) * 3,
    }


def test_two_classes_put_the_threshold_halfway_between_the_mean_margins() -> None:
    gen = torch.Generator().manual_seed(0)
    labels = torch.tensor([0] * 30 + [1] * 70)
    feats = torch.randn(100, 5, generator=gen, dtype=torch.float64) + labels[:, None] * 1.5
    state = _head(2, 5, 1)
    total = sum_stats(
        [class_stats(feats[:45], labels[:45], 2), class_stats(feats[45:], labels[45:], 2)]
    )
    out = bias_midpoints(state, total)
    logits = feats @ out["classifier.weight"].double().T + out["classifier.bias"].double()
    margin = logits[:, 1] - logits[:, 0]
    # the midpoint of the two classes' mean margins is now the decision threshold, zero
    middle = 0.5 * (margin[labels == 1].mean() + margin[labels == 0].mean())
    assert abs(float(middle)) < 1e-5
    assert torch.equal(out["classifier.weight"], state["classifier.weight"])
    # the shift sums to zero and a second application moves nothing
    assert abs(float((out["classifier.bias"] - state["classifier.bias"]).sum())) < 1e-5
    again = bias_midpoints(out, total)
    assert torch.allclose(again["classifier.bias"], out["classifier.bias"], atol=1e-5)


def test_many_classes_are_the_least_squares_fit_of_the_pairwise_midpoints() -> None:
    gen = torch.Generator().manual_seed(2)
    classes, dim = 6, 8
    labels = torch.randint(0, 5, (200,), generator=gen)  # class 5 is held by nobody
    feats = torch.randn(200, dim, generator=gen, dtype=torch.float64)
    feats += torch.nn.functional.one_hot(labels, dim).double() * 2.0
    state = _head(classes, dim, 3)
    out = bias_midpoints(state, class_stats(feats, labels, classes))
    # direct: every held pair's midpoint threshold, solved for the shifts with numpy
    w, b = state["classifier.weight"].double().numpy(), state["classifier.bias"].double().numpy()
    z = feats.numpy() @ w.T + b
    held = [c for c in range(classes) if (labels == c).any()]
    mean = {c: z[labels.numpy() == c].mean(0) for c in held}
    rows, target = [], []
    for a, c in combinations(held, 2):
        row = np.zeros(len(held))
        row[held.index(a)], row[held.index(c)] = 1.0, -1.0
        rows.append(row)
        target.append(-0.5 * ((mean[a][a] - mean[a][c]) + (mean[c][a] - mean[c][c])))
    rows.append(np.ones(len(held)))  # Σ δ = 0
    target.append(0.0)
    shift = np.linalg.lstsq(np.array(rows), np.array(target), rcond=None)[0]
    got = (out["classifier.bias"] - state["classifier.bias"]).double().numpy()
    assert np.allclose(got[held], shift, atol=1e-4)
    # and from the new head's own logits: for every held class a, the midpoints of its
    # pairwise margins sum to zero (the least-squares optimum; no shared formula)
    z = feats.numpy() @ out["classifier.weight"].double().numpy().T
    z += out["classifier.bias"].double().numpy()
    for a in held:
        mids = []
        for c in held:
            margin = z[:, a] - z[:, c]
            mids.append(
                0.5 * (margin[labels.numpy() == a].mean() + margin[labels.numpy() == c].mean())
            )
        assert abs(sum(mids)) < 1e-4, a
    assert got[5] == 0.0  # the class nobody holds keeps its bias


def test_a_head_without_bias_is_refused() -> None:
    stats = class_stats(torch.randn(10, 4, dtype=torch.float64), torch.arange(10) % 2, 2)
    with pytest.raises(ValueError, match="no bias"):
        bias_midpoints({"score.weight": torch.zeros(2, 4)}, stats)


def test_a_default_run_moves_only_the_bias_after_the_last_round(tmp_path: Path) -> None:
    from fedpeft.runtime.local.simulator import run_local

    shared = ("data.dataset='ag_news'", "data.num_clients=3", "data.partition='dirichlet'")
    cfg = tiny_config(tmp_path, *shared)  # server.bias_refresh left at its default
    result = run_local(cfg)
    plain = run_local(tiny_config(tmp_path, *shared, "server.bias_refresh='none'"))
    rows = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    refreshed = {r["round"]: r["head_refresh"] for r in rows if "head_refresh" in r}
    assert list(refreshed) == [2] and refreshed[2]["part"] == "bias"
    assert refreshed[2]["clients"] == 3 and refreshed[2]["bytes_up"] > 0
    # class means only: C·H + C float64 values a client, no H × H second moment
    (c, h), *_ = [v.shape for k, v in result.state.items() if k.endswith("classifier.weight")]
    assert refreshed[2]["bytes_up"] / 3 < (c * h + c) * 8 + 2048 < h * h * 8
    assert all("head_refresh" not in r for r in plain.rounds)
    from fedpeft.report.markdown import render_report

    assert "bias moved after round 2 (`bias_refresh = auto`)" in render_report(result.run_dir, [])
    assert "bias moved never" in render_report(plain.run_dir, [])
    # the same training (same seed), then the bias alone moved by the rule over every
    # client's statistics under the final adapter, recomputed here
    task = build_task(cfg)
    set_adapter_state(task.model, plain.state)
    stats = [
        class_feature_stats(task.model, ClientData(task.data.train, p), 4, 64, task.device)
        for p in task.data.partitions
    ]
    want = bias_midpoints(plain.state, sum_stats(stats))
    for key, value in result.state.items():
        if key == "classifier.bias" or key.endswith(".classifier.bias"):
            assert torch.allclose(value, want[key], atol=1e-5)
            assert not torch.allclose(value, plain.state[key], atol=1e-4)
        else:
            assert torch.equal(value, plain.state[key]), key


def test_bias_refresh_stays_off_where_the_statistics_are_not_to_be_sent(tmp_path: Path) -> None:
    last = ("run.rounds=3",)
    assert [bias_refresh_due(tiny_config(tmp_path, *last), r) for r in (1, 2, 3)] == [
        False,
        False,
        True,
    ]
    every = tiny_config(tmp_path, *last, "server.bias_refresh='every'")
    assert all(bias_refresh_due(every, r) for r in (1, 2, 3))
    # a round whose whole head is set again sets its bias with it
    both = tiny_config(tmp_path, *last, "server.head_refresh='last'")
    assert not bias_refresh_due(both, 3)
    dp = ("privacy.mode='central'", "privacy.noise_multiplier=0.5", "privacy.clip_norm=1.0")
    for off in (("server.head_init='random'",), dp, ("server.mode='async'",)):
        assert not bias_refresh_due(tiny_config(tmp_path, *last, *off), 3)
    # asked for explicitly where it cannot run: one clear sentence before anything trains
    with pytest.raises(FedpeftError, match="bias_refresh = 'last'` cannot run: .*at random"):
        check_combinations(
            tiny_config(tmp_path, "server.bias_refresh='last'", "server.head_init='random'")
        )
    check_combinations(tiny_config(tmp_path, "server.head_init='random'"))  # auto: off, fine


def test_bad_class_means_are_left_out_and_the_run_goes_on(tmp_path: Path) -> None:
    """A client whose statistics give a class it has no example of a feature sum, or count
    no example at all, is rejected with its reason; the bias is set from the others."""
    from fedpeft.client.handler import KIND_CLASS_MEANS
    from fedpeft.compression import decode, encode
    from fedpeft.runtime.local import LocalClientPool
    from fedpeft.runtime.local.simulator import run_local

    class Lying(LocalClientPool):
        def fit(self, instruction, payload):  # type: ignore[no-untyped-def]
            reply = super().fit(instruction, payload)
            if instruction.kind != KIND_CLASS_MEANS or instruction.client_id == 0:
                return reply
            stats, meta = decode(reply)
            if instruction.client_id == 1:  # class 0 counted as none, with a feature sum
                stats[STATS_SUM][0] += 1.0
                stats[STATS_COUNT][0] = 0.0
            else:  # counts nothing
                stats[STATS_COUNT] = stats[STATS_COUNT] * 0
            return encode(stats, meta)

    shared = ("data.dataset='ag_news'", "data.num_clients=3", "data.partition='dirichlet'")
    result = run_local(tiny_config(tmp_path, *shared, "data.alpha=0.1"), pool=Lying)
    rows = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    refreshed = rows[-1]["head_refresh"]
    assert refreshed["clients"] == 1 and sorted(refreshed["rejected"]) == ["1", "2"]
    assert "count no example" in refreshed["rejected"]["2"]
    assert "no example" in refreshed["rejected"]["1"]  # a sum without examples (or none)
    assert all(bool(torch.isfinite(v).all()) for v in result.state.values())
