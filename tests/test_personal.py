"""Personalisation without a model: held-out shares, plans, key splits, summaries, replies."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedpeft.client.personal import (
    PersonalPlan,
    is_personal,
    kept_personal,
    shared_view,
    split_personal,
    with_personal,
)
from fedpeft.compression import encode
from fedpeft.config import load_config
from fedpeft.data import holdout
from fedpeft.errors import FedpeftError
from fedpeft.server.personal import (
    check_evaluation,
    check_personalization,
    clients_due,
    evaluation_plan,
    personal_summary,
    spread,
)
from fedpeft.server.validate import METRIC_LIMIT, RejectedUpdate
from fedpeft.types import TrainInstruction


def _parts(seed: int) -> tuple[np.ndarray, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, size=300)
    perm = rng.permutation(300)
    return labels, [np.sort(p) for p in np.array_split(perm, [7, 60, 200])]  # 7, 53, 140, 100


def test_holdout_is_a_stratified_seeded_split_of_each_partition() -> None:
    labels, parts = _parts(0)
    train, test = holdout(labels, parts, 0.2, seed=3)
    for part, tr, te in zip(parts, train, test, strict=True):
        assert np.intersect1d(tr, te).size == 0
        assert np.array_equal(np.sort(np.concatenate([tr, te])), part)
        assert len(te) == max(1, round(0.2 * len(part)))
        for y in np.unique(labels[part]):  # each class gives ⌊f·n_y⌋ or ⌈f·n_y⌉
            n_y, t_y = int((labels[part] == y).sum()), int((labels[te] == y).sum())
            assert math.floor(0.2 * n_y) <= t_y <= math.ceil(0.2 * n_y)
    again = holdout(labels, parts, 0.2, seed=3)[1]
    other = holdout(labels, parts, 0.2, seed=4)[1]
    assert all(np.array_equal(a, b) for a, b in zip(test, again, strict=True))
    assert any(not np.array_equal(a, b) for a, b in zip(test, other, strict=True))


def test_no_fraction_holds_nothing_out() -> None:
    labels, parts = _parts(1)
    train, test = holdout(labels, parts, 0.0, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(train, parts, strict=True))
    assert all(len(t) == 0 for t in test)
    one = holdout(labels, [parts[0][:1]], 0.5, seed=0)  # one example: it stays for training
    assert len(one[0][0]) == 1 and len(one[1][0]) == 0


def test_a_plan_travels_as_json_and_malformed_ones_are_refused() -> None:
    plan = PersonalPlan("lora_b", (".lora_B.",), 0, 0, 5, 5)
    assert PersonalPlan.from_json(plan.to_json()) == plan
    head = PersonalPlan("head", (".classifier.",), head_start="lda")
    assert PersonalPlan.from_json(head.to_json()) == head
    assert PersonalPlan.from_json("") == PersonalPlan()
    for bad in ('{"mode": "x", "evil": 1}', '{"rank": -1}', '{"rank": true}', "[1]", "{",
                '{"parts": [3]}', '{"full_epochs": 1e9}', '{"head_start": "zero"}',
                '{"head_start": 1}'):  # fmt: skip
        with pytest.raises(FedpeftError):
            PersonalPlan.from_json(bad)


def test_personal_keys_are_split_off_and_kept_under_their_prefix() -> None:
    state = {
        "base_model.model.classifier.weight": torch.ones(2, 3),
        "classifier.bias": torch.ones(2),
        "base_model.model.pre_classifier.weight": torch.ones(3),
        "x.query.lora_B.weight": torch.zeros(3, 2),
        "x.query.lora_A.weight": torch.ones(2, 3),
    }
    head = (".classifier.",)
    shared, mine = split_personal(state, head)
    assert sorted(mine) == ["base_model.model.classifier.weight", "classifier.bias"]
    assert "base_model.model.pre_classifier.weight" in shared
    assert sorted(shared_view(state, PersonalPlan("lora_b", (".lora_B.",)))) == sorted(
        k for k in state if "lora_B" not in k
    )
    assert shared_view(state, PersonalPlan()) is state
    kept = with_personal({"scaffold/c": torch.ones(1)}, mine)
    assert sorted(kept) == ["personal/base_model.model.classifier.weight",
                            "personal/classifier.bias", "scaffold/c"]  # fmt: skip
    assert kept_personal(kept).keys() == mine.keys()
    assert not is_personal("x.query.lora_A.weight", (".lora_B.",))


def test_spread_against_numpy() -> None:
    rng = np.random.default_rng(5)
    for n in (1, 9, 10, 11, 37):
        xs = rng.random(n).tolist()
        s = spread(xs)
        k = max(1, math.ceil(n / 10))
        assert s["mean"] == pytest.approx(np.mean(xs))
        assert s["std"] == pytest.approx(np.std(xs))
        assert s["worst10"] == pytest.approx(np.mean(np.sort(xs)[:k]))
        assert (s["min"], s["max"], s["clients"]) == (min(xs), max(xs), n)


def _row(rnd: int, cid: int, **models: float) -> dict:
    scores = {m: {"accuracy": a, "loss": 1.0} for m, a in models.items()}
    return {"round": rnd, "client_id": cid, "status": "ok", "num_test": 5, "models": scores}


def test_the_summary_reads_the_last_evaluated_round_and_the_ratio() -> None:
    rows = [_row(1, 0, personal=0.1, full=0.1)]
    rows += [_row(2, c, personal=p, full=f) for c, (p, f) in enumerate([(0.6, 0.8), (0.9, 1.0)])]
    rows.append({"round": 2, "client_id": 2, "status": "failed", "reason": "gone"})
    s = personal_summary(rows)
    assert s is not None and s["round"] == 2 and s["clients_scored"] == 2
    assert s["clients_failed"] == 1
    assert s["models"]["personal"]["mean"] == pytest.approx(0.75)
    assert s["models"]["personal"]["worst10"] == pytest.approx(0.6)
    assert s["personal_over_full"] == pytest.approx(0.75 / 0.9)
    first = personal_summary(rows, 1)  # an earlier round, asked for by number
    assert first is not None and first["round"] == 1 and first["clients_scored"] == 1
    assert first["personal_over_full"] == pytest.approx(1.0)
    clustered = personal_summary([_row(3, 0, **{"global": 0.5})])
    assert clustered is not None and clustered["personal_is_global"]
    assert clustered["personal_over_full"] is None
    assert personal_summary([]) is None


def _instruction() -> TrainInstruction:
    return TrainInstruction(4, 2, 1, None, 8, 1e-3, 0.0, 0.0, 0, nonce="abc")


def _reply(tensors: dict, **meta: object) -> bytes:
    base = {"client_id": 2, "round": 4, "nonce": "abc", "num_examples": 6, "metrics": {}}
    return encode(tensors, {**base, **meta})


def test_an_evaluation_reply_carries_metrics_only_and_answers_its_instruction() -> None:
    metrics = {"personal.accuracy": 0.5, "global.loss": 1e300, "x": "text"}
    n, got = check_evaluation(_reply({}, metrics=metrics), _instruction())
    assert n == 6 and got == {"personal.accuracy": 0.5}  # unbounded and non-numbers dropped
    assert METRIC_LIMIT < 1e300
    for reply in (
        _reply({"w": torch.zeros(2)}),  # a tensor: the evaluation sends none back
        _reply({}, nonce="zzz"),
        _reply({}, client_id=3),
        _reply({}, num_examples=-1),
        b"garbage!",
    ):
        with pytest.raises(RejectedUpdate):
            check_evaluation(reply, _instruction())


def test_when_clients_are_scored_and_with_what(tmp_path) -> None:
    cfg = load_config(overrides=["run.rounds=5", "data.client_test_fraction=0.2",
                                 "personalization.eval_every=2", "personalization.baselines=true",
                                 "personalization.mode='head'"])  # fmt: skip
    assert [r for r in range(1, 6) if clients_due(cfg, r)] == [2, 4, 5]
    plan = PersonalPlan("head", (".classifier.",))
    assert evaluation_plan(cfg, plan, 4) == plan
    final = evaluation_plan(cfg, plan, 5)
    assert (final.local_epochs, final.full_epochs, final.parts) == (5, 5, plan.parts)
    assert not clients_due(load_config(overrides=["run.rounds=5"]), 5)


def test_personalisation_is_refused_where_it_cannot_be_measured_or_run() -> None:
    with pytest.raises(FedpeftError, match="client_test_fraction"):
        load_config(overrides=["personalization.mode='head'"])
    for extra in (["server.mode='async'"], ["allocation.enabled=true"]):
        cfg = load_config(overrides=["personalization.mode='lora_b'",
                                     "data.client_test_fraction=0.2", *extra])  # fmt: skip
        with pytest.raises(FedpeftError):
            check_personalization(cfg)
