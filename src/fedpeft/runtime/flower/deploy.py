"""A SuperLink and N SuperNodes on this machine, with TLS, pre-registered SuperNode keys
and the control plane answering loopback only, and fedpeft submitted to them as the Flower
App it is (``flwr run <project> …``: the ``[tool.flwr.app]`` tables of pyproject.toml).

Every process is started here, in its own process group, and stopped by ``close``. The
same commands across machines are in docs/flower.md.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from fedpeft.errors import FedpeftError
from fedpeft.runtime.flower import keys
from fedpeft.runtime.flower.certs import TlsFiles, make_node_key, make_tls

FEDERATION = "fedpeft"  # the connection name in $FLWR_HOME/config.toml
COMPLETED = "finished:completed"  # a run's status in `flwr list` when its ServerApp returned
HOST = "127.0.0.1"
HOST_MODULE = "fedpeft.runtime.flower.host"
SUPERLINK_MODULE = "fedpeft.runtime.flower.superlink"  # flower-superlink, control plane locked
PROJECT = Path(__file__).resolve().parents[4]  # the checkout whose pyproject.toml is the app


def project_app() -> Path:
    """The fedpeft checkout, a Flower App (``[tool.flwr.app]`` in its pyproject.toml)."""
    try:
        app = tomllib.loads((PROJECT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        app = None
    if not app:
        raise FedpeftError(
            f"{PROJECT} is not the fedpeft source checkout (no [tool.flwr.app] in its "
            "pyproject.toml); deploy from a checkout, whose folder is the Flower App."
        )
    return PROJECT


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise FedpeftError(f"a Flower process exited with code {proc.returncode} at start.")
        with socket.socket() as s:
            if s.connect_ex((HOST, port)) == 0:
                return
        time.sleep(0.2)
    raise FedpeftError(f"nothing listened on {HOST}:{port} within {timeout_s:.0f} s.")


def _absolute_paths(value: str) -> str:
    return os.pathsep.join(os.path.abspath(p) for p in value.split(os.pathsep) if p)


@dataclass
class Deployment:
    """The processes of one federation on this machine and the files they use."""

    root: Path
    port: int = field(default_factory=free_port)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    tls: TlsFiles | None = None
    bind: str = HOST  # the SuperLink's listening address ("0.0.0.0": every interface)

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def env(self) -> dict[str, str]:
        bin_dir = str(Path(sys.executable).parent)
        env = {
            **os.environ,
            "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
            "FLWR_HOME": str(self.root / "flwr-home"),
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": os.environ.get(
                "FLWR_SUPEREXEC_TASK_POLL_INTERVAL", "0.2"
            ),  # flwr's default 1 s is a floor on every message's latency
        }
        if env.get("PYTHONPATH"):  # a worktree's src/: the same code in every process
            env["PYTHONPATH"] = _absolute_paths(env["PYTHONPATH"])
        return env

    def _bin(self, name: str) -> str:
        return str(Path(sys.executable).parent / name)

    def _start(
        self, name: str, args: list[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log = (self.root / "logs" / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            args,
            env={**self.env(), **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs[name] = proc
        return proc

    def cli(self, *args: str, timeout_s: float = 120.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self._bin("flwr"), *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )

    # ---- the federation ---------------------------------------------------------------
    def start_superlink(
        self, control_allow: tuple[str, ...] = (), addresses: tuple[str, ...] = ()
    ) -> None:
        """The SuperLink (``superlink.py``: flwr's, with its Control and Runtime APIs for
        ``control_allow`` only — loopback by default — and pre-registered node keys only),
        listening on ``bind``; ``addresses`` are more IPs its certificate is valid for."""
        (self.root / "logs").mkdir(parents=True, exist_ok=True)
        self.tls = make_tls(self.root / "certs", addresses=addresses)
        allow = [x for a in control_allow for x in ("--control-allow", a)]
        proc = self._start(
            "superlink",
            [
                sys.executable, "-m", SUPERLINK_MODULE, *allow,
                "--ssl-ca-certfile", str(self.tls.ca_cert),
                "--ssl-certfile", str(self.tls.server_cert),
                "--ssl-keyfile", str(self.tls.server_key),
                "--enable-supernode-auth",
                "--disable-runtime-dependency-installation",
                "--host", self.bind,
                "--port", str(self.port),
            ],
        )  # fmt: skip
        wait_port(self.port, proc)
        self.connect(FEDERATION, self.address, default=True)

    def connect(self, name: str, address: str, default: bool = False) -> None:
        """A connection ``name`` to the SuperLink at ``address`` in $FLWR_HOME/config.toml."""
        assert self.tls is not None, "start the SuperLink first"
        home = self.root / "flwr-home"
        home.mkdir(parents=True, exist_ok=True)
        path = home / "config.toml"
        config = tomllib.loads(path.read_text()) if path.is_file() else {"superlink": {}}
        config["superlink"][name] = {"address": address, "root-certificates": str(self.tls.ca_cert)}
        if default:
            config["superlink"]["default"] = name
        path.write_text(tomli_w.dumps(config))

    def node_key(self, name: str, register: bool = True) -> Path:
        """A SuperNode key pair; its public key registered with the SuperLink if asked."""
        private, public = make_node_key(self.root / "keys", name)
        if register:
            done = self.cli("supernode", "register", str(public), FEDERATION)
            if done.returncode != 0:
                raise FedpeftError(f"registering {name} failed: {done.stdout}{done.stderr}")
        return private

    def start_supernode(
        self,
        name: str,
        partition: int,
        private_key: Path,
        host: bool = True,
        node_config: dict[str, str] | None = None,
    ) -> None:
        """A SuperNode for ``partition``; with ``host``, also its client host (host.py),
        which keeps the base model loaded across the per-message ClientApp processes.
        ``node_config`` adds string entries (e.g. ``data-file``: the node's own data)."""
        assert self.tls is not None, "start the SuperLink first"
        entries = {keys.NODE_PARTITION: str(partition)}
        disk = {keys.NODE_CLIENT_DIR_ENV: str(self.node_dir(name))}  # the node's own disk
        if host:
            sock = self.root / "hosts" / f"{name}.sock"
            host_args = [sys.executable, "-m", HOST_MODULE, "--socket", str(sock)]
            self._start(f"{name}-host", host_args, disk)
            entries[keys.NODE_HOST_SOCKET] = json.dumps(str(sock))
        entries.update({k: json.dumps(v) for k, v in (node_config or {}).items()})
        self._start(
            name,
            [
                self._bin("flower-supernode"),
                "--superlink", self.address,
                "--root-certificates", str(self.tls.ca_cert),
                "--auth-supernode-private-key", str(private_key),
                "--node-config", " ".join(f"{k}={v}" for k, v in entries.items()),
                "--host", HOST,
                "--port", str(free_port()),
            ],
            disk,
        )  # fmt: skip

    def node_dir(self, name: str) -> Path:
        """Where SuperNode ``name``'s clients write their files (``process.client_dir``):
        exported personal adapters under ``<config>/<run>/<client>/adapter/``."""
        return self.root / "nodes" / name

    def submit(
        self, run_config: dict[str, Any], app: Path | None = None, connection: str = FEDERATION
    ) -> int:
        """``flwr run APP CONNECTION --run-config FILE`` (APP: this checkout); the run's id.
        ``run_config`` overrides ``[tool.flwr.app.config]`` (flwr refuses unknown keys)."""
        path = self.root / f"run-config-{time.monotonic_ns()}.toml"
        path.write_text(tomli_w.dumps(run_config))
        app = app or project_app()
        done = self.cli("run", str(app), connection, "--run-config", str(path), "--format", "json")
        try:
            return int(json.loads(done.stdout)["run-id"])
        except (ValueError, KeyError, TypeError):
            raise FedpeftError(f"flwr run failed: {done.stdout}{done.stderr}") from None

    def run_status(self, run_id: int, key: str = "status") -> str:
        """The run's ``status`` as ``flwr list`` gives it (or another of its fields, such as
        ``status-details``: why a run failed)."""
        done = self.cli("list", "--run-id", str(run_id), FEDERATION, "--format", "json")
        try:
            runs = json.loads(done.stdout)["runs"]
            return str(runs[0][key])
        except (ValueError, KeyError, IndexError, TypeError):
            return f"unknown ({done.stdout.strip()[:200]}{done.stderr.strip()[:200]})"

    def save_log(self, run_id: int) -> Path:
        """The run's ServerApp log (``flwr log --show``) as WORK/logs/serverapp-<id>.log: the
        SuperLink keeps it only as long as it runs."""
        path = self.root / "logs" / f"serverapp-{run_id}.log"
        try:
            done = self.cli("log", str(run_id), FEDERATION, "--show")
            path.write_text(done.stdout + done.stderr)
        except subprocess.TimeoutExpired:
            path.write_text("`flwr log --show` did not answer within its timeout\n")
        return path

    def wait(self, run_id: int, timeout_s: float, on_poll: Callable[[], None] | None = None) -> str:
        """Polls until the run has finished (its final status) or ``timeout_s`` passed,
        calling ``on_poll`` at every poll."""
        deadline = time.monotonic() + timeout_s
        status = "unknown"
        while time.monotonic() < deadline:
            status = self.run_status(run_id)
            if on_poll is not None:
                on_poll()
            if status.startswith("finished"):
                return status
            time.sleep(2.0)
        return status

    def alive(self, name: str) -> bool:
        return name in self.procs and self.procs[name].poll() is None

    def kill(self, name: str) -> None:
        """Kills one of our processes (and the process group it leads) at once."""
        proc = self.procs.pop(name)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def close(self) -> None:
        for name in list(self.procs)[::-1]:
            proc = self.procs.pop(name)
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()


def run_deployed(
    cfg_toml: str,
    num_nodes: int,
    root: Path,
    *,
    output_dir: Path,
    round_timeout_s: float = keys.DEFAULT_ROUND_TIMEOUT_S,
    timeout_s: float = 3600.0,
    on_round: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[str, Path | None]:
    """Starts a SuperLink and ``num_nodes`` SuperNodes (partition i on node i, each with
    a client host), submits this checkout with ``cfg_toml`` as its ``fedpeft-config``
    (whose ``run.output_dir`` must be ``output_dir``), waits, and stops everything.
    (final status — with flwr's reason when the run did not complete —, the run folder this
    run made or None). The ServerApp's log is kept in WORK/logs; ``on_round`` gets each
    round's line of the run's metrics.jsonl as it is written (progress)."""
    d = Deployment(root)
    before = _run_folders(output_dir)
    try:
        d.start_superlink()
        for i in range(num_nodes):
            d.start_supernode(f"node{i}", i, d.node_key(f"node{i}"))
        config: dict[str, Any] = {
            keys.RUN_CONFIG_TOML: cfg_toml,
            keys.RUN_ROUND_TIMEOUT: round_timeout_s,
            keys.RUN_CONNECT_TIMEOUT: keys.DEFAULT_CONNECT_TIMEOUT_S,
        }
        run_id = d.submit(config)
        status = d.wait(run_id, timeout_s, _round_watch(output_dir, before, on_round))
        d.save_log(run_id)
        if not status.startswith("finished"):
            status = f"{status} (not finished within {timeout_s:.0f} s; stopped)"
        elif status != COMPLETED:
            details = d.run_status(run_id, "status-details")
            if details and not details.startswith("unknown ("):  # flwr gave its reason
                status = f"{status} ({details})"
    finally:
        d.close()
    runs = sorted(_run_folders(output_dir) - before)  # not an older run in the same folder
    return status, (runs[-1] if runs else None)


def _run_folders(output_dir: Path) -> set[Path]:
    return {p for p in output_dir.glob("*") if (p / "config.toml").is_file()}


def _round_watch(
    output_dir: Path, before: set[Path], on_round: Callable[[dict[str, Any]], None] | None
) -> Callable[[], None]:
    """A poll that hands ``on_round`` every round line the run's new folder gained since."""
    seen = 0

    def poll() -> None:
        nonlocal seen
        runs = sorted(_run_folders(output_dir) - before)
        if on_round is None or not runs:
            return
        try:
            lines = (runs[-1] / "metrics.jsonl").read_text().split("\n")[:-1]  # whole lines
        except (OSError, UnicodeDecodeError):
            return
        for line in lines[seen:]:
            try:
                row = json.loads(line)
            except ValueError:
                row = None
            if isinstance(row, dict):
                on_round(row)
        seen = max(seen, len(lines))

    return poll
