"""Personalisation in whole runs on the tiny BERT: what stays on the clients never travels
and is never averaged, each client's exported module scores what was logged, and a resumed
run sees exactly the personal states the uninterrupted one saw."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import PeftModel

from fedpeft.client import ClientStateStore
from fedpeft.client.evaluate import _scored
from fedpeft.client.personal import PERSONAL
from fedpeft.client.train import ClientData
from fedpeft.compression import decode
from fedpeft.peft import get_adapter_state
from fedpeft.runtime.local import LocalClientPool, run_local
from fedpeft.server.task import Task, build_task, load_base
from fedpeft.types import TrainInstruction

HEAD = "base_model.model.classifier.weight"


def _personal(tiny, mode: str, *extra: str):  # type: ignore[no-untyped-def]
    return tiny(
        "data.client_test_fraction=0.25",
        f"personalization.mode={mode!r}",
        "data.train_size=96",
        "data.partition='dirichlet'",
        *extra,
    )


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "personal.jsonl").read_text().splitlines()]


class _Spy(LocalClientPool):
    """The in-process pool, recording the tensors of every payload and training reply."""

    def __init__(self, task: Task, folder: Path) -> None:
        super().__init__(task, states=ClientStateStore(folder))
        self.down: list[set[str]] = []
        self.up: list[set[str]] = []

    def fit(self, instruction: TrainInstruction, payload: bytes) -> bytes:
        reply = super().fit(instruction, payload)
        self.down.append(set(decode(payload)[0]))
        self.up.append(set(decode(reply)[0]))
        return reply


@pytest.mark.parametrize("mode, part", [("head", ".classifier."), ("lora_b", ".lora_B.")])
def test_personal_tensors_never_travel_and_are_never_averaged(
    tiny, tmp_path: Path, mode: str, part: str
) -> None:
    cfg = _personal(tiny, mode)
    spies: list[_Spy] = []

    def spy(task: Task) -> _Spy:
        spies.append(_Spy(task, tmp_path / "client-states"))
        return spies[0]

    result = run_local(cfg, pool=spy)
    initial = {k: v.cpu() for k, v in get_adapter_state(build_task(cfg).model).items()}
    personal = {k for k in initial if part in "." + k}
    assert personal and all(not (keys & personal) for keys in spies[0].down + spies[0].up)
    assert all(keys == set(initial) - personal for keys in spies[0].down + spies[0].up)
    for key in initial:  # the server's copy of a personal key is where it started
        moved = not torch.equal(result.state[key], initial[key])
        assert moved == (key not in personal), key
    kept = [ClientStateStore(tmp_path / "client-states").load(c, 99) for c in (0, 1)]
    for key in personal:
        a, b = kept[0][PERSONAL + key], kept[1][PERSONAL + key]
        assert not torch.equal(a, initial[key]) and not torch.equal(a, b)
    rows = _rows(result.run_dir)
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert all("global" not in r["models"] and "personal" in r["models"] for r in rows)
    assert result.summary["personal"]["personal_params"] == sum(
        initial[k].numel() for k in personal
    )


def _test_data(task: Task, client: int) -> ClientData:
    return ClientData(task.data.train, task.data.tests[client])


@pytest.mark.parametrize("mode", ["head", "dual", "finetune"])
def test_each_client_exports_a_module_that_scores_what_was_logged(tiny, mode: str) -> None:
    cfg = _personal(tiny, mode, "personalization.rank=2", "personalization.finetune_steps=3")
    result = run_local(cfg)
    task = build_task(cfg)
    ins = TrainInstruction(2, 0, 1, None, 16, 1e-3, 0.0, 0.0, 0)
    for row in _rows(result.run_dir):
        cid = row["client_id"]
        folder = result.run_dir / "clients" / str(cid) / "adapter"
        model = PeftModel.from_pretrained(load_base(cfg, task.data.spec, task.data.dataset), folder)
        scores = _scored("personal", model, _test_data(task, cid), ins, torch.device("cpu"))
        assert scores["personal.accuracy"] == row["models"]["personal"]["accuracy"]
        if mode == "dual":  # one LoRA of rank r + r_p holds the global and the personal one
            assert json.loads((folder / "adapter_config.json").read_text())["r"] == 8 + 2
        logged = row["models"]["personal"]["loss"]  # float32 sums: relative, for losses ~4
        assert scores["personal.loss"] == pytest.approx(logged, rel=1e-5, abs=1e-5)
        assert row["num_test"] == len(task.data.tests[cid]) > 0
    assert result.summary["personal"]["clients_scored"] == 2


def test_a_resumed_run_scores_its_clients_as_the_uninterrupted_one(tiny) -> None:
    cfg = _personal(tiny, "head", "run.rounds=3", "personalization.eval_every=1")
    full = run_local(cfg)
    first = run_local(cfg.model_copy(update={"run": cfg.run.model_copy(update={"rounds": 2})}))
    resumed = run_local(cfg, resume=first.run_dir)
    assert [r["round"] for r in _rows(resumed.run_dir)] == [1, 1, 2, 2, 3, 3]
    for a, b in zip(_rows(full.run_dir), _rows(resumed.run_dir), strict=True):
        assert a["models"] == b["models"], (a, b)
    for c in (0, 1):
        ours = ClientStateStore(resumed.run_dir / "clients").load(c, 4)
        theirs = ClientStateStore(full.run_dir / "clients").load(c, 4)
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_the_baselines_do_not_depend_on_the_federation(tiny) -> None:
    """local-only trains from the initialisation on the client alone: the same in a head
    run and a FedAvg run; the fully personalised model starts from each run's own global."""
    runs = {
        mode: run_local(_personal(tiny, mode, "personalization.baselines=true"))
        for mode in ("head", "finetune")
    }
    head, fedavg = (_rows(runs[m].run_dir) for m in ("head", "finetune"))
    for a, b in zip(head, fedavg, strict=True):
        assert a["models"]["local"] == b["models"]["local"]
        assert {"local", "full", "personal"} <= a["models"].keys()
        assert {"global", "local", "full", "personal"} <= b["models"].keys()
    s = runs["finetune"].summary["personal"]
    ratio = s["models"]["personal"]["mean"] / s["models"]["full"]["mean"]
    assert s["personal_over_full"] == pytest.approx(ratio)


