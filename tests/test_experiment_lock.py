"""experiment.layout's run lock (a flock on each run's log.txt) where it cannot be had."""

import errno
from pathlib import Path

import pytest

from fedpeft.experiment.layout import ExperimentDir, lock_log

fcntl = pytest.importorskip("fcntl")  # the lock is POSIX; without it none is taken


@pytest.mark.parametrize("code", [errno.ENOLCK, errno.EOPNOTSUPP, errno.EBADF])
def test_a_file_system_without_locks_runs_the_grid_unlocked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    """NFS without lockd (ENOLCK), a FUSE mount (EOPNOTSUPP) and NFS's flock-as-fcntl on
    `busy`'s read-only handle (EBADF) made flock raise an OSError, and `fedpeft experiment`
    ended in its traceback before any run started; with no lock to take it runs, as before."""

    def refuse(fd: int, op: int) -> None:
        raise OSError(code, "no locks here")

    folder = ExperimentDir(tmp_path)
    folder.run_home("k").mkdir(parents=True)
    folder.log_path("k").write_bytes(b"")
    monkeypatch.setattr(fcntl, "flock", refuse)
    with folder.log_path("k").open("ab") as log:
        assert lock_log(log)
    assert not folder.busy("k")


def test_a_lock_held_elsewhere_is_still_refused(tmp_path: Path) -> None:
    folder = ExperimentDir(tmp_path)
    folder.run_home("k").mkdir(parents=True)
    with folder.log_path("k").open("ab") as held:
        assert lock_log(held)
        assert folder.busy("k")
    assert not folder.busy("k")  # let go when the holder closes it
