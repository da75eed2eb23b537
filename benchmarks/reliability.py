"""The measured studies of RELIABILITY.md (issue 14, "Show it"), on the tiny random BERT.

    PYTHONPATH=src .venv/bin/python benchmarks/reliability.py kill       # ~1 h on 2 busy cores
    PYTHONPATH=src .venv/bin/python benchmarks/reliability.py damage     # ~15 min
    PYTHONPATH=src .venv/bin/python benchmarks/reliability.py malicious  # ~10 min
    PYTHONPATH=src .venv/bin/python benchmarks/reliability.py dropout    # ~5 min

Each writes ``benchmarks/results/reliability_<study>.json`` (``--out`` elsewhere);
``--quick`` runs a few cases of it (what ``tests/test_reliability_harness.py`` does).

1. ``kill`` — ``fedpeft run`` (3 clients, 4 rounds, Dirichlet; sync, and async with
   buffer 2 and 2 in flight) SIGKILLed at ``--timed`` points spread over an uninterrupted
   run and at each of its writes, then ``--resume``d; compared with an uninterrupted run.
2. ``damage`` — damaged copies of a run stopped after round 2 of 3, resumed; refused,
   fell back, resumed, or WRONG.
3. ``malicious`` — one client's reply tampered with per kind, with the norm guard on
   (default) and off.
4. ``dropout`` — 10 / 30 / 100 % of devices unavailable, quorum 1, 3 and 8.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from pathlib import Path

from reliability.common import ASYNC, write_result


def _kill(args: argparse.Namespace, work: Path) -> dict[str, object]:
    from reliability.kill import study
    from reliability.launch import Launcher

    modes = {"sync": (), "async": ASYNC}
    timed = 1 if args.quick else args.timed
    launcher = Launcher(args.launcher)
    return {
        mode: study(mode, modes[mode], work, timed, args.events and not args.quick, launcher)
        for mode in args.modes.split(",")
    }


def _damage(args: argparse.Namespace, work: Path) -> dict[str, object]:
    from reliability.damage import study

    return study(work, quick=args.quick, cli_sample=0 if args.quick else args.cli_sample)


def _malicious(args: argparse.Namespace, work: Path) -> dict[str, object]:
    from reliability.malicious import study

    return study(work, quick=args.quick)


def _dropout(args: argparse.Namespace, work: Path) -> dict[str, object]:
    from reliability.dropout import study

    return study(work, quick=args.quick)


STUDIES = {"kill": _kill, "damage": _damage, "malicious": _malicious, "dropout": _dropout}


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study", choices=sorted(STUDIES))
    parser.add_argument("--quick", action="store_true", help="a few cases (the harness's test)")
    parser.add_argument("--out", type=Path, help="the JSON file to write")
    parser.add_argument("--timed", type=int, default=20, help="kill: timed kill points a mode")
    parser.add_argument("--modes", default="sync,async", help="kill: sync, async or both")
    parser.add_argument(
        "--launcher",
        choices=("fork", "exec"),
        default="fork",
        help="kill: processes forked after the imports, or fresh interpreters (launch.py)",
    )
    parser.add_argument(
        "--events",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="kill: also kill as soon as each of the run's writes is seen",
    )
    parser.add_argument("--cli-sample", type=int, default=12, help="damage: variants via the CLI")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"fedpeft-{args.study}-") as tmp:
        figures = STUDIES[args.study](args, Path(tmp))
    command = "PYTHONPATH=src .venv/bin/python benchmarks/reliability.py " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    payload = {"command": command, "seconds": round(time.perf_counter() - start), **figures}
    path = write_result(args.study, payload, args.out)
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
