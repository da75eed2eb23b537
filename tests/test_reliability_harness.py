"""The harness of RELIABILITY.md's measured studies (``benchmarks/reliability.py``), a few
cases of each; the full studies are run by hand (their commands are in RELIABILITY.md)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedpeft.cli.main import app
from fedpeft.config import load_config
from fedpeft.runtime.local import run_local

# the studies are scripts under benchmarks/ (a package named `benchmarks` is already taken
# in the environment, by a dependency), so their folder is put on the path as the script's is
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from reliability import damage, dropout, kill, launch, malicious  # noqa: E402
from reliability.common import TINY, Exit, adapter_bytes  # noqa: E402


def _resume_in_process(run: Path, log: Path) -> Exit:
    """``fedpeft run --resume RUN`` through the CLI's own entry point, in this process."""
    done = CliRunner().invoke(app, ["run", "--resume", str(run)])
    return Exit(done.exit_code, done.output, 0.0)


def test_a_killed_cli_run_resumes_to_the_uninterrupted_result(tmp_path: Path) -> None:
    """A real ``fedpeft run`` process SIGKILLed once round 1 is logged (while its checkpoint
    is being written), then resumed."""
    extra = ("run.rounds=2",)
    cfg = load_config(overrides=[*TINY, *extra, f"run.output_dir={str(tmp_path / 'ref')!r}"])
    reference = run_local(cfg).run_dir
    launcher = launch.Launcher("exec")  # a fresh `python -m fedpeft.cli.main run`
    point = kill.Point(event="line1")
    row = kill.trial(launcher, point, extra, reference, tmp_path / "trial", _resume_in_process)
    assert row["killed"] and row["after_kill"]["metrics_lines"] >= 1, row
    assert row["outcome"] == "equal", row


def test_damaged_checkpoints_are_refused_or_fall_back(tmp_path: Path) -> None:
    cfg = damage.config(tmp_path / "runs")
    reference = run_local(cfg).run_dir
    base = damage.stopped_run(cfg, 2)
    variants = {v.name: v for v in damage._byte_variants(0) + damage._content_variants()}
    expected = {
        "flip_middle round-000002.safetensors": "fell_back",
        "manifests of both rounds with another fingerprint": "refused",
        "round 1 deleted whole": "resumed",
        "forged: 1e30 in a round-2 tensor": "adopted",
    }
    for i, (name, outcome) in enumerate(expected.items()):
        row = damage.resume(cfg, variants[name], base, {}, reference, tmp_path / f"v{i}")
        assert row["outcome"] == outcome, row
    assert adapter_bytes(reference) is not None


def test_tampered_replies_per_kind(tmp_path: Path) -> None:
    on, _ = malicious.one("update boosted ×1000", None, tmp_path / "on", None)
    off, _ = malicious.one("update boosted ×1000", 0.0, tmp_path / "off", None)
    assert on["tampered_accepted"] == 0 and "server.norm_guard" in on["client0"][0]["reason"]
    assert off["tampered_accepted"] == malicious.ROUNDS  # switched off: let in
    assert on["went_on"] and off["went_on"] and on["others_ok"] and off["others_ok"]
    assert set(malicious.KINDS) >= {"NaN in a tensor", "an extra 64 MB tensor", "replayed verbatim"}


@pytest.mark.parametrize("extra", [("server.min_clients=1",), dropout.ASYNC])
def test_every_device_offline(tmp_path: Path, extra: tuple[str, ...]) -> None:
    row = dropout.one(tmp_path, 1.0, extra)
    if "server.mode='async'" in extra:  # nobody ever trains: stopped with one sentence
        assert not row["completed"] and "none of the last" in row["stopped"], row
        return
    assert row["completed"] and row["dropped_fraction"] == 1.0, row
    assert row["rounds"] == dropout.ROUNDS == row["rounds_without_quorum"]
    assert row["updates_accepted"] == 0 and row["report"]["exit"] == 0, row
