"""The Flower control plane and client weights, without starting a federation:

* the SuperLink launcher's middleware lets strangers reach the Fleet API only (the Control
  and Runtime APIs answer trusted addresses), and its defaults cannot be switched off;
* a client's aggregation weight is bounded by what the server assigned (or, by explicit
  choice, by what it reported, capped);
* every node derives the same fedpeft config from the run config, and a node with its own
  data trains its file under its client id.
"""

from __future__ import annotations

import time
import tomllib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("flwr")

from flwr.app import ConfigRecord, Message, RecordDict  # noqa: E402
from flwr.supercore.task_identity import TaskIdentity  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.responses import PlainTextResponse  # noqa: E402
from starlette.routing import Route  # noqa: E402

with warnings.catch_warnings():  # starlette's note that httpx will give way to httpx2
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from fedpeft.client.secagg import (  # noqa: E402
    KIND_MASKED_INPUT,
    KIND_SETUP,
    join_payload,
    split_payload,
)
from fedpeft.compression import CodecError, decode, encode, payload_layout  # noqa: E402
from fedpeft.config import config_to_toml, load_config  # noqa: E402
from fedpeft.errors import FedpeftError  # noqa: E402
from fedpeft.profiling import declared_devices  # noqa: E402
from fedpeft.runtime.flower import codec, keys  # noqa: E402
from fedpeft.runtime.flower.codec import payload_to_content  # noqa: E402
from fedpeft.runtime.flower.pool import FlowerClientPool, WireStats  # noqa: E402
from fedpeft.runtime.flower.process import config_from_toml  # noqa: E402
from fedpeft.runtime.flower.runconfig import (  # noqa: E402
    LocalData,
    WeightPolicy,
    local_data,
    node_config_text,
    run_config_text,
    run_timeout,
)
from fedpeft.runtime.flower.superlink import (  # noqa: E402
    LOOPBACK,
    TrustedControl,
    flwr_args,
    is_trusted,
    main,
    parse_networks,
)
from fedpeft.server.config_checks import check_names
from fedpeft.server.task import build_data  # noqa: E402
from fedpeft.types import TrainInstruction  # noqa: E402

# ---- the control plane --------------------------------------------------------------------
PATHS = ["/v1/control/start-run", "/v1/control/register-node", "/v1/runtime/pull-messages",
         "/v1/fleet/pull-messages", "/health", "/docs"]  # fmt: skip


def _ok(request: object) -> PlainTextResponse:
    return PlainTextResponse("reached flwr")


def _client(peer: str, networks: tuple[str, ...] = LOOPBACK) -> TestClient:
    routes = [Route(p, _ok, methods=["GET", "POST"]) for p in PATHS]
    app = Starlette(routes=routes)
    app.add_middleware(TrustedControl, networks=parse_networks(networks))
    return TestClient(app, client=(peer, 50000))


@pytest.mark.parametrize("peer", ["203.0.113.7", "192.0.2.2", "10.0.0.1", "::2", "not-an-ip"])
def test_a_stranger_reaches_the_fleet_api_only(peer: str) -> None:
    client = _client(peer)
    for path in PATHS:
        response = client.post(path)
        if path.startswith("/v1/fleet/") or path == "/health":
            assert (response.status_code, response.text) == (200, "reached flwr"), path
        else:
            assert response.status_code == 403, path
            body = response.json()
            assert body["code"] == 9 and "trusted addresses" in body["detail"]


@pytest.mark.parametrize("peer", ["127.0.0.1", "127.8.9.1", "::1", "::ffff:127.0.0.1"])
def test_loopback_reaches_everything(peer: str) -> None:
    client = _client(peer)
    for path in PATHS:
        assert client.post(path).status_code == 200, path


def test_trusted_networks_are_configurable() -> None:
    client = _client("10.1.2.3", ("10.1.0.0/16",))
    assert client.post("/v1/control/start-run").status_code == 200
    assert _client("127.0.0.1", ("10.1.0.0/16",)).post("/v1/control/start-run").status_code == 403
    networks = parse_networks(["10.1.0.0/16", "2001:db8::/32", "192.0.2.9"])
    assert is_trusted("2001:db8::5", networks) and is_trusted("192.0.2.9", networks)
    assert not is_trusted("192.0.2.10", networks) and not is_trusted(None, networks)
    with pytest.raises(ValueError, match="'10.1.0.0/33' is not an IP address or CIDR block"):
        parse_networks(["10.1.0.0/33"])


