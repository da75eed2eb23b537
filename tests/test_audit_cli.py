"""``fedpeft audit RUN_DIR`` end to end on tiny-bert run folders made here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fedpeft.cli.main import app
from fedpeft.config import load_config
from fedpeft.data import heldout_train, load_dataset
from fedpeft.runtime.local import run_local
from tests.conftest import tiny_config

PNG = b"\x89PNG\r\n\x1a\n"


def test_audit_writes_json_and_roc_with_every_attack(tmp_path: Path) -> None:
    run = run_local(tiny_config(tmp_path)).run_dir
    out = CliRunner().invoke(app, ["audit", str(run), "--shadow", "2", "--clients", "2"])
    assert out.exit_code == 0, out.output
    assert "AUC" in out.output and "audit.json" in out.output
    record = json.loads((run / "audit.json").read_text())
    assert (run / "audit_roc.png").read_bytes()[:8] == PNG
    assert set(record["targets"]) == {"global", "client_0", "client_1"}
    assert set(record["targets"]["global"]) == {"loss", "reference_round0", "lira"}
    assert set(record["targets"]["client_0"]) == {"loss", "reference_served"}
    for attacks in record["targets"].values():
        for r in attacks.values():
            assert 0.0 <= r["auc"] <= 1.0 and r["members"] == r["nonmembers"]
            assert r["tpr_at_0.001_fpr"] <= r["tpr_at_0.01_fpr"] <= 1.0
    assert record["targets"]["global"]["loss"]["members"] == 64  # every training example
    assert record["targets"]["client_1"]["loss"]["members"] == 32  # that client's own
    assert record["privacy"] == {"mode": "none", "secure_aggregation": False}


def test_a_memorising_run_is_caught(tmp_path: Path) -> None:
    """Full fine-tuning for 10 local epochs on 32 examples a client memorises them: the
    attacks must see it (the audit can report a leak, not only chance)."""
    # a random head, as before head initialisation: from the LDA head's start the tiny model
    # fits these 64 examples without pushing their loss far below the held-out examples'
    cfg = tiny_config(
        tmp_path,
        "peft.method='full'",
        "client.epochs=10",
        "client.lr=1e-3",
        "server.head_init='random'",
    )
    run = run_local(cfg).run_dir
    out = CliRunner().invoke(app, ["audit", str(run), "--clients", "1"])
    assert out.exit_code == 0, out.output
    targets = json.loads((run / "audit.json").read_text())["targets"]
    client = next(v for k, v in targets.items() if k.startswith("client_"))
    assert targets["global"]["loss"]["auc"] > 0.65
    assert client["loss"]["auc"] > 0.85


def test_audit_of_a_dp_run_reports_its_epsilon(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, "privacy.mode='local'", "privacy.noise_multiplier=1.0")
    run = run_local(cfg).run_dir  # the loop does not apply DP yet: the audit replays it
    out = CliRunner().invoke(app, ["audit", str(run), "--clients", "1", "--max-examples", "16"])
    assert out.exit_code == 0, out.output
    record = json.loads((run / "audit.json").read_text())
    from fedpeft.privacy import Accountant

    acc = Accountant("rdp")
    acc.step(1.0, 1.0, 2)
    assert record["privacy"]["epsilon"] == pytest.approx(acc.epsilon(1e-5))
    assert record["targets"]["global"]["loss"]["members"] == 16


def test_non_members_are_held_out_train_examples(tmp_path: Path) -> None:
    cfg = load_config(overrides=["data.train_size=500"])
    used, held = load_dataset(cfg.data, 0), heldout_train(cfg.data, 0)
    full = load_dataset(cfg.data.model_copy(update={"train_size": None}), 0)
    assert len(used.train) + len(held) == len(full.train) == 67_349
    # the subset and the held-out rows partition the file: as multisets of (text, label)
    rows = lambda s: sorted(zip(s.texts, s.labels.tolist(), strict=True))  # noqa: E731
    assert sorted(rows(used.train) + rows(held)) == rows(full.train)
    assert np.array_equal(load_dataset(cfg.data, 0).train.labels, used.train.labels)  # unchanged


def test_bad_run_folders_and_options_exit_2(tmp_path: Path) -> None:
    out = CliRunner().invoke(app, ["audit", str(tmp_path)])
    assert out.exit_code == 2 and "finished fedpeft run" in out.output
    run = run_local(tiny_config(tmp_path)).run_dir
    out = CliRunner().invoke(app, ["audit", str(run), "--shadow", "1"])
    assert out.exit_code == 2 and "LiRA needs" in out.output
    text = (run / "config.toml").read_text()
    assert "train_size = 64" in text
    (run / "config.toml").write_text(text.replace("train_size = 64", "train_size = 99999999"))
    out = CliRunner().invoke(app, ["audit", str(run)])
    assert out.exit_code == 2 and "whole train split" in out.output


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ("adapter_config.json", "ValueError: Can't find 'adapter_config.json'"),
        ("adapter_model.safetensors", "SafetensorError"),
    ],
)
def test_a_damaged_exported_adapter_exits_2_with_one_sentence(
    tmp_path: Path, damage: str, expected: str
) -> None:
    run = run_local(tiny_config(tmp_path, "run.rounds=1", "data.train_size=32")).run_dir
    path = run / "adapter" / damage
    if damage.endswith(".json"):
        path.unlink()
    else:
        path.write_bytes(b"\x00" * 30)
    out = CliRunner().invoke(app, ["audit", str(run), "--clients", "0"])
    said = " ".join(out.output.split())
    assert out.exit_code == 2, said
    assert expected in said and f"fedpeft run --resume {run}" in said
    assert "Traceback" not in said and not (run / "audit.json").exists()


def test_running_out_of_memory_while_loading_the_adapter_is_not_called_damage(
    tmp_path: Path,
    monkeypatch,  # type: ignore[no-untyped-def]
) -> None:
    """``torch.OutOfMemoryError`` is a ``RuntimeError``; the adapter is fine, the device full."""
    import torch

    run = run_local(tiny_config(tmp_path, "run.rounds=1", "data.train_size=32")).run_dir

    def full(*_: object, **__: object) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr("fedpeft.cli.audit.load_adapter", full)
    out = CliRunner().invoke(app, ["audit", str(run), "--clients", "0"])
    assert isinstance(out.exception, torch.OutOfMemoryError), out.output
    assert "damaged" not in out.output


def test_replayed_federation_central_dp_without_noise_is_fedavg(tmp_path: Path) -> None:
    """σ = 0 and an S no update reaches: DP-FedAvg (uniform weights) is FedAvg over the
    equal-sized IID clients; with noise, the result moves."""
    import torch

    from fedpeft.cli.audit_train import RunPrivacy, federation
    from fedpeft.peft import get_adapter_state
    from fedpeft.server.task import build_task

    cfg = tiny_config(tmp_path)
    task = build_task(cfg)
    init = get_adapter_state(task.model)
    parts = task.data.partitions
    assert len(parts[0]) == len(parts[1])
    plain = federation(task, cfg, RunPrivacy("none"), task.data.train, parts, init, 0)
    exact = federation(task, cfg, RunPrivacy("central", 0.0, 1e9), task.data.train, parts, init, 0)
    noisy = federation(task, cfg, RunPrivacy("central", 1.0, 1e9), task.data.train, parts, init, 0)
    for k in init:
        torch.testing.assert_close(exact.state[k], plain.state[k], atol=1e-6, rtol=1e-5)
    assert any(not torch.allclose(noisy.state[k], plain.state[k]) for k in init)
    assert len(plain.norms) == 2 and all(n > 0 for n in plain.norms[0])


def test_an_image_text_run_on_an_image_set_is_refused_as_no_classifier(tmp_path: Path) -> None:
    """CLIP matching CIFAR-10 captions reads class data, but its adapter is no classifier's:
    the audit said the adapter "does not match the run's configuration"."""
    run = tmp_path / "itm"
    (run / "adapter").mkdir(parents=True)
    (run / "summary.json").write_text("{}")
    (run / "config.toml").write_text(
        '[model]\nname = "tiny-clip"\ntask = "itm"\n[data]\ndataset = "cifar10"\n'
    )
    out = CliRunner().invoke(app, ["audit", str(run)])
    assert out.exit_code == 2 and "`model.task = 'itm'` run" in out.output