def test_a_clustered_run_scores_each_client_with_its_cluster_global(tiny) -> None:
    cfg = _personal(tiny, "none", "server.aggregator='clustered'", "data.num_clients=4")
    result = run_local(cfg)
    rows = _rows(result.run_dir)
    groups = {r["client_id"]: r["group"] for r in rows}
    assert len(rows) == 4 and all(g.startswith("cluster-") for g in groups.values())
    assert all(set(r["models"]) == {"global"} for r in rows)
    assert result.summary["personal"]["personal_is_global"]
    assert not (result.run_dir / "clients").exists()  # nothing personal to keep
    task = build_task(cfg)
    assert sum(len(t) for t in task.data.tests) == sum(r["num_test"] for r in rows)
    held, trained = np.concatenate(task.data.tests), np.concatenate(task.data.partitions)
    assert np.intersect1d(held, trained).size == 0


def test_the_report_shows_every_scored_model_the_ratio_and_each_client(tiny) -> None:
    from fedpeft.report import write_report
    from fedpeft.report.personal import LABELS

    result = run_local(_personal(tiny, "finetune", "personalization.baselines=true"))
    text = write_report(result.run_dir).read_text()
    p = result.summary["personal"]
    assert set(p["models"]) == set(LABELS)
    for name, label in LABELS.items():
        (row,) = [line for line in text.splitlines() if line.startswith(f"| {label} |")]
        s = p["models"][name]
        assert row.split(" | ")[1:3] == [f"{s['mean']:.4f}", f"{s['worst10']:.4f}"]
    assert f"**{p['personal_over_full']:.3f}**" in text
    png = result.run_dir / "plots" / "personal.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "(plots/personal.png)" in text


