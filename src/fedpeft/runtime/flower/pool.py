"""``FlowerClientPool``: the server loop's ``ClientPool`` over a Flower ``Grid``.

First contact (``connect``) sends a query to every SuperNode; each answers with its
partition id, example count and measured resource profile, cached here. A round sends
every client's message at once (``fit_many``) and collects replies until all have come
or ``round_timeout_s`` has passed: a dead or silent node becomes an ``Exception`` entry
and the round goes on with the others — unless fewer than ``min_clients`` replied, which
stops the run (its last checkpoint resumes it). Under secure aggregation each of the
round's four stages is one such exchange of ``train`` messages (``server/secure.py``).

Why fedpeft's SecAgg+ and not flwr's (1.42): ``SecAggPlusWorkflow.__call__`` refuses any
context but a ``LegacyContext`` and drives a legacy ``Strategy`` (``configure_fit`` samples
``ClientProxy`` objects, ``aggregate_fit`` gets ``FitRes``), with ``grid.send_and_receive``
per stage; this pool is reached from fedpeft's own round loop (sampling, allocation, DP
ledger), which that would replace. Its client half ``secaggplus_mod`` is a legacy mod
(``flwr.client.mod``, absent from ``flwr.clientapp.mod``) that reads the reply as a legacy
``FitRes``, masks the parameters themselves clamped per value to ±``clipping_range``
(not an L2-clipped delta) and leaves each client's example count and metrics in the clear;
the workflow hands the strategy the dequantised weighted mean, with no unweighted sum of
clipped deltas for central DP to noise once. Using them would mean a Strategy adapter
around the loop plus a second wire format; the existing stages travel as messages
instead (``codec.stage_to_content``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import Grid
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

from fedpeft.client import META_NUM_EXAMPLES
from fedpeft.client.features import stats_layout
from fedpeft.client.handler import KIND_FEATURE_STATS, MERGED_EXTRA, STATS_KINDS
from fedpeft.client.scaffold import SCAFFOLD, reply_names
from fedpeft.client.secagg import SECAGG_KINDS
from fedpeft.compression import (
    CodecError,
    CompressionScheme,
    Layout,
    payload_layout,
    reply_layout,
)
from fedpeft.data import DataProfile
from fedpeft.errors import FedpeftError
from fedpeft.profiling import ResourceProfile, make_profile
from fedpeft.runtime.flower import keys
from fedpeft.runtime.flower.codec import (
    content_meta,
    content_to_payload,
    content_to_secagg,
    instruction_to_record,
    payload_to_content,
    stage_to_content,
)
from fedpeft.runtime.flower.runconfig import WeightPolicy
from fedpeft.server.protocols import BatchedPool, ClientPool, EvaluatingPool, ProfiledPool
from fedpeft.types import TrainInstruction

log = logging.getLogger("fedpeft.runtime.flower")
_POLL_S = 0.1


@dataclass(frozen=True)
class ClientInfo:
    """What a client said on first contact, and the most examples it may claim."""

    node_id: int
    num_examples: int  # what it reported
    profile: ResourceProfile
    pid: int
    data: DataProfile | None = None
    max_examples: int | None = None  # the weight policy's bound (None: what it reported)
    own_data: bool = False  # it trains on its own data file (node config)


@dataclass
class WireStats:
    """Bytes of the messages as Flower serialises them (every object's deflated form)."""

    down: int = 0
    up: int = 0
    messages: int = 0
    reply_pids: dict[int, set[int]] = field(default_factory=dict)  # cid -> processes seen
    model_loads: dict[int, int] = field(default_factory=dict)  # cid -> loads in last process
    received: dict[str, set[str]] = field(default_factory=dict)  # message type -> names

    def saw(self, reply: Message) -> None:
        """Notes the names a reply's content holds: every record's, and each array's as
        ``<record>/<name>`` — what the server received, for audit (``flower.json``)."""
        if not reply.has_content():
            return
        names = self.received.setdefault(reply.metadata.message_type, set())
        for name, record in reply.content.items():
            names.add(name)
            if isinstance(record, ArrayRecord):
                names.update(f"{name}/{key}" for key in record)


def _data_profile(record: object, n: int) -> DataProfile | None:
    """A reported data profile, checked (an absent one is None; a malformed one raises)."""
    if record is None:
        return None
    raw = dict(record)  # type: ignore[call-overload]
    hist = [_int(x) for x in raw["label_histogram"]]
    if sum(hist) != n or any(x < 0 for x in hist):
        raise ValueError(f"label histogram {hist} does not sum to the {n} examples reported")
    entropy, mean = float(raw["label_entropy"]), float(raw["mean_length"])
    return DataProfile(n, hist, entropy, mean)


def _int(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"expected an integer, got {value!r}")
    return value


def message_bytes(message: Message) -> int:
    """Serialised size of a message: the sum of its objects' deflated bytes."""
    return sum(len(obj.deflate()) for obj in get_all_nested_objects(message).values())


class FlowerClientPool:
    def __init__(
        self,
        grid: Grid,
        num_clients: int,
        min_clients: int,
        round_timeout_s: float = keys.DEFAULT_ROUND_TIMEOUT_S,
        connect_timeout_s: float = keys.DEFAULT_CONNECT_TIMEOUT_S,
        *,
        policy: WeightPolicy | None = None,
        assigned: Sequence[int] | None = None,
        served: Layout | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        """``policy`` bounds each client's claimed example count (its aggregation weight);
        ``assigned`` is the size of every partition as the server computed it, which the
        default policy (``assigned``) needs; ``served`` is the layout of the adapter a
        compressed payload (``compression.bits_down``) decodes to. Once ``stop`` is set (the
        user interrupted the run, the engine is gone), waiting for replies raises
        ``KeyboardInterrupt`` instead of running out the round timeout."""
        if round_timeout_s <= 0 or connect_timeout_s <= 0:
            raise FedpeftError("Flower round and connect timeouts must be positive seconds.")
        self.policy = policy or WeightPolicy()
        if self.policy.mode == "assigned" and assigned is None:
            raise FedpeftError(
                "the `assigned` client-weight policy needs the server's partition sizes."
            )
        self.assigned = list(assigned) if assigned is not None else None
        self.served = served
        self.grid, self.num_clients, self.min_clients = grid, num_clients, min_clients
        self.round_timeout_s, self.connect_timeout_s = round_timeout_s, connect_timeout_s
        self.clients: dict[int, ClientInfo] = {}
        self.wire = WireStats()
        self.stop = stop or threading.Event()

    # ---- first contact ----------------------------------------------------------------
    def connect(self) -> None:
        """Waits until every partition 0..num_clients-1 has answered the first query, or
        ``connect_timeout_s``; at least ``min_clients`` must have answered by then."""
        deadline = time.monotonic() + self.connect_timeout_s
        asked: set[int] = set()
        while len(self.clients) < self.num_clients and time.monotonic() < deadline:
            new = [n for n in self.grid.get_node_ids() if n not in asked]
            asked.update(new)
            if not new:
                self._wait(_POLL_S * 5)
                continue
            ttl = self.connect_timeout_s  # a first answer builds the node's task: it may be slow
            messages = [self._message(RecordDict(), keys.QUERY, n, "hello", ttl) for n in new]
            for reply in self._exchange(messages, deadline - time.monotonic()).values():
                self._register(reply)
        missing = sorted(set(range(self.num_clients)) - set(self.clients))
        if len(self.clients) < max(self.min_clients, 1):
            raise FedpeftError(
                f"only {len(self.clients)} of {self.num_clients} clients answered within "
                f"{self.connect_timeout_s:.0f} s (missing partitions {missing}), fewer than "
                f"server.min_clients={self.min_clients}; start one SuperNode per partition "
                f"with --node-config '{keys.NODE_PARTITION}=N'."
            )
        if missing:
            log.warning("partitions %s never answered; their rounds will fail", missing)

    def _register(self, reply: Message) -> None:
        node = reply.metadata.src_node_id
        if reply.has_error():
            log.warning("node %d failed its first contact: %s", node, reply.error.reason)
            return
        try:
            hello = reply.content.config_records[keys.HELLO]
            cid, n = _int(hello[keys.HELLO_PARTITION]), _int(hello[keys.HELLO_NUM_EXAMPLES])
            pid = _int(hello.get(keys.HELLO_PID, 0))
            profile = make_profile(dict(reply.content.config_records[keys.PROFILE]))
            data = _data_profile(reply.content.config_records.get(keys.DATA), n)
        except (KeyError, TypeError, ValueError, FedpeftError) as e:
            log.warning("node %d sent an unusable first-contact reply: %s", node, e)
            return
        if not 0 <= cid < self.num_clients or cid in self.clients:
            log.warning("node %d claims partition %d, which is taken or invalid", node, cid)
            return
        own = hello.get(keys.HELLO_OWN_DATA, False) is True
        assigned = self.assigned[cid] if self.assigned is not None else None
        bound = self.policy.bound(n, assigned, own)
        if bound is None:
            log.warning(
                "node %d (partition %d) trains on its own data, which the `assigned` weight "
                "policy cannot bound; it is not admitted (run with %s=\"reported\" and %s)",
                node, cid, keys.RUN_CLIENT_WEIGHT, keys.RUN_MAX_EXAMPLES,
            )  # fmt: skip
            return
        if n > bound:
            log.warning(
                "node %d (partition %d) reported %d examples; its weight is bounded at %d",
                node, cid, n, bound,
            )  # fmt: skip
        self.clients[cid] = ClientInfo(node, n, profile, pid, data, bound, own)

    # ---- the ClientPool protocol ------------------------------------------------------
    def num_examples(self, client_id: int) -> int | None:
        """The most examples this client may claim (the weight policy's bound); a reply
        claiming more is counted at it (``_bounded``)."""
        info = self.clients.get(client_id)
        if info is None:
            return None
        return info.num_examples if info.max_examples is None else info.max_examples

    def resources(self, client_id: int) -> ResourceProfile | None:
        info = self.clients.get(client_id)
        return info.profile if info else None

    def data_profile(self, client_id: int) -> DataProfile | None:
        """What the client reported of its data at first contact (for the allocation)."""
        info = self.clients.get(client_id)
        return info.data if info else None

    def fit(self, instruction: TrainInstruction, payload: bytes) -> bytes:
        reply = self.fit_many([(instruction, payload)])[0]
        if isinstance(reply, Exception):
            raise reply
        return reply

    def fit_many(
        self, requests: Sequence[tuple[TrainInstruction, bytes]]
    ) -> list[bytes | Exception]:
        """All of a round's messages at once; replies (or why not) in request order."""
        results = self._send(requests, keys.TRAIN)
        ok = sum(isinstance(r, bytes) for r in results)
        if requests and ok < self.min_clients:
            raise FedpeftError(
                f"round {requests[0][0].round}: only {ok} of {len(requests)} clients replied, "
                f"fewer than server.min_clients={self.min_clients}; resume the run once "
                "enough SuperNodes are up."
            )
        return results

    def evaluate_many(
        self, requests: Sequence[tuple[TrainInstruction, bytes]]
    ) -> list[bytes | Exception]:
        """Every client scores its models on its own held-out share (``evaluate`` messages);
        a reply carries metrics only, so any tensor in it is refused before decoding."""
        return self._send(requests, keys.EVALUATE, expect_tensors=False)

    def _send(
        self,
        requests: Sequence[tuple[TrainInstruction, bytes]],
        kind: str,
        expect_tensors: bool = True,
    ) -> list[bytes | Exception]:
        """One message per request, all at once; replies (or why not) in request order, each
        checked against the layout of what was sent (or an empty one). A secure-aggregation
        stage's request travels as its protocol message (``codec.stage_to_content``)."""
        contents: dict[bytes, RecordDict] = {}  # one decoded payload per distinct payload
        layouts: dict[int, Layout] = {}  # request index -> the layout a reply must have
        results: list[bytes | Exception] = []
        messages: dict[int, Message] = {}

        def records(payload: bytes) -> RecordDict:
            if payload not in contents:
                contents[payload] = payload_to_content(payload)
            return contents[payload]

        for i, (ins, payload) in enumerate(requests):
            info = self.clients.get(ins.client_id)
            if info is None:
                results.append(LookupError(f"client {ins.client_id} never connected"))
                continue
            if ins.kind in SECAGG_KINDS:
                shared = stage_to_content(ins.kind, payload, records)
            else:
                shared = records(payload)
                served = self._served_layout(ins, payload) if expect_tensors else {}
                # statistics, or the served tensors as the scheme packs them
                layouts[i] = _expected(ins, served) if expect_tensors else served
            content = RecordDict({**shared, keys.INSTRUCTION: instruction_to_record(ins)})
            messages[i] = self._message(content, kind, info.node_id, str(ins.round))
            results.append(TimeoutError(f"no reply within {self.round_timeout_s:.0f} s"))
        self.wire.down += sum(message_bytes(m) for m in messages.values())
        replies = self._exchange(list(messages.values()), self.round_timeout_s)
        by_id = {m.metadata.message_id: i for i, m in messages.items()}
        for mid, reply in replies.items():
            i = by_id[mid]
            results[i] = self._payload(reply, requests[i][0], layouts.get(i))
        return results

    def _served_layout(self, ins: TrainInstruction, payload: bytes) -> Layout:
        """The adapter's layout a payload holds: from its header, or for a compressed payload
        the run's adapter layout (the packed tensors are not the adapter's)."""
        if not ins.compression_down:
            return payload_layout(payload)
        if self.served is None:
            raise FedpeftError("a compressed payload needs the pool to know the served layout.")
        return self.served

    def _payload(
        self, reply: Message, ins: TrainInstruction, layout: Layout | None
    ) -> bytes | Exception:
        """A reply as payload bytes for the loop to validate: tensors other than those sent
        are refused before any array is decoded, and the example count it claims is bounded
        by the weight policy (``num_examples``) — a client cannot weigh more than that. A
        secure-aggregation stage's reply (``layout`` None) is its protocol message alone:
        ``server/secure.py`` decodes and checks it; its count is masked, so the weight policy
        bounds only the round's summed count there (``ClientPool.num_examples``)."""
        self.wire.up += message_bytes(reply)
        expected, source = self.clients[ins.client_id].node_id, reply.metadata.src_node_id
        if source == SUPERLINK_NODE_ID and reply.has_error():  # flwr answers for a lost node
            return RuntimeError(f"no reply from node {expected}: {reply.error.reason}")
        if source != expected:
            return RuntimeError(f"reply came from node {source}")
        if reply.has_error():
            return RuntimeError(f"client error {reply.error.code}: {reply.error.reason}")
        hello = reply.content.config_records.get(keys.HELLO, ConfigRecord())
        pid, loads = hello.get(keys.HELLO_PID), hello.get(keys.HELLO_MODEL_LOADS)
        if isinstance(pid, int) and isinstance(loads, int):
            self.wire.reply_pids.setdefault(ins.client_id, set()).add(pid)
            self.wire.model_loads[ins.client_id] = loads
        try:
            if layout is None:
                return _stage_reply(reply.content)
            meta = self._bounded(content_meta(reply.content), ins.client_id)
            return content_to_payload(reply.content, expected=layout, meta=meta)
        except CodecError as e:
            return e

    def _bounded(self, meta: dict[str, Any], client_id: int) -> dict[str, Any]:
        n, bound = meta.get(META_NUM_EXAMPLES), self.num_examples(client_id)
        if not isinstance(n, int) or isinstance(n, bool) or bound is None or n <= bound:
            return meta  # (a malformed count is the loop's to reject)
        log.warning(
            "client %d claimed %d examples; its weight is bounded at %d", client_id, n, bound
        )
        return {**meta, META_NUM_EXAMPLES: bound}

    # ---- messaging ----------------------------------------------------------------------
    def _message(
        self, content: RecordDict, kind: str, node: int, group: str, ttl: float | None = None
    ) -> Message:
        return Message(content, node, kind, ttl=ttl or self.round_timeout_s, group_id=group)

    def _exchange(self, messages: Iterable[Message], timeout_s: float) -> dict[str, Message]:
        """Pushes ``messages``; replies keyed by the id of the message they answer."""
        messages = list(messages)
        self.wire.messages += len(messages)
        ids = [mid for mid in self.grid.push_messages(messages) if mid]  # sets message_id
        pending, replies = set(ids), {}
        deadline = time.monotonic() + max(timeout_s, 0.0)
        while pending and time.monotonic() < deadline:
            for reply in self.grid.pull_messages(list(pending)):
                mid = reply.metadata.reply_to_message_id
                if mid in pending:
                    pending.discard(mid)
                    replies[mid] = reply
                    self.wire.saw(reply)
            if pending:
                self._wait(_POLL_S)
        return replies

    def _wait(self, seconds: float) -> None:
        if self.stop.wait(seconds):
            raise KeyboardInterrupt("the run was stopped while waiting for its clients")


def _conforms(
    pool: FlowerClientPool,
) -> tuple[ClientPool, BatchedPool, ProfiledPool, EvaluatingPool]:
    """Never called: mypy checks here that this runtime offers every capability it claims."""
    return pool, pool, pool, pool


def _stage_reply(content: RecordDict) -> bytes:
    """A secure-aggregation reply's protocol message; any tensor beside it is refused."""
    extra = sorted(set(content.array_records) - {keys.SECAGG})
    if extra:
        raise CodecError(f"a secure-aggregation reply carries the record {extra[0]!r} too")
    return content_to_secagg(content)


def _expected(ins: TrainInstruction, served: Layout) -> Layout:
    """The layout a reply to ``ins`` must have: class feature statistics (round 0's head
    initialisation, a head or bias refresh), or the served tensors as the instruction's
    compression packs them (SCAFFOLD: with ``Δc_i`` in place of ``c``)."""
    if ins.kind in STATS_KINDS:
        return stats_layout(served, second=ins.kind == KIND_FEATURE_STATS)
    if ins.objective == SCAFFOLD:  # Δc_i comes back where c was sent
        served = reply_names(served)
    served = {k: v for k, v in served.items() if not k.startswith(MERGED_EXTRA)}  # down only
    scheme = CompressionScheme.from_json(ins.compression) if ins.compression else None
    return reply_layout(served, scheme)
