"""fedpeft's ClientApp: Flower's message handlers around fedpeft's own client code.

* ``query`` (first contact): the client answers with its partition id, its example count
  and its measured resource profile, from which the server allocates.
* ``train``: the global adapter and the instruction come in; the reply is exactly what
  ``LocalClientPool.fit`` (→ ``fedpeft.client.handle_fit``) returns, as Flower records.
* ``evaluate``: the same, but the client scores its models on its own held-out share
  (``fedpeft.client.evaluate``); the reply carries metrics only. Its personal model is
  exported on the node's disk (``process.client_dir``), never sent.
* ``train`` with a secure-aggregation stage as the instruction's kind (``client/secagg.py``):
  the stage's protocol message (and at the masked stage the global) comes in, the reply is
  the protocol message alone (``codec.stage_to_content``). Between stages the round's
  secrets (private keys, self-mask seed, the shares the client holds) live in this node's
  ``Context`` state — held in memory by the SuperNode, or by the simulation engine, for the
  run; never in a message and never on disk — and are dropped after the last stage.

What the client keeps between rounds — personal modules (``personal/…``), SCAFFOLD's
``c_i``, the error-feedback residual — lives in this node's ``Context`` state (the
``fedpeft.kept`` record): held in memory by the SuperNode (or the simulation engine) for the
run, handed to whichever process answers a message and taken back with its reply, never in
a message to the server. After every message that changes it, a snapshot goes to the node's
own disk (``client.snapshot``, under ``process.client_folder``). A new Flower run (a resumed
fedpeft run, or a restarted SuperNode) starts with an empty Context: at its first message
for a run (``fedpeft.kept-run`` says which run's snapshot was consulted) the client reads
that run's snapshot back — verified, and without the rounds the server has not reached.

The work happens in this process (the simulation engine keeps its worker processes, so
the model loads once each), or — when the node config names a ``host-socket`` — in the
node's long-lived client host (``host.py``), because a deployed SuperNode starts a new
ClientApp process per message. A node trains only its own partition
(``--node-config partition-id=N``): an instruction for another client is refused. A node
whose node config names a ``data-file`` trains on that file instead (bring your own data;
``runconfig.node_config_text``), under the same client id.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from flwr.app import ConfigRecord, ConfigRecordValues, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from fedpeft.client import ClientState
from fedpeft.client.secagg import SECAGG_KINDS
from fedpeft.client.snapshot import (
    copy_states,
    forget_snapshot,
    load_snapshot,
    same_states,
    save_snapshot,
)
from fedpeft.client.state import pack, unpack
from fedpeft.errors import FedpeftError
from fedpeft.runtime.flower import keys
from fedpeft.runtime.flower.codec import (
    content_to_payload,
    content_to_stage,
    instruction_fields,
    payload_to_content,
    record_to_instruction,
    record_to_state,
    secagg_content,
    state_to_record,
)
from fedpeft.runtime.flower.process import (
    Kept,
    client_folder,
    hello_info,
    kept_reply,
    secure_reply,
)
from fedpeft.runtime.flower.runconfig import local_data, node_config_text, run_config_text
from fedpeft.types import TrainInstruction

log = logging.getLogger("fedpeft.runtime.flower")


def make_client_app(config_toml: str | None = None) -> ClientApp:
    """The ClientApp; ``config_toml`` is the fedpeft config when the run config has none
    (the simulation engine's Python API passes no run config)."""
    client = ClientApp()

    @client.query()
    def _hello(msg: Message, context: Context) -> Message:
        return hello(msg, context, config_toml)

    @client.train()
    def _train(msg: Message, context: Context) -> Message:
        return train(msg, context, config_toml)

    @client.evaluate()
    def _evaluate(msg: Message, context: Context) -> Message:
        return train(msg, context, config_toml, evaluate=True)

    return client


@dataclass(frozen=True)
class Node:
    """What this SuperNode is: the config it builds its task from, its client id, its
    client host (if any) and whether it trains on its own data file."""

    text: str
    partition: int
    host: str | None
    own: bool


def _setup(context: Context, default: str | None) -> Node:
    own = local_data(context.node_config)
    text = node_config_text(run_config_text(context.run_config, default), own)
    partition = context.node_config.get(keys.NODE_PARTITION)
    if not isinstance(partition, int) or isinstance(partition, bool):
        raise FedpeftError(
            f"this SuperNode has no integer {keys.NODE_PARTITION!r} in its node config; "
            f"start it with --node-config '{keys.NODE_PARTITION}=N'."
        )
    host = context.node_config.get(keys.NODE_HOST_SOCKET)
    return Node(text, partition, str(host) if host else None, own is not None)


def hello(msg: Message, context: Context, config_toml: str | None = None) -> Message:
    """First contact: who this node is, how much data it has, what it can do."""
    me = _setup(context, config_toml)
    node = context.node_config
    upload = str(node.get(keys.NODE_UPLOAD, keys.DEFAULT_BANDWIDTH))
    download = str(node.get(keys.NODE_DOWNLOAD, keys.DEFAULT_BANDWIDTH))
    if me.host is None:
        info = hello_info(me.text, me.partition, upload, download, me.own)
    else:
        from fedpeft.runtime.flower.host import request

        header = {"op": "hello", "config": me.text, "partition": me.partition, "own": me.own}
        info, _ = request(me.host, {**header, "upload": upload, "download": download})
    hello_record = ConfigRecord(
        {
            keys.HELLO_PARTITION: me.partition,
            keys.HELLO_OWN_DATA: bool(me.own),
            keys.HELLO_NUM_EXAMPLES: int(info["num_examples"]),
            keys.HELLO_PID: int(info["pid"]),
            keys.HELLO_MODEL_LOADS: int(info["model_loads"]),
            keys.HELLO_MODEL_LOAD_S: float(info["model_load_s"]),
        }
    )
    profile: dict[str, ConfigRecordValues] = {
        k: v for k, v in info["profile"].items() if isinstance(v, int | float | str)
    }
    data = ConfigRecord(dict(info["data"]))
    content = RecordDict(
        {keys.HELLO: hello_record, keys.PROFILE: ConfigRecord(profile), keys.DATA: data}
    )
    return Message(content, reply_to=msg)


def train(
    msg: Message, context: Context, config_toml: str | None = None, *, evaluate: bool = False
) -> Message:
    """One round of local training, by fedpeft's own client code; with ``evaluate``, the
    client's models scored on its own held-out share instead (metrics only)."""
    me = _setup(context, config_toml)
    record = msg.content.config_records.get(keys.INSTRUCTION)
    if record is None:
        raise FedpeftError(f"train message without its {keys.INSTRUCTION!r} record.")
    instruction = record_to_instruction(record)
    if instruction.client_id != me.partition:
        raise FedpeftError(
            f"this node holds partition {me.partition}, not client {instruction.client_id}."
        )
    if instruction.kind in SECAGG_KINDS and not evaluate:
        return Message(secure_stage(msg.content, context, me, instruction), reply_to=msg)
    payload = content_to_payload(msg.content)
    kept = restore_kept(context, me, instruction, evaluate)
    before = copy_states(kept)  # the message may change its tensors in place
    if me.host is None:
        reply, info, kept = kept_reply(me.text, instruction, payload, kept, me.own, evaluate)
    else:
        from fedpeft.runtime.flower.host import join_kept, request, split_kept

        fields = instruction_fields(instruction)
        op = "evaluate" if evaluate else "fit"
        header = {"op": op, "config": me.text, "instruction": fields, "own": me.own}
        tail, body = join_kept(payload, kept)
        info, out = request(me.host, {**header, "kept": tail}, body)
        reply, kept = split_kept(out, info.get("kept", 0))
    keep_kept(context, me, instruction, before, kept)
    content = payload_to_content(reply)
    content[keys.HELLO] = _process_record(info)
    return Message(content, reply_to=msg)


def secure_stage(
    content: RecordDict, context: Context, me: Node, ins: TrainInstruction
) -> RecordDict:
    """One secure-aggregation stage's reply, the round's secrets and the client's kept
    states taken from and put back into ``context``."""
    payload = content_to_stage(ins.kind, content)
    secrets, kept = load_secrets(context), restore_kept(context, me, ins)
    before = copy_states(kept)  # the message may change its tensors in place
    if me.host is None:
        reply, info, secrets, kept = secure_reply(me.text, ins, payload, secrets, kept, me.own)
    else:
        from fedpeft.runtime.flower.host import (
            join_kept,
            pack_secrets,
            request,
            split_kept,
            unpack_secrets,
        )

        header = {"op": "fit", "config": me.text, "instruction": instruction_fields(ins),
                  "own": me.own, "secrets": pack_secrets(secrets)}  # fmt: skip
        tail, body = join_kept(payload, kept)
        info, data = request(me.host, {**header, "kept": tail}, body)
        secrets = unpack_secrets(str(info.get("secrets", "")))
        reply, kept = split_kept(data, info.get("kept", 0))
    save_secrets(context, secrets)
    keep_kept(context, me, ins, before, kept)
    out = secagg_content(reply)
    out[keys.HELLO] = _process_record(info)
    return out


def load_secrets(context: Context) -> ClientState:
    """The secure-aggregation secrets this node kept from the round's earlier stages."""
    record = context.state.array_records.get(keys.SECRETS)
    return record_to_state(record) if record is not None else {}


def save_secrets(context: Context, secrets: ClientState) -> None:
    """Keeps ``secrets`` in the node's Context state (empty: forgets them)."""
    if secrets:
        context.state[keys.SECRETS] = state_to_record(secrets)
    elif keys.SECRETS in context.state:
        del context.state[keys.SECRETS]


def _process_record(info: dict[str, Any]) -> ConfigRecord:
    """Which process answered and how often it has loaded the model (flower.json)."""
    return ConfigRecord(
        {keys.HELLO_PID: int(info["pid"]), keys.HELLO_MODEL_LOADS: int(info["model_loads"])}
    )


def load_kept(context: Context) -> Kept:
    """What this node's client kept from its earlier rounds, by round (Context state)."""
    record = context.state.array_records.get(keys.KEPT)
    return unpack(record_to_state(record)) if record is not None else {}


def save_kept(context: Context, kept: Kept) -> None:
    """Keeps ``kept`` in the node's Context state (empty: forgets it)."""
    if kept:
        context.state[keys.KEPT] = state_to_record(pack(kept))
    elif keys.KEPT in context.state:
        del context.state[keys.KEPT]


def restore_kept(context: Context, me: Node, ins: TrainInstruction, evaluate: bool = False) -> Kept:
    """``load_kept``; at this Context's first message for ``ins.run_id`` (a new Flower run:
    a resumed fedpeft run or a restarted node), the run's verified snapshot on this node's
    disk instead when the Context holds nothing — only its rounds before the one this
    message works on (a train message uses the states of earlier rounds, an evaluate
    message those up to its own round, as ``ClientStateStore.load`` does)."""
    kept = load_kept(context)
    record = context.state.config_records.get(keys.KEPT_RUN)
    if record is not None and record.get(keys.KEPT_RUN_ID) == ins.run_id:
        return kept
    context.state[keys.KEPT_RUN] = ConfigRecord({keys.KEPT_RUN_ID: ins.run_id})
    if kept:
        return kept
    folder = client_folder(me.text, ins.run_id, ins.client_id)
    before = ins.round + 1 if evaluate else ins.round
    restored = load_snapshot(folder, ins.run_id, ins.client_id, before)
    save_kept(context, restored)  # in the Context at once: a message that fails keeps them
    return restored


def keep_kept(context: Context, me: Node, ins: TrainInstruction, before: Kept, after: Kept) -> None:
    """``save_kept``, and — when the message changed the states — their snapshot on this
    node's disk. A failed write is logged and the run goes on; the older snapshot is then
    removed, so a resume starts this client afresh rather than from stale states."""
    save_kept(context, after)
    if same_states(before, after):
        return
    folder = client_folder(me.text, ins.run_id, ins.client_id)
    try:
        save_snapshot(folder, ins.run_id, ins.client_id, after)
    except OSError as e:
        log.warning(
            "client %d: its kept state was not written to %s (%s); a resumed run will start "
            "it afresh",
            ins.client_id,
            folder,
            e,
        )
        forget_snapshot(folder)


app = make_client_app()  # the deployment's component: the config comes in the run config
