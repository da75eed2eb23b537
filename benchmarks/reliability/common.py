"""What the studies share: the tiny configurations, the CLI as a subprocess, and the
comparison of a run folder with an uninterrupted run's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "benchmarks" / "results"

# 3 clients × 4 rounds of the tiny random BERT on 64 SST-2 examples, Dirichlet(0.5)
TINY = (
    "model.name='tiny-bert'",
    "data.num_clients=3",
    "run.rounds=4",
    "data.train_size=64",
    "data.eval_size=48",
    "data.partition='dirichlet'",
    "client.batch_size=16",
    "run.threads=1",
)
ASYNC = ("server.mode='async'", "server.buffer_size=2", "server.max_concurrency=2")

# measured, not computed: they differ between two runs of the same configuration
ROUND_MEASURED = (
    "wall_time_s", "eval_time_s", "client_time_s", "fit_time_s", "bytes_up", "reply_bytes_up",
)  # fmt: skip
CLIENT_MEASURED = ("bytes_up",)
CLIENT_METRICS_MEASURED = ("train_time_s", "train_cpu_s", "mem_rise_bytes", "peak_mem_bytes")


def merged(*groups: tuple[str, ...] | list[str]) -> list[str]:
    """``--set`` overrides with later ones replacing earlier ones of the same key (what
    ``load_config`` does with them), in first-seen order: the configuration a study ran."""
    out: dict[str, str] = {}
    for group in groups:
        for item in group:
            out[item.split("=", 1)[0]] = item
    return list(out.values())


def env() -> dict[str, str]:
    """This checkout's fedpeft, offline, one thread."""
    src = str(REPO / "src")
    path = os.environ.get("PYTHONPATH")
    return {
        **os.environ,
        "PYTHONPATH": src if not path else f"{src}{os.pathsep}{path}",
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }


def cli(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "fedpeft.cli.main", *args]


def sets(items: tuple[str, ...] | list[str]) -> list[str]:
    return [x for item in items for x in ("--set", item)]


@dataclass(frozen=True)
class Exit:
    """A finished CLI process: exit code, stderr, seconds."""

    code: int
    stderr: str
    seconds: float

    @property
    def one_sentence(self) -> bool:
        """Exit 2 with one ``error:`` line and no traceback (STYLE.md 16)."""
        return (
            self.code == 2 and self.stderr.count("error:") == 1 and "Traceback" not in self.stderr
        )

    def error(self) -> str:
        return " ".join(self.stderr[self.stderr.find("error:") :].split()) if self.stderr else ""


def run_cli(args: list[str], log: Path, timeout: float = 900) -> Exit:
    """``fedpeft <args>`` in a fresh process, to completion."""
    start = time.perf_counter()
    with log.open("w") as err:
        proc = subprocess.run(
            cli(args), env=env(), stdout=subprocess.DEVNULL, stderr=err, timeout=timeout
        )
    return Exit(proc.returncode, log.read_text(errors="replace"), time.perf_counter() - start)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def computed_logs(run: Path) -> dict[str, list[dict[str, Any]]]:
    """metrics.jsonl and clients.jsonl without what is measured (times, memory, and the
    bytes of replies whose metadata holds measured seconds)."""
    rounds = [
        {k: v for k, v in r.items() if k not in ROUND_MEASURED}
        for r in read_jsonl(run / "metrics.jsonl")
    ]
    clients = []
    for c in read_jsonl(run / "clients.jsonl"):
        c = {k: v for k, v in c.items() if k not in CLIENT_MEASURED}
        c["metrics"] = {
            k: v for k, v in c.get("metrics", {}).items() if k not in CLIENT_METRICS_MEASURED
        }
        clients.append(c)
    return {"metrics": rounds, "clients": clients}


def adapter_bytes(run: Path) -> bytes | None:
    path = run / "adapter" / "adapter_model.safetensors"
    return path.read_bytes() if path.is_file() else None


def compare(run: Path, reference: Path) -> dict[str, bool]:
    """Is ``run`` what the uninterrupted ``reference`` is: the exported adapter byte for byte,
    and the logs but for measured values."""
    adapter = adapter_bytes(run)
    return {
        "adapter_equal": adapter is not None and adapter == adapter_bytes(reference),
        "logs_equal": computed_logs(run) == computed_logs(reference),
    }


def leftovers(run: Path) -> list[str]:
    """Temporaries a finished run must not leave behind (``.<name>.tmp-…``, ``.adapter.*``)."""
    return sorted(str(p.relative_to(run)) for p in run.rglob(".*"))


def write_result(name: str, payload: dict[str, Any], out: Path | None = None) -> Path:
    path = out or RESULTS / f"reliability_{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    return path
