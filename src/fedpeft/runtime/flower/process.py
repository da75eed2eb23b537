"""What a client process keeps between messages: the task (data + the one base model) —
and nothing of any client's own.

Flower calls the ClientApp once per message. In the simulation engine the calls of a
run share a few long-lived worker processes, so a module-level cache keyed by the run's
config text makes the base model load once per process. (In a deployment, flwr 1.42's
SuperExec starts a fresh ``flwr-clientapp`` process per message; docs/flower.md says how
the model is kept loaded there.) ``LOADS`` counts loads so tests and benchmarks can check.

What a client keeps between rounds (personal modules, SCAFFOLD's ``c_i``, the error-feedback
residual) lives in its node's ClientApp ``Context`` state; ``kept_reply`` lends it to this
process's store for one message and takes it back, so any process (a simulation worker, a
fresh ``flwr-clientapp``, the node's client host) can answer any message. The ClientApp also
keeps a snapshot of it on the node's disk (``client_folder``, ``client.snapshot``) for a
resumed run.
"""

from __future__ import annotations

import functools
import hashlib
import os
import threading
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedpeft.client import ClientState, ClientStateStore
from fedpeft.config import ExperimentConfig, build_config, config_fingerprint
from fedpeft.errors import FedpeftError
from fedpeft.profiling import ResourceProfile, measured_profile
from fedpeft.runtime.flower import keys

if TYPE_CHECKING:  # the model stack loads only where the model does (not in a thin proxy)
    from fedpeft.runtime.local.simulator import LocalClientPool
    from fedpeft.types import TrainInstruction


@dataclass
class ClientProcess:
    """One process's fedpeft client: the config it was built from and its pool."""

    key: str
    cfg: ExperimentConfig
    pool: LocalClientPool
    load_s: float
    profile: ResourceProfile | None = None


@dataclass
class LoadStats:
    loads: int = 0
    last_load_s: float = 0.0


LOADS = LoadStats()

Kept = dict[int, ClientState]
"""A client's kept states by the round that wrote each (``ClientStateStore.held``)."""

_CACHE: dict[str, ClientProcess] = {}
_LOCK = threading.Lock()


def config_from_toml(text: str) -> ExperimentConfig:
    """A fedpeft config sent as TOML text in the run config."""
    try:
        raw = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, RecursionError) as e:  # RecursionError: nested too deep
        raise FedpeftError(f"the run's fedpeft config is not valid TOML ({e}).") from None
    return build_config(raw, source="the Flower run config")


def client_process(config_toml: str) -> ClientProcess:
    """This process's client for ``config_toml``, built on first use and then reused.

    Only one config is kept: a new run's config replaces the previous run's task, so a
    long-lived process holds one base model at a time.
    """
    from fedpeft.runtime.local.simulator import LocalClientPool
    from fedpeft.server.task import build_task

    key = hashlib.sha256(config_toml.encode()).hexdigest()
    with _LOCK:
        cached = _CACHE.get(key)
        if cached is not None:
            return cached
        cfg = config_from_toml(config_toml)
        start = time.perf_counter()
        task = build_task(cfg)
        elapsed = time.perf_counter() - start
        LOADS.loads += 1
        LOADS.last_load_s = elapsed
        _CACHE.clear()
        states = ClientStateStore(per_run=True, exports=client_dir(config_fingerprint(cfg)))
        pool = LocalClientPool(task, states=states)
        _CACHE[key] = ClientProcess(key, cfg, pool, elapsed)
        return _CACHE[key]


def client_dir(config_key: str) -> Path:
    """Where this machine's clients write their files for one run config, whose
    ``config_fingerprint`` is ``config_key`` (the same when a resumed run runs more rounds):
    under ``<run>/<client>/`` (the run is the instruction's ``run_id``, the run folder's name)
    their exported personal adapters (``adapter/``) and the snapshot of their kept states
    (``client.snapshot``); on the node's own disk, ``$FEDPEFT_CLIENT_DIR``, else
    ``~/.cache/fedpeft/clients``."""
    root = os.environ.get(keys.NODE_CLIENT_DIR_ENV)
    base = Path(root) if root else Path.home() / ".cache" / "fedpeft" / "clients"
    return base / config_key[:16]


@functools.lru_cache(maxsize=8)
def _fingerprint(text: str) -> str:
    return config_fingerprint(config_from_toml(text))