def test_the_launcher_enforces_node_keys_and_tls() -> None:
    assert "--enable-supernode-auth" in flwr_args(["--host", "0.0.0.0"])
    assert flwr_args(["--enable-supernode-auth"]).count("--enable-supernode-auth") == 1
    with pytest.raises(SystemExit, match="--insecure is refused"):
        flwr_args(["--insecure"])


def test_the_launcher_refuses_flwrs_legacy_grpc_apis(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLWR_INTERNAL_GRPC_CONTROL_API", "1")
    with pytest.raises(SystemExit, match="bypasses the trusted-address check"):
        main(["--ssl-certfile", "x"])
    monkeypatch.delenv("FLWR_INTERNAL_GRPC_CONTROL_API")
    with pytest.raises(SystemExit, match="not an IP address"):
        main(["--control-allow", "everyone"])


# ---- client weights -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("policy", "reported", "assigned", "own", "bound"),
    [
        (WeightPolicy("assigned"), 40, 32, False, 32),  # claims more than assigned: bounded
        (WeightPolicy("assigned"), 20, 32, False, 32),
        (WeightPolicy("assigned"), 40, None, False, None),
        (WeightPolicy("assigned"), 40, 32, True, None),  # its own data: not admitted
        (WeightPolicy("reported"), 40, 32, True, 40),
        (WeightPolicy("reported", 25), 40, 32, True, 25),
        (WeightPolicy("reported", 25), 10, None, True, 10),
    ],
)
def test_the_weight_policy_bounds_what_a_client_may_claim(
    policy: WeightPolicy, reported: int, assigned: int | None, own: bool, bound: int | None
) -> None:
    assert policy.bound(reported, assigned, own) == bound


@pytest.mark.parametrize(
    ("run_config", "expected"),
    [
        ({}, WeightPolicy("assigned", None)),
        (
            {keys.RUN_CLIENT_WEIGHT: "reported", keys.RUN_MAX_EXAMPLES: 500},
            WeightPolicy("reported", 500),
        ),
        ({keys.RUN_CLIENT_WEIGHT: "trusted"}, "expected one of assigned, reported"),
        ({keys.RUN_MAX_EXAMPLES: -1}, "expected a count"),
        ({keys.RUN_MAX_EXAMPLES: True}, "expected a count"),
    ],
)  # fmt: skip
def test_the_weight_policy_comes_from_the_run_config(
    run_config: dict[str, object], expected: WeightPolicy | str
) -> None:
    if isinstance(expected, str):
        with pytest.raises(FedpeftError, match=expected):
            WeightPolicy.from_run_config(run_config)
    else:
        assert WeightPolicy.from_run_config(run_config) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, 600.0), (60, 60.0), (2.5, 2.5), ("abc", None), (True, None), (0.0, None),
     (-1, None), (float("nan"), None), (float("inf"), None), ([60], None)],
)  # fmt: skip
def test_the_round_timeout_comes_from_the_run_config(value: object, expected: float | None) -> None:
    """A timeout the run config gets wrong is one sentence naming its key, before the run."""
    run_config = {} if value is None else {keys.RUN_ROUND_TIMEOUT: value}
    if expected is None:
        with pytest.raises(FedpeftError, match=f"`{keys.RUN_ROUND_TIMEOUT}` is .*positive"):
            run_timeout(run_config, keys.RUN_ROUND_TIMEOUT, keys.DEFAULT_ROUND_TIMEOUT_S)
    else:
        assert run_timeout(run_config, keys.RUN_ROUND_TIMEOUT, 600.0) == expected


