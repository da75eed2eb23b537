"""Two ways to start ``fedpeft <args>`` as its own process, for the kill study:

* ``exec`` — ``python -m fedpeft.cli.main <args>``, a fresh interpreter (its imports take
  10–60 s on a busy 2-core machine; nothing is written to the run folder during them);
* ``fork`` — a child forked from this process after it has imported what the CLI imports
  (torch, transformers, peft, matplotlib, fedpeft), which then runs the CLI's own entry
  point ``fedpeft.cli.main.main()`` with ``<args>`` and exits with its exit code. No
  thread has run in the parent when it forks. The child is a real process: SIGKILL stops
  it mid-write exactly as it stops an exec'd one; only the imports are skipped.

The kill study checks that an uninterrupted forked run is bitwise the exec'd one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Protocol

from .common import Exit, cli, env


class Proc(Protocol):
    returncode: int | None

    def poll(self) -> int | None: ...
    def send_signal(self, sig: int) -> None: ...
    def wait(self) -> int: ...


class Forked:
    """``fedpeft <args>`` in a child of this process (``subprocess.Popen``'s interface)."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.returncode: int | None = None
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            _child(args, log)
        self.pid = pid

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def wait(self) -> int:
        if self.returncode is None:
            _, status = os.waitpid(self.pid, 0)
            self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode


def _child(args: list[str], log: Path) -> None:
    code = 1
    try:
        err = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(err, 2)
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        sys.argv = ["fedpeft", *args]
        from fedpeft.cli.main import main

        main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # noqa: BLE001 - shown in the log as the CLI would show it
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def preload() -> None:
    """Imports what ``fedpeft run`` and its report import, without running any of it."""
    os.environ.update({k: v for k, v in env().items() if k != "PYTHONPATH"})
    import matplotlib.pyplot  # noqa: F401
    import peft  # noqa: F401
    import transformers  # noqa: F401

    import fedpeft.cli.main  # noqa: F401
    import fedpeft.cli.progress  # noqa: F401
    import fedpeft.report  # noqa: F401
    import fedpeft.runtime.local  # noqa: F401


class Launcher:
    def __init__(self, kind: str) -> None:
        if kind not in ("exec", "fork"):
            raise ValueError(f"launcher is 'exec' or 'fork', got {kind!r}")
        self.kind = kind
        if kind == "fork":
            preload()

    def start(self, args: list[str], log: Path) -> Proc:
        if self.kind == "fork":
            return Forked(args, log)
        with log.open("w") as err:
            return subprocess.Popen(cli(args), env=env(), stdout=subprocess.DEVNULL, stderr=err)

    def run(self, args: list[str], log: Path, timeout: float = 1800) -> Exit:
        """To completion (killed past ``timeout`` seconds)."""
        start = time.perf_counter()
        proc = self.start(args, log)
        while proc.poll() is None:
            if time.perf_counter() - start > timeout:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
            time.sleep(0.05)
        code = proc.wait()
        return Exit(code, log.read_text(errors="replace"), time.perf_counter() - start)
