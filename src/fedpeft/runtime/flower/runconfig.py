"""A run's settings as every Flower node reads them: the fedpeft config from the run config
(``[tool.flwr.app.config]`` + ``flwr run --run-config``), a SuperNode's own data from its
node config, and the server's policy for client weights.

Every node computes the same config text from the same run config, so the server and each
client build the same task. A SuperNode whose node config names a ``data-file`` trains on
that file (bring-your-own data per machine) instead of its partition of the run's dataset.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import tomli_w

from fedpeft.config import build_config, config_to_toml
from fedpeft.config.loading import apply_override
from fedpeft.errors import FedpeftError
from fedpeft.runtime.flower import keys

WeightMode = Literal["assigned", "reported"]
WEIGHT_MODES: tuple[WeightMode, ...] = ("assigned", "reported")


def split_sets(text: str) -> list[str]:
    """``fedpeft-set``: ``--set`` overrides separated by ``;`` (``"run.rounds=3; x.y=z"``)."""
    return [item.strip() for item in text.split(";") if item.strip()]


def run_config_text(run_config: Mapping[str, Any], default: str | None = None) -> str:
    """The run's fedpeft config as TOML text: ``fedpeft-config`` (TOML text; "" = fedpeft's
    defaults, or ``default`` when given) with the ``fedpeft-set`` overrides applied,
    validated (a bad config is one ``FedpeftError`` on every node)."""
    text = run_config.get(keys.RUN_CONFIG_TOML) or default or ""
    sets = run_config.get(keys.RUN_SET) or ""
    if not isinstance(text, str) or not isinstance(sets, str):
        raise FedpeftError(
            f"run config `{keys.RUN_CONFIG_TOML}` and `{keys.RUN_SET}` must be strings."
        )
    try:
        raw = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, RecursionError) as e:  # RecursionError: nested too deep
        raise FedpeftError(f"the run's `{keys.RUN_CONFIG_TOML}` is not valid TOML ({e}).") from None
    for item in split_sets(sets):
        apply_override(raw, item)
    return config_to_toml(build_config(raw, source="the Flower run config"))


def run_timeout(run_config: Mapping[str, Any], key: str, default: float) -> float:
    """A timeout of the run config (``round-timeout``, ``connect-timeout``) in seconds:
    a finite positive number, else one ``FedpeftError`` naming the key."""
    value = run_config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        value = None
    if value is None or not math.isfinite(value) or value <= 0:
        raise FedpeftError(
            f"run config `{key}` is {run_config.get(key)!r}; expected a positive number of seconds."
        )
    return float(value)


@dataclass(frozen=True)
class LocalData:
    """A SuperNode's own data, from its node config."""

    train_file: str
    text_column: str | None = None
    label_column: str | None = None


def local_data(node_config: Mapping[str, Any]) -> LocalData | None:
    """The node's own data (``data-file``, optional ``text-column``/``label-column``)."""
    path = node_config.get(keys.NODE_DATA_FILE)
    if path in (None, ""):
        return None
    columns = [node_config.get(k) for k in (keys.NODE_TEXT_COLUMN, keys.NODE_LABEL_COLUMN)]
    if not isinstance(path, str) or not all(c is None or isinstance(c, str) for c in columns):
        raise FedpeftError(
            f"node config `{keys.NODE_DATA_FILE}`, `{keys.NODE_TEXT_COLUMN}` and "
            f"`{keys.NODE_LABEL_COLUMN}` must be strings (a path and column names)."
        )
    return LocalData(path, columns[0], columns[1])


def node_config_text(text: str, own: LocalData | None) -> str:
    """The config this node builds its task from: the run's, or — with its own data — the
    run's with ``[data]`` pointing at the node's file as a single client (all its rows,
    ``data.label_names`` fixing the classes so every node's labels mean the same) and the
    server-only settings that would hold data back (a proxy set) or refuse one client
    (secure aggregation) neutral."""
    if own is None:
        return text
    raw = tomllib.loads(text)
    data = dict(raw.get("data", {}))
    if not data.get("label_names"):
        raise FedpeftError(
            f"this SuperNode brings its own data ({keys.NODE_DATA_FILE}={own.train_file!r}) "
            "but the run's config has no `data.label_names`; set it so that every node's "
            "labels map to the same classes."
        )
    for key in ("train_size", "eval_size"):
        data.pop(key, None)  # every row of the node's file
    data.update(
        dataset="custom",
        train_file=own.train_file,
        eval_file=own.train_file,  # a client never evaluates; this keeps every row for training
        num_clients=1,
        partition="iid",
        min_partition_size=1,
    )
    if own.text_column:
        data["text_column"] = own.text_column
    if own.label_column:
        data["label_column"] = own.label_column
    server = {**raw.get("server", {}), "min_clients": 1, "aggregator": "fedavg"}
    server.pop("aggregator_options", None)
    # the server runs secure aggregation; a node answers the stages its instructions name,
    # and its single-client config would fail the check for a cohort of at least 3
    privacy = {**raw.get("privacy", {}), "secure_aggregation": False}
    return tomli_w.dumps({**raw, "data": data, "server": server, "privacy": privacy})


@dataclass(frozen=True)
class WeightPolicy:
    """How much aggregation weight a Flower client may claim (its reply's ``num_examples``).

    ``assigned`` (default): at most the size of the partition the server assigned it — the
    server computes the partitions itself, so a client cannot inflate its weight, and a
    node that brings its own data (which the server cannot size) is not admitted.
    ``reported``: at most what the node reported at first contact, capped at ``cap``
    examples when set — for bring-your-own data, where each node is trusted with its own
    count up to the cap.
    """

    mode: WeightMode = "assigned"
    cap: int | None = None

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> WeightPolicy:
        mode = run_config.get(keys.RUN_CLIENT_WEIGHT, "assigned")
        cap = run_config.get(keys.RUN_MAX_EXAMPLES, 0)
        if mode not in WEIGHT_MODES:
            raise FedpeftError(
                f"run config `{keys.RUN_CLIENT_WEIGHT}` is {mode!r}; expected one of "
                f"{', '.join(WEIGHT_MODES)}."
            )
        if isinstance(cap, bool) or not isinstance(cap, int) or cap < 0:
            raise FedpeftError(
                f"run config `{keys.RUN_MAX_EXAMPLES}` is {cap!r}; expected a count (0 = no cap)."
            )
        return cls(mode, cap or None)

    def bound(self, reported: int, assigned: int | None, own_data: bool) -> int | None:
        """The most examples a client may claim, or None if it is not admitted."""
        if self.mode == "assigned":
            if own_data or assigned is None:
                return None
            return assigned
        return reported if self.cap is None else min(reported, self.cap)
