"""A SuperLink and N SuperNodes on this machine (127.0.0.1 only), with TLS and SuperNode
authentication, and a fedpeft run submitted to them with ``flwr run``.

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
from dataclasses import dataclass, field
from pathlib import Path

import tomli_w

from fedpeft.errors import FedpeftError
from fedpeft.runtime.flower import keys
from fedpeft.runtime.flower.certs import TlsFiles, make_node_key, make_tls

FEDERATION = "fedpeft"  # the connection name in $FLWR_HOME/config.toml
HOST = "127.0.0.1"
HOST_MODULE = "fedpeft.runtime.flower.host"


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


def write_app(folder: Path, run_config: dict[str, str | int | float]) -> Path:
    """A Flower app folder whose components are fedpeft's and whose run config is ours."""
    folder.mkdir(parents=True, exist_ok=True)
    project = {
        "build-system": {"requires": ["hatchling"], "build-backend": "hatchling.build"},
        "project": {"name": "fedpeft-flower", "version": "1.0.0", "dependencies": []},
        "tool": {
            "hatch": {"build": {"targets": {"wheel": {"packages": ["."]}}}},
            "flwr": {
                "app": {
                    "publisher": "fedpeft",
                    "components": {
                        "serverapp": "fedpeft.runtime.flower.server_app:app",
                        "clientapp": "fedpeft.runtime.flower.client_app:app",
                    },
                    "config": run_config,
                }
            },
        },
    }
    (folder / "pyproject.toml").write_text(tomli_w.dumps(project))
    (folder / "README.md").write_text("fedpeft on Flower (generated; see docs/flower.md)\n")
    return folder


@dataclass
class Deployment:
    """The processes of one loopback federation and the files they use."""

    root: Path
    port: int = field(default_factory=free_port)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    tls: TlsFiles | None = None

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def env(self) -> dict[str, str]:
        bin_dir = str(Path(sys.executable).parent)
        return {
            **os.environ,
            "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
            "FLWR_HOME": str(self.root / "flwr-home"),
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": os.environ.get(
                "FLWR_SUPEREXEC_TASK_POLL_INTERVAL", "0.2"
            ),  # flwr's default 1 s is a floor on every message's latency
        }

    def _bin(self, name: str) -> str:
        return str(Path(sys.executable).parent / name)

    def _start(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = (self.root / "logs" / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            args, env=self.env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
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
    def start_superlink(self) -> None:
        (self.root / "logs").mkdir(parents=True, exist_ok=True)
        self.tls = make_tls(self.root / "certs")
        proc = self._start(
            "superlink",
            [
                self._bin("flower-superlink"),
                "--ssl-ca-certfile", str(self.tls.ca_cert),
                "--ssl-certfile", str(self.tls.server_cert),
                "--ssl-keyfile", str(self.tls.server_key),
                "--enable-supernode-auth",
                "--disable-runtime-dependency-installation",
                "--host", HOST,
                "--port", str(self.port),
            ],
        )  # fmt: skip
        wait_port(self.port, proc)
        home = self.root / "flwr-home"
        home.mkdir(parents=True, exist_ok=True)
        connection = {"address": self.address, "root-certificates": str(self.tls.ca_cert)}
        config = {"superlink": {"default": FEDERATION, FEDERATION: connection}}
        (home / "config.toml").write_text(tomli_w.dumps(config))

    def node_key(self, name: str, register: bool = True) -> Path:
        """A SuperNode key pair; its public key registered with the SuperLink if asked."""
        private, public = make_node_key(self.root / "keys", name)
        if register:
            done = self.cli("supernode", "register", str(public), FEDERATION)
            if done.returncode != 0:
                raise FedpeftError(f"registering {name} failed: {done.stdout}{done.stderr}")
        return private

    def start_supernode(
        self, name: str, partition: int, private_key: Path, host: bool = True
    ) -> None:
        """A SuperNode for ``partition``; with ``host``, also its client host (host.py),
        which keeps the base model loaded across the per-message ClientApp processes."""
        assert self.tls is not None, "start the SuperLink first"
        node_config = f"{keys.NODE_PARTITION}={partition}"
        if host:
            sock = self.root / "hosts" / f"{name}.sock"
            self._start(f"{name}-host", [sys.executable, "-m", HOST_MODULE, "--socket", str(sock)])
            node_config += f' {keys.NODE_HOST_SOCKET}="{sock}"'
        self._start(
            name,
            [
                self._bin("flower-supernode"),
                "--superlink", self.address,
                "--root-certificates", str(self.tls.ca_cert),
                "--auth-supernode-private-key", str(private_key),
                "--node-config", node_config,
                "--host", HOST,
                "--port", str(free_port()),
            ],
        )  # fmt: skip

    def submit(self, app: Path) -> int:
        """``flwr run``; the run's id."""
        done = self.cli("run", str(app), FEDERATION, "--format", "json")
        try:
            return int(json.loads(done.stdout)["run-id"])
        except (ValueError, KeyError, TypeError):
            raise FedpeftError(f"flwr run failed: {done.stdout}{done.stderr}") from None

    def run_status(self, run_id: int) -> str:
        done = self.cli("list", "--run-id", str(run_id), FEDERATION, "--format", "json")
        try:
            runs = json.loads(done.stdout)["runs"]
            return str(runs[0]["status"])
        except (ValueError, KeyError, IndexError, TypeError):
            return f"unknown ({done.stdout.strip()[:200]}{done.stderr.strip()[:200]})"

    def wait(self, run_id: int, timeout_s: float) -> str:
        """Polls until the run has finished (its final status) or ``timeout_s`` passed."""
        deadline = time.monotonic() + timeout_s
        status = "unknown"
        while time.monotonic() < deadline:
            status = self.run_status(run_id)
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
) -> tuple[str, Path | None]:
    """Starts a SuperLink and ``num_nodes`` SuperNodes (partition i on node i, each with
    a client host), submits ``cfg_toml`` (its ``run.output_dir`` must be ``output_dir``),
    waits, and stops everything. (final status, run folder or None)."""
    d = Deployment(root)
    try:
        d.start_superlink()
        for i in range(num_nodes):
            d.start_supernode(f"node{i}", i, d.node_key(f"node{i}"))
        config: dict[str, str | int | float] = {
            keys.RUN_CONFIG_TOML: cfg_toml,
            keys.RUN_RESUME: "",
            keys.RUN_ROUND_TIMEOUT: round_timeout_s,
            keys.RUN_CONNECT_TIMEOUT: keys.DEFAULT_CONNECT_TIMEOUT_S,
        }
        status = d.wait(d.submit(write_app(root / "app", config)), timeout_s)
    finally:
        d.close()
    runs = sorted(p for p in output_dir.glob("*") if (p / "config.toml").is_file())
    return status, (runs[-1] if runs else None)
