"""End to end on the tiny random BERT: run folder, bytes, validation, resume, export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel

from fedpeft.compression import encode
from fedpeft.data import load_dataset, tokenize_split
from fedpeft.errors import FedpeftError
from fedpeft.models import get_model_spec, load_classifier, load_tokenizer
from fedpeft.peft import method_names
from fedpeft.runtime.local import run_local
from fedpeft.server import Observer, RunStore
from fedpeft.server.evaluate import predict_logits
from fedpeft.types import RoundRecord


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_two_clients_two_rounds_writes_the_run_folder(tiny) -> None:
    result = run_local(tiny())
    root = result.run_dir
    for name in (
        "config.toml",
        "metrics.jsonl",
        "clients.jsonl",
        "summary.json",
        "partitions.json",
        "checkpoint/round-000002.manifest.json",
        "checkpoint/round-000002.safetensors",
        "checkpoint/round-000002.json",
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
    ):
        assert (root / name).is_file(), name
    rounds, clients = _lines(root / "metrics.jsonl"), _lines(root / "clients.jsonl")
    assert [r["round"] for r in rounds] == [1, 2]
    assert len(clients) == 4 and all(c["status"] == "ok" for c in clients)
    assert sum(c["num_examples"] for c in clients if c["round"] == 1) == 64
    parts = json.loads((root / "partitions.json").read_text())["clients"]
    assert [p["label_histogram"] for p in parts.values()] and sum(
        sum(p["label_histogram"]) for p in parts.values()
    ) == 64
    # bytes recorded are exactly the encoded payload sizes
    down = len(encode(result.state, {"round": 2}))
    assert all(c["bytes_down"] == down for c in clients)
    assert all(
        c["bytes_up"] > sum(t.numel() * t.element_size() for t in result.state.values())
        for c in clients
    )
    summary = json.loads((root / "summary.json").read_text())
    assert summary["rounds_completed"] == 2
    # the updates, and the class means the bias refresh after the last round asked for
    refresh = [r["head_refresh"]["bytes_up"] for r in rounds if "head_refresh" in r]
    assert len(refresh) == 1 and refresh[0] > 0
    assert summary["bytes_up_total"] == sum(c["bytes_up"] for c in clients) + refresh[0]
    assert summary["final_accuracy"] == rounds[-1]["eval"]["accuracy"]
    assert summary["best_accuracy"] == max(r["eval"]["accuracy"] for r in rounds)


def test_training_changes_the_adapter_and_only_adapter_keys_travel(tiny) -> None:
    result = run_local(tiny("run.rounds=1"))
    assert all(k.startswith("base_model.model.") for k in result.state)
    assert any("lora_A" in k for k in result.state) and any("classifier" in k for k in result.state)
    lora_b = [v for k, v in result.state.items() if "lora_B" in k]
    assert all(v.abs().sum() > 0 for v in lora_b)  # B starts at zero; training moved it


class _BadPool:
    """Wraps the real pool: client 1 returns garbage, so its update must be rejected."""

    def __init__(self, inner, mode: str) -> None:
        self.inner, self.mode = inner, mode

    def num_examples(self, client_id):
        return self.inner.num_examples(client_id)

    def fit(self, instruction, payload):
        reply = self.inner.fit(instruction, payload)
        if instruction.client_id != 1:
            return reply
        if self.mode == "garbage":
            return b"\x00" * 40
        from fedpeft.compression import decode

        state, meta = decode(reply)
        if self.mode == "nan":
            key = next(iter(state))
            state[key] = torch.full_like(state[key], float("nan"))
        elif self.mode == "huge_count":
            meta["num_examples"] = 10**400
        elif self.mode == "more_than_it_has":
            meta["num_examples"] = 10**6
        elif self.mode == "overflowing_metric":
            meta["metrics"] = {"loss": 10**400, "steps": "many"}
        return encode(state, meta)


@pytest.mark.parametrize("mode", ["garbage", "nan", "huge_count", "more_than_it_has"])
def test_bad_update_is_rejected_and_the_round_goes_on(tiny, monkeypatch, mode: str) -> None:
    import fedpeft.runtime.local.simulator as sim

    real = sim.LocalClientPool
    monkeypatch.setattr(sim, "client_pool", lambda task, **kw: _BadPool(real(task, **kw), mode))
    result = run_local(tiny())
    clients = _lines(result.run_dir / "clients.jsonl")
    bad = [c for c in clients if c["client_id"] == 1]
    assert all(c["status"] == "rejected" and c["reason"] for c in bad)
    assert all(c["status"] == "ok" for c in clients if c["client_id"] == 0)
    assert all(torch.isfinite(v).all() for v in result.state.values())
    assert [r["accepted"] for r in result.rounds] == [1, 1]


def test_unparseable_metrics_are_dropped_and_bytes_still_counted(tiny, monkeypatch) -> None:
    import fedpeft.runtime.local.simulator as sim

    real = sim.LocalClientPool
    monkeypatch.setattr(
        sim, "client_pool", lambda task, **kw: _BadPool(real(task, **kw), "overflowing_metric")
    )
    result = run_local(tiny("run.rounds=1"))
    client1 = next(c for c in _lines(result.run_dir / "clients.jsonl") if c["client_id"] == 1)
    assert client1["status"] == "ok" and client1["metrics"] == {}
    assert client1["bytes_up"] > 0


def test_a_crash_mid_checkpoint_or_mid_log_line_still_resumes(tiny) -> None:
    """Round 2's files written but not committed, and a half-written log line: the run
    resumes from round 1's checkpoint and ends like an uninterrupted run."""
    cfg = tiny("run.rounds=2")
    full = run_local(cfg)
    with pytest.raises(KeyboardInterrupt):
        run_local(cfg, observer=_StopAfter(1))
    stopped = next(p for p in full.run_dir.parent.iterdir() if p != full.run_dir)
    ckpt = stopped / "checkpoint"
    (ckpt / "round-000002.safetensors").write_bytes(b"half")  # crash before its manifest
    (ckpt / ".round-000002.json.tmp-x1y2").write_bytes(b"{")  # killed inside write_atomic
    with (stopped / "metrics.jsonl").open("a") as f:
        f.write('{"round": 2, "eval": {"accur')
    resumed = run_local(cfg, resume=stopped)
    assert [r["round"] for r in resumed.rounds] == [1, 2]
    for key, value in full.state.items():
        torch.testing.assert_close(resumed.state[key], value, rtol=0, atol=1e-6)
    assert sorted(p.name for p in ckpt.iterdir()) == [
        f"round-{r:06d}.{kind}" for r in (1, 2) for kind in ("json", "manifest.json", "safetensors")
    ]