def client_folder(text: str, run_id: str, client_id: int) -> Path:
    """``client_dir``'s ``<run>/<client>/`` for the run config ``text`` (no model loads)."""
    if not run_id or Path(run_id).name != run_id or run_id.startswith("."):
        raise FedpeftError(f"the server named run {run_id!r}; a run's name must be a plain name.")
    return client_dir(_fingerprint(text)) / run_id / str(client_id)


def profile_of(proc: ClientProcess, upload: str, download: str) -> ResourceProfile:
    """The measured profile of this device (measured once per process)."""
    if proc.profile is None:
        device = str(proc.pool.task.device)
        proc.profile = measured_profile(upload, download, seconds=0.1, device=device)
    return proc.profile


def process_id() -> int:
    return os.getpid()


def _index(proc: ClientProcess, partition: int, own: bool) -> int:
    """Which of the task's partitions this node trains: its own file is the only one."""
    n = proc.cfg.data.num_clients
    index = 0 if own else partition
    if not 0 <= index < n:
        raise FedpeftError(f"partition-id {partition} is outside 0..{n - 1}.")
    return index


def hello_info(
    text: str, partition: int, upload: str, download: str, own: bool = False
) -> dict[str, Any]:
    """The first-contact answer of the client for ``partition`` under config ``text``
    (``own``: the node trains on its own data file, the config's single partition)."""
    proc = client_process(text)
    index = _index(proc, partition, own)
    data = proc.pool.data_profile(index)
    assert data is not None, "the in-process pool knows every partition's data profile"
    return {
        "num_examples": proc.pool.num_examples(index) or 0,
        "profile": profile_of(proc, upload, download).to_json(),
        "data": data.to_json(),
        "own_data": own,
        "pid": process_id(),
        "model_loads": LOADS.loads,
        "model_load_s": LOADS.last_load_s,
    }


def fit_reply(
    text: str, ins: TrainInstruction, payload: bytes, own: bool = False, evaluate: bool = False
) -> tuple[bytes, dict[str, Any]]:
    """One round of local training (``evaluate``: the client's models scored on its
    held-out share); (reply bytes, process stats). A node with its own data trains its file
    (the config's partition 0) for the instruction's client id."""
    proc = client_process(text)
    if evaluate:
        reply = proc.pool.evaluate_on(_index(proc, ins.client_id, own), payload, ins)
    elif not own:
        reply = proc.pool.fit(ins, payload)
    else:
        from fedpeft.client import ClientData

        task = proc.pool.task
        data = ClientData(task.data.train, task.data.partitions[_index(proc, ins.client_id, own)])
        model = task.model_for(ins.method, ins.options)
        reply = proc.pool.fit_on(model, payload, ins, data)
    return reply, {"pid": process_id(), "model_loads": LOADS.loads}


def kept_reply(
    text: str,
    ins: TrainInstruction,
    payload: bytes,
    kept: Kept,
    own: bool = False,
    evaluate: bool = False,
) -> tuple[bytes, dict[str, Any], Kept]:
    """``fit_reply`` with the client's kept states handed in from where its node keeps them
    (the ClientApp's ``Context`` state) and handed back as they are after the message:
    (reply bytes, process stats, kept states). This process keeps none of them after."""
    store = client_process(text).pool.states
    store.replace(ins.client_id, kept, ins.run_id)
    try:
        reply, info = fit_reply(text, ins, payload, own, evaluate=evaluate)
        return reply, info, store.held(ins.client_id, ins.run_id)
    finally:
        store.replace(ins.client_id, {}, ins.run_id)


def secure_reply(
    text: str,
    ins: TrainInstruction,
    payload: bytes,
    secrets: ClientState,
    kept: Kept,
    own: bool = False,
) -> tuple[bytes, dict[str, Any], ClientState, Kept]:
    """One secure-aggregation stage (``client/secagg.py``) with the round's client secrets
    and the client's kept states handed in from where the node keeps them (the ClientApp's
    ``Context`` state) and handed back (the secrets empty after the last stage): (reply
    bytes, process stats, secrets to keep, kept states). This process keeps none between
    messages, since a node's next stage may run in another process (a simulation worker, a
    fresh ``flwr-clientapp``)."""
    store = client_process(text).pool.secrets
    store.save(ins, secrets)
    try:
        reply, info, kept = kept_reply(text, ins, payload, kept, own)
        return reply, info, store.load(ins), kept
    finally:
        store.save(ins, {})