@pytest.mark.parametrize("key", [keys.RUN_ROUND_TIMEOUT, keys.RUN_CONNECT_TIMEOUT])
def test_the_server_app_refuses_a_bad_timeout_in_one_sentence(key: str) -> None:
    from flwr.app import Context, RecordDict

    from fedpeft.runtime.flower.server_app import make_server_app
    from fedpeft.runtime.local.simulator import RunResult

    outcome: list[RunResult | BaseException] = []
    app = make_server_app(load_config(overrides=["model.name='tiny-bert'"]), outcome=outcome)
    context = Context(1, 0, {}, RecordDict(), {key: "abc"})
    app(grid=None, context=context)  # type: ignore[arg-type]
    (error,) = outcome
    assert isinstance(error, FedpeftError) and f"`{key}` is 'abc'" in str(error)


@pytest.fixture
def task_identity() -> Iterator[None]:
    """flwr builds messages only inside a task; give this process one."""
    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
    yield
    TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


def _hello(node: int, partition: int, n: int, own: bool) -> Message:
    """A first-contact reply as fedpeft's ClientApp builds it (client_app.hello)."""
    query = Message(RecordDict(), node, keys.QUERY)
    profile = {k: v for k, v in declared_devices(1, {"mid": 1.0}, 0)[0].to_json().items()}
    data = {"num_examples": n, "label_histogram": [n - n // 2, n // 2], "label_entropy": 1.0,
            "mean_length": 9.0}  # fmt: skip
    content = RecordDict(
        {
            keys.HELLO: ConfigRecord(
                {
                    keys.HELLO_PARTITION: partition,
                    keys.HELLO_NUM_EXAMPLES: n,
                    keys.HELLO_OWN_DATA: own,
                    keys.HELLO_PID: 7,
                }  # fmt: skip
            ),
            keys.PROFILE: ConfigRecord(profile),
            keys.DATA: ConfigRecord(data),
        }
    )
    return Message(content, reply_to=query)  # from the node the query went to


@pytest.mark.usefixtures("task_identity")
def test_the_pool_bounds_each_client_by_its_assigned_partition() -> None:
    pool = FlowerClientPool(grid=None, num_clients=3, min_clients=1, assigned=[30, 31, 32])  # type: ignore[arg-type]
    pool._register(_hello(11, 0, 30, own=False))  # honest
    pool._register(_hello(12, 1, 5000, own=False))  # inflates its count at first contact
    pool._register(_hello(13, 2, 40, own=True))  # brings data the server cannot size
    assert pool.num_examples(0) == 30
    assert pool.num_examples(1) == 31  # what the server assigned, not the 5000 it claimed
    assert pool.num_examples(2) is None and 2 not in pool.clients  # not admitted
    with pytest.raises(FedpeftError, match="needs the server's partition sizes"):
        FlowerClientPool(grid=None, num_clients=3, min_clients=1)  # type: ignore[arg-type]


@pytest.mark.usefixtures("task_identity")
@pytest.mark.parametrize("pid", ["7", 7.5, True, [7]])
def test_a_first_contact_reply_with_a_malformed_pid_is_not_admitted(pid: object) -> None:
    """An untrusted hello whose process id is no integer is one more unusable reply (logged),
    not an exception out of the server's first contact."""
    pool = FlowerClientPool(grid=None, num_clients=2, min_clients=1, assigned=[30, 31])  # type: ignore[arg-type]
    strange = _hello(11, 0, 30, own=False)
    strange.content.config_records[keys.HELLO][keys.HELLO_PID] = pid  # type: ignore[assignment]
    pool._register(strange)
    pool._register(_hello(12, 1, 31, own=False))
    assert 0 not in pool.clients and pool.num_examples(1) == 31


def _train_reply(node: int, state: dict[str, torch.Tensor], claimed: int) -> Message:
    """A train reply as fedpeft's ClientApp builds it (client_app.train)."""
    train = Message(RecordDict(), node, keys.TRAIN)
    meta = {"client_id": 1, "round": 1, "num_examples": claimed, "metrics": {"loss": 0.5}}
    return Message(payload_to_content(encode(state, meta)), reply_to=train)


@pytest.mark.usefixtures("task_identity")
def test_a_reply_claiming_more_is_bounded_and_strange_tensors_refused_undecoded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pool = FlowerClientPool(grid=None, num_clients=2, min_clients=1, assigned=[30, 31])  # type: ignore[arg-type]
    pool._register(_hello(12, 1, 5000, own=False))
    sent = {"a.lora_A.weight": torch.zeros(2, 4), "head.bias": torch.zeros(2)}
    ins = TrainInstruction(1, 1, 1, None, 8, 0.1, 0.0, 0.0, 0)
    layout = payload_layout(encode(sent))
    payload = pool._payload(_train_reply(12, sent, 5000), ins, layout)
    assert isinstance(payload, bytes)
    state, meta = decode(payload)
    assert meta["num_examples"] == 31  # the weight it may have, not the 5000 it claimed
    assert meta["metrics"] == {"loss": 0.5} and state.keys() == sent.keys()
    decoded: list[str] = []
    real = codec.array_to_tensor
    monkeypatch.setattr(codec, "array_to_tensor", lambda a: decoded.append(a.dtype) or real(a))
    smuggled = {**sent, "extra": torch.zeros(1 << 16)}
    refused = pool._payload(_train_reply(12, smuggled, 10), ins, layout)
    assert isinstance(refused, CodecError) and "unexpected tensor 'extra'" in str(refused)
    assert decoded == []  # refused from the arrays' declared shapes, no data decoded


@pytest.mark.usefixtures("task_identity")
def test_a_lost_node_fails_with_the_superlinks_reason_and_a_strangers_reply_is_refused() -> None:
    """A SuperNode that dies mid-round is answered for by the SuperLink (flwr's error reply
    from its own node id): its client fails with that reason, not as an impostor."""
    from flwr.app import Error
    from flwr.common.constant import SUPERLINK_NODE_ID

    pool = FlowerClientPool(grid=None, num_clients=2, min_clients=1, assigned=[30, 31])  # type: ignore[arg-type]
    pool._register(_hello(12, 1, 30, own=False))
    ins = TrainInstruction(1, 1, 1, None, 8, 0.1, 0.0, 0.0, 0)
    layout = payload_layout(encode({"a.lora_A.weight": torch.zeros(2, 4)}))
    lost = Message(RecordDict(), SUPERLINK_NODE_ID, keys.TRAIN)  # as flwr answers it
    reply = Message(Error(code=3, reason="Error: Node Unavailable"), reply_to=lost)
    failed = pool._payload(reply, ins, layout)
    assert isinstance(failed, RuntimeError) and "Node Unavailable" in str(failed)
    assert "node 12" in str(failed)
    stranger = _train_reply(13, {"a.lora_A.weight": torch.zeros(2, 4)}, 30)
    refused = pool._payload(stranger, ins, layout)
    assert isinstance(refused, RuntimeError) and "came from node 13" in str(refused)


class _SilentGrid:
    """A grid whose nodes never answer (the simulation engine after Ctrl-C)."""

    def push_messages(self, messages: list[Message]) -> list[str]:
        return [f"m{i}" for i, _ in enumerate(messages)]

    def pull_messages(self, ids: list[str]) -> list[Message]:
        return []


@pytest.mark.usefixtures("task_identity")
def test_a_stopped_run_stops_waiting_for_its_clients_at_once() -> None:
    """Once the engine is gone (``stop`` set), the server does not wait out the round
    timeout — the CLI would hang that long after printing 'interrupted'."""
    import threading

    stop = threading.Event()
    grid: Any = _SilentGrid()
    pool = FlowerClientPool(grid, 2, 1, round_timeout_s=600.0, assigned=[30, 31], stop=stop)
    pool._register(_hello(12, 1, 30, own=False))
    ins = TrainInstruction(1, 1, 1, None, 8, 0.1, 0.0, 0.0, 0)
    payload = encode({"a.lora_A.weight": torch.zeros(2, 4)})
    threading.Timer(0.3, stop.set).start()
    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        pool.fit_many([(ins, payload)])
    assert time.monotonic() - start < 10


@pytest.mark.usefixtures("task_identity")
def test_a_secure_aggregation_stage_travels_as_its_message_and_its_reply_as_that_alone() -> None:
    """Down: the protocol message as one uint8 array (at the masked stage beside the global);
    up: the message alone, any tensor beside it refused before its data is decoded."""
    sent = {"a.lora_A.weight": torch.ones(2, 4)}
    train = encode(sent, {"round": 1})
    masked = codec.stage_to_content(KIND_MASKED_INPUT, join_payload(b"shares", train))
    assert set(masked.keys()) == {keys.ARRAYS, keys.META, keys.SECAGG}
    message, again = split_payload(codec.content_to_stage(KIND_MASKED_INPUT, masked))
    assert message == b"shares" and torch.equal(
        decode(again)[0]["a.lora_A.weight"], sent["a.lora_A.weight"]
    )
    setup = codec.stage_to_content(KIND_SETUP, b"setup")
    assert (
        set(setup.keys()) == {keys.SECAGG} and codec.content_to_stage(KIND_SETUP, setup) == b"setup"
    )
    pool = FlowerClientPool(grid=None, num_clients=2, min_clients=1, assigned=[30, 31])  # type: ignore[arg-type]
    pool._register(_hello(12, 1, 30, own=False))
    ins = TrainInstruction(1, 1, 1, None, 8, 0.1, 0.0, 0.0, 0, kind=KIND_MASKED_INPUT)
    stage = Message(RecordDict(), 12, keys.TRAIN)
    assert pool._payload(Message(codec.secagg_content(b"y"), reply_to=stage), ins, None) == b"y"
    leaking = codec.secagg_content(b"y")
    leaking[keys.ARRAYS] = codec.state_to_record(sent)  # an update in the clear beside it
    refused = pool._payload(Message(leaking, reply_to=stage), ins, None)
    assert isinstance(refused, CodecError) and repr(keys.ARRAYS) in str(refused)
    wide = RecordDict({keys.SECAGG: codec.state_to_record({keys.SECAGG_MESSAGE: torch.ones(3)})})
    refused = pool._payload(Message(wide, reply_to=stage), ins, None)
    assert isinstance(refused, CodecError) and "not bytes" in str(refused)


@pytest.mark.usefixtures("task_identity")
def test_the_pool_lists_every_record_and_tensor_name_the_server_received() -> None:
    """flower.json's ``received``: what crossed to the server, by message type."""
    wire = WireStats()
    wire.saw(_train_reply(12, {"a.lora_A.weight": torch.zeros(2, 4)}, 5))
    wire.saw(_hello(12, 1, 5, own=False))
    assert wire.received == {
        keys.TRAIN: {keys.ARRAYS, f"{keys.ARRAYS}/a.lora_A.weight", keys.META},
        keys.QUERY: {keys.HELLO, keys.PROFILE, keys.DATA},
    }


@pytest.mark.usefixtures("task_identity")
def test_the_reported_policy_admits_own_data_up_to_the_cap() -> None:
    policy = WeightPolicy("reported", 100)
    pool = FlowerClientPool(grid=None, num_clients=2, min_clients=1, policy=policy)  # type: ignore[arg-type]
    pool._register(_hello(21, 0, 40, own=True))
    pool._register(_hello(22, 1, 10_000, own=True))
    assert (pool.num_examples(0), pool.num_examples(1)) == (40, 100)
    assert pool.clients[1].own_data and pool.clients[1].num_examples == 10_000


# ---- the run config and a node's own data --------------------------------------------------
def test_every_node_derives_the_same_config_from_the_run_config() -> None:
    base = config_to_toml(load_config(overrides=["model.name='tiny-bert'"]))
    run_config = {keys.RUN_CONFIG_TOML: base, keys.RUN_SET: "run.rounds=3; data.train_size=64 ;"}
    text = run_config_text(run_config)
    assert text == run_config_text(dict(run_config))  # deterministic on every node
    raw = tomllib.loads(text)
    assert (raw["run"]["rounds"], raw["data"]["train_size"], raw["model"]["name"]) == (
        3, 64, "tiny-bert")  # fmt: skip
    assert tomllib.loads(run_config_text({}))["model"]["name"] == load_config().model.name
    with pytest.raises(FedpeftError, match="`run.rounds`: Input should be a valid integer"):
        run_config_text({keys.RUN_SET: "run.rounds=true"})
    with pytest.raises(FedpeftError, match="is not valid TOML"):
        run_config_text({keys.RUN_CONFIG_TOML: "[run"})
    deep = "a = " + "[" * 5000 + "]" * 5000  # deeper than the parser's recursion
    with pytest.raises(FedpeftError, match="is not valid TOML"):
        run_config_text({keys.RUN_CONFIG_TOML: deep})
    with pytest.raises(FedpeftError, match="is not valid TOML"):
        config_from_toml(deep)


def test_a_node_with_its_own_data_trains_its_whole_file_as_one_client(tmp_path: Path) -> None:
    mine = tmp_path / "site.csv"
    mine.write_text("review,y\n" + "".join(f"text {i},{i % 2}\n" for i in range(10)))
    node = {keys.NODE_DATA_FILE: str(mine), keys.NODE_TEXT_COLUMN: "review",
            keys.NODE_LABEL_COLUMN: "y", keys.NODE_PARTITION: 3}  # fmt: skip
    own = local_data(node)
    assert own == LocalData(str(mine), "review", "y")
    assert local_data({keys.NODE_PARTITION: 3}) is None
    run_overrides = [
        "model.name='tiny-bert'",
        "data.num_clients=4",
        "server.min_clients=4",
        "data.dataset='custom'",
        f"data.train_file={str(tmp_path / 'srv.csv')!r}",
        "data.label_names=['0','1']",
        "server.aggregator='layerwise'",
    ]
    run = load_config(overrides=run_overrides)
    text = node_config_text(config_to_toml(run), own)
    raw = tomllib.loads(text)
    data, server = raw["data"], raw["server"]
    assert (data["train_file"], data["text_column"], data["label_column"]) == (
        str(mine), "review", "y")  # fmt: skip
    assert data["num_clients"] == 1 and "train_size" not in data
    assert data["label_names"] == ["0", "1"]  # the run's classes, in the run's order
    assert (server["min_clients"], server["aggregator"]) == (1, "fedavg")  # no proxy held out
    task_data = build_data(config_from_toml(text))  # what the node's client trains on
    assert [len(p) for p in task_data.partitions] == [10]  # every row of its file
    assert task_data.dataset.label_names == ["0", "1"]
    assert task_data.train.labels.tolist() == [i % 2 for i in range(10)]
    assert node_config_text(text, None) == text  # no own data: the run's config as is
    # under secure aggregation a node with its own data is one client, not a cohort of 3
    secure = load_config(overrides=[*run_overrides[:-1], "privacy.secure_aggregation=true",
                                    "server.head_init='random'"])  # fmt: skip
    check_names(secure)
    node = config_from_toml(node_config_text(config_to_toml(secure), own))
    check_names(node)
    assert node.data.num_clients == 1 and not node.privacy.secure_aggregation
    without_labels = load_config(overrides=["data.dataset='custom'", "data.train_file='x.csv'"])
    with pytest.raises(FedpeftError, match="has no `data.label_names`"):
        node_config_text(config_to_toml(without_labels), own)
    with pytest.raises(FedpeftError, match="must be strings"):
        local_data({keys.NODE_DATA_FILE: 5})


def test_a_resumed_runs_flower_json_counts_fedpeft_bytes_of_the_rounds_it_ran(
    tmp_path: Path,
) -> None:
    """A resumed run is a new Flower run: its wire bytes cover only the rounds it ran, so
    fedpeft's own count beside them must too (else the wire looks cheaper than the payload)."""
    from fedpeft.runtime.flower.server_app import flower_stats
    from fedpeft.runtime.local.simulator import RunResult

    pool = FlowerClientPool(grid=None, num_clients=2, min_clients=1, assigned=[30, 31])  # type: ignore[arg-type]
    pool.wire.down, pool.wire.up = 1500, 700
    rounds = [{"round": r, "bytes_down": 1000 * r, "bytes_up": 500 * r} for r in (1, 2, 3)]
    summary = {"bytes_down_total": 6000, "bytes_up_total": 3000, "resumed_from_round": 2}
    stats = flower_stats(pool, RunResult(tmp_path, {}, rounds, summary))
    assert stats["rounds"] == [3, 3]
    assert (stats["fedpeft_bytes_down"], stats["fedpeft_bytes_up"]) == (3000, 1500)
    fresh = flower_stats(
        pool, RunResult(tmp_path, {}, rounds, {**summary, "resumed_from_round": None})
    )
    assert fresh["rounds"] == [1, 3] and fresh["fedpeft_bytes_up"] == 3000
