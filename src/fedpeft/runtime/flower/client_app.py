"""fedpeft's ClientApp: Flower's message handlers around fedpeft's own client code.

* ``query`` (first contact): the client answers with its partition id, its example count
  and its measured resource profile, from which the server allocates.
* ``train``: the global adapter and the instruction come in; the reply is exactly what
  ``LocalClientPool.fit`` (→ ``fedpeft.client.handle_fit``) returns, as Flower records.

The work happens in this process (the simulation engine keeps its worker processes, so
the model loads once each), or — when the node config names a ``host-socket`` — in the
node's long-lived client host (``host.py``), because a deployed SuperNode starts a new
ClientApp process per message. A node trains only its own partition
(``--node-config partition-id=N``): an instruction for another client is refused. A node
whose node config names a ``data-file`` trains on that file instead (bring your own data;
``runconfig.node_config_text``), under the same client id.
"""

from __future__ import annotations

from dataclasses import dataclass

from flwr.app import ConfigRecord, ConfigRecordValues, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from fedpeft.errors import FedpeftError
from fedpeft.runtime.flower import keys
from fedpeft.runtime.flower.codec import (
    content_to_payload,
    instruction_fields,
    payload_to_content,
    record_to_instruction,
)
from fedpeft.runtime.flower.process import fit_reply, hello_info
from fedpeft.runtime.flower.runconfig import local_data, node_config_text, run_config_text


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


def train(msg: Message, context: Context, config_toml: str | None = None) -> Message:
    """One round of local training, by fedpeft's own client code."""
    me = _setup(context, config_toml)
    record = msg.content.config_records.get(keys.INSTRUCTION)
    if record is None:
        raise FedpeftError(f"train message without its {keys.INSTRUCTION!r} record.")
    instruction = record_to_instruction(record)
    if instruction.client_id != me.partition:
        raise FedpeftError(
            f"this node holds partition {me.partition}, not client {instruction.client_id}."
        )
    payload = content_to_payload(msg.content)
    if me.host is None:
        reply, info = fit_reply(me.text, instruction, payload, me.own)
    else:
        from fedpeft.runtime.flower.host import request

        fields = instruction_fields(instruction)
        header = {"op": "fit", "config": me.text, "instruction": fields, "own": me.own}
        info, reply = request(me.host, header, payload)
    content = payload_to_content(reply)
    content[keys.HELLO] = ConfigRecord(
        {keys.HELLO_PID: int(info["pid"]), keys.HELLO_MODEL_LOADS: int(info["model_loads"])}
    )
    return Message(content, reply_to=msg)


app = make_client_app()  # the deployment's component: the config comes in the run config
