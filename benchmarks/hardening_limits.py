"""Figures for RELIABILITY.md: work done before a hostile payload is refused, and how fast an
unknown hub model fails without the hub.

    PYTHONPATH=src .venv/bin/python benchmarks/hardening_limits.py [--out FILE.json]

1. A reply with a 256 MB extra tensor: ``decode(payload, expected=layout(reference))``
   (header only) against a full ``decode`` (every tensor built), best of 3, and whether any
   tensor was built.
2. ``check_names`` for ``model.name = "no-such-org/no-such-model"`` with the hub unreachable
   (``HF_ENDPOINT`` at a closed local port), in a fresh process, best of 3.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

from fedpeft.compression import CodecError, decode, encode, layout
from fedpeft.compression import codec as codec_module

REFERENCE = {"q.lora_A.weight": torch.zeros(8, 384), "q.lora_B.weight": torch.zeros(384, 8)}


def payload_figures() -> dict[str, object]:
    smuggled = {**REFERENCE, "smuggled": torch.zeros(64 << 20)}  # 256 MiB of float32
    payload = encode(smuggled)
    built: list[int] = []
    real = codec_module.st_load
    codec_module.st_load = lambda data: built.append(len(data)) or real(data)  # type: ignore[assignment]
    refuse, full = [], []
    try:
        for _ in range(3):
            start = time.perf_counter()
            try:
                decode(payload, expected=layout(REFERENCE))
            except CodecError as e:
                reason = str(e)
            refuse.append(time.perf_counter() - start)
        refused_building = len(built)
        for _ in range(3):
            start = time.perf_counter()
            decode(payload)
            full.append(time.perf_counter() - start)
    finally:
        codec_module.st_load = real  # type: ignore[assignment]
    return {
        "payload_bytes": len(payload),
        "refused_in_s": min(refuse),
        "refusal": reason,
        "tensors_built_before_refusal": refused_building,
        "full_decode_s": min(full),
    }


PROBE = """
import time, sys
t0 = time.perf_counter()
from fedpeft.config import load_config
from fedpeft.errors import FedpeftError
from fedpeft.server.config_checks import check_names
cfg = load_config(overrides=["model.name='no-such-org/no-such-model'"])
t1 = time.perf_counter()
try:
    check_names(cfg)
except FedpeftError as e:
    print(time.perf_counter() - t1, t1 - t0, str(e), sep="\\t")
"""


def hub_figures() -> dict[str, object]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.endswith("OFFLINE")}
    env["HF_ENDPOINT"] = f"http://127.0.0.1:{port}"
    runs = []
    for _ in range(3):
        out = subprocess.run(
            [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True
        ).stdout.strip()
        check_s, import_s, message = out.split("\t")
        runs.append((float(check_s), float(import_s), message))
    best = min(runs)
    return {"check_names_s": best[0], "imports_s": best[1], "message": best[2]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/hardening.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    result = {"payload": payload_figures(), "hub": hub_figures()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