class _StopAfter(Observer):
    def __init__(self, rnd: int) -> None:
        self.rnd = rnd

    def on_round_end(self, record: RoundRecord) -> None:
        if record.round == self.rnd:
            raise KeyboardInterrupt


def test_resume_gives_the_same_final_adapter_as_an_uninterrupted_run(tiny) -> None:
    cfg = tiny("run.rounds=3", "data.partition='dirichlet'", "client.proximal_mu=0.1")
    full = run_local(cfg)
    with pytest.raises(KeyboardInterrupt):
        run_local(cfg, observer=_StopAfter(1))
    runs = sorted(Path(cfg.run.output_dir).iterdir())
    stopped = next(r for r in runs if r != full.run_dir)
    assert RunStore(stopped).checkpoints.rounds()[0] == 1
    resumed = run_local(cfg, resume=stopped)
    assert resumed.run_dir == stopped
    assert [r["round"] for r in resumed.rounds] == [1, 2, 3]
    for key, value in full.state.items():
        torch.testing.assert_close(resumed.state[key], value, rtol=0, atol=1e-6)
    assert resumed.rounds[-1]["eval"] == pytest.approx(full.rounds[-1]["eval"], abs=1e-6)


@pytest.mark.parametrize(
    "damage", ["no_manifest", "garbage_weights", "round_mismatch", "path_in_manifest"]
)
def test_resume_of_a_damaged_run_says_so_and_starts_nothing(tiny, damage: str) -> None:
    """Every kept round damaged the same way: nothing verifies, nothing is resumed."""
    cfg = tiny("run.rounds=1")
    root = run_local(cfg).run_dir
    ckpt = root / "checkpoint"
    for rnd in RunStore(root).checkpoints.rounds():
        manifest = ckpt / f"round-{rnd:06d}.manifest.json"
        if damage == "no_manifest":
            manifest.unlink()
        elif damage == "garbage_weights":
            (ckpt / f"round-{rnd:06d}.safetensors").write_bytes(b"not a checkpoint")
        elif damage == "path_in_manifest":
            raw = json.loads(manifest.read_text())
            manifest.write_text(json.dumps({**raw, "files": {"../config.toml": "0" * 64}}))
        else:
            manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "round": 5}))
    before = (root / "metrics.jsonl").read_text()
    with pytest.raises(FedpeftError, match="cannot be resumed"):
        run_local(cfg, resume=root)
    assert (root / "metrics.jsonl").read_text() == before


def test_exported_adapter_loads_in_peft_and_predicts_like_fedpeft(tiny) -> None:
    cfg = tiny()
    result = run_local(cfg)
    spec = get_model_spec("tiny-bert")
    with torch.random.fork_rng(devices=[]):  # the tiny base is random: rebuild it the same way
        torch.manual_seed(cfg.run.seed)
        base = load_classifier(spec, 2, cfg.run.seed)
    model = PeftModel.from_pretrained(base, str(result.run_dir / "adapter"))
    ds = load_dataset(cfg.data, cfg.run.seed)
    split = tokenize_split(ds.eval, load_tokenizer(spec), cfg.model.max_length)
    preds = predict_logits(model, split, 16, torch.device("cpu")).argmax(-1).numpy()
    acc = float((preds == split.labels).mean())
    assert acc == pytest.approx(result.rounds[-1]["eval"]["accuracy"], abs=1e-9)
    assert (
        json.loads((result.run_dir / "adapter/adapter_config.json").read_text())[
            "base_model_name_or_path"
        ]
        == "tiny-bert"
    )


@pytest.mark.parametrize("method", method_names())
def test_every_method_runs_end_to_end_and_exports(tiny, method: str) -> None:
    from fedpeft.peft import load_adapter

    rule = ("server.aggregator='flora'",) if method == "flora" else ()  # they go together
    cfg = tiny(f"peft.method={method!r}", "run.rounds=1", *rule)
    result = run_local(cfg)
    assert result.summary["peft"]["method"] == method
    assert all(c["status"] == "ok" for c in _lines(result.run_dir / "clients.jsonl"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.run.seed)
        base = load_classifier(get_model_spec("tiny-bert"), 2, cfg.run.seed)
    model = load_adapter(base, result.run_dir / "adapter")
    ds = load_dataset(cfg.data, cfg.run.seed)
    split = tokenize_split(ds.eval, load_tokenizer(get_model_spec("tiny-bert")), 64)
    preds = predict_logits(model, split, 16, torch.device("cpu")).argmax(-1).numpy()
    assert float((preds == split.labels).mean()) == result.rounds[-1]["eval"]["accuracy"]