def test_compressed_replies_leave_the_personal_part_out_and_keep_it_beside_the_residual(
    tiny,
) -> None:
    from fedpeft.client.handler import RESIDUAL

    cfg = _personal(tiny, "lora_b", "compression.bits_up=4")
    result = run_local(cfg)
    initial = get_adapter_state(build_task(cfg).model)
    for key, value in initial.items():  # B is never averaged, A is
        assert torch.equal(result.state[key], value.cpu()) == (".lora_B." in key), key
    for c in (0, 1):
        kept = ClientStateStore(result.run_dir / "clients").load(c, 99)
        personal = {k[len(PERSONAL) :] for k in kept if k.startswith(PERSONAL)}
        residual = {k[len(RESIDUAL) :] for k in kept if k.startswith(RESIDUAL)}
        assert personal == {k for k in initial if ".lora_B." in k}
        assert residual == set(initial) - personal  # every shared tensor, nothing personal
        assert len(kept) == len(personal) + len(residual)


def _accuracy(model: torch.nn.Module, data: ClientData) -> float:
    ins = TrainInstruction(2, 0, 1, None, 16, 1e-3, 0.0, 0.0, 0)
    return _scored("personal", model, data, ins, torch.device("cpu"))["personal.accuracy"]


def test_a_first_personal_head_is_the_discriminant_of_the_clients_own_examples(tiny) -> None:
    """``head_start = 'lda'``: a client with no head kept starts its head from its own
    training examples' features (it fits them better than the seeded random head does); a
    class it holds no example of gets a zero row and a bias far below; a kept head is used
    as it is; ``'random'`` is FedPer's seeded initialisation."""
    from dataclasses import replace

    from fedpeft.client.personal import UNHELD_MARGIN, PersonalPlan, personalised, split_personal
    from fedpeft.runtime.local.jobs import personal_kit

    cfg = _personal(tiny, "head", "data.train_size=200", "data.partition='iid'")
    task = build_task(cfg)
    kit = personal_kit(task)
    plan = PersonalPlan("head", (".classifier.",), head_start="lda")
    served, init = split_personal(kit.initial(), plan.parts)
    own = ClientData(task.data.train, task.data.partitions[0])
    lda = personalised(task.model, served, plan, {}, kit, own, torch.device("cpu"))
    fitted, head = _accuracy(lda, own), get_adapter_state(lda)[HEAD].clone()
    randomly = personalised(task.model, served, replace(plan, head_start="random"), {}, kit, own)
    assert torch.equal(get_adapter_state(randomly)[HEAD], init[HEAD])
    assert fitted > _accuracy(randomly, own) + 0.1, fitted  # 0.67 against 0.53 here
    # a kept head is the client's own: used as it is, not re-fitted
    kept = {PERSONAL + k: v + 1 for k, v in init.items()}
    mine = personalised(task.model, served, plan, kept, kit, own, torch.device("cpu"))
    assert torch.equal(get_adapter_state(mine)[HEAD], init[HEAD] + 1)
    assert not torch.equal(head, init[HEAD])
    # a client holding class 0 only: class 1 is predicted nowhere
    labels = np.asarray(task.data.train.labels)
    zeros = [int(i) for i in task.data.partitions[0] if labels[i] == 0]
    one_class = ClientData(task.data.train, zeros)
    model = personalised(task.model, served, plan, {}, kit, one_class, torch.device("cpu"))
    state = get_adapter_state(model)
    bias = state["base_model.model.classifier.bias"]
    assert torch.count_nonzero(state[HEAD][1]) == 0
    assert float(bias[1]) == pytest.approx(float(bias[0]) - UNHELD_MARGIN)
    assert _accuracy(model, one_class) == 1.0
    # a client with a single training example (no covariance): the nearest class mean
    single = ClientData(task.data.train, zeros[:1])
    model = personalised(task.model, served, plan, {}, kit, single, torch.device("cpu"))
    assert _accuracy(model, single) == 1.0
