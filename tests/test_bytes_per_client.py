"""Bytes up per client per round count the clients that sent an update — accepted, or
rejected after it arrived — not the sampled ones (offline, refused and late clients send
nothing) nor only the accepted ones. Found in the full study: full fine-tuning under the
pathological split showed 0.30 of the model per client (the sampled count) in summary.json
and 1.5 models per client (a rejected client's bytes over the accepted count) in the tables."""

from __future__ import annotations

from fedpeft.experiment.table import _round_row
from fedpeft.server.summary import build_summary
from fedpeft.types import ClientRecord, ClientStatus, RoundRecord

MODEL = 1000


def _client(cid: int, status: ClientStatus, up: int) -> ClientRecord:
    return ClientRecord(1, cid, status, "", 10, MODEL, up, {})


def _round() -> RoundRecord:
    clients = [
        _client(0, ClientStatus.OK, MODEL),
        _client(1, ClientStatus.OK, MODEL),
        _client(2, ClientStatus.REJECTED, MODEL),  # norm guard: sent, then refused
        _client(3, ClientStatus.STRAGGLER, 0),
        _client(4, ClientStatus.OFFLINE, 0),
    ]
    return RoundRecord(
        round=1, sampled=[0, 1, 2, 3, 4], accepted=2, rejected=3, bytes_down=4 * MODEL,
        bytes_up=3 * MODEL + 40, train_loss=0.5, eval={"accuracy": 0.5}, wall_time_s=1.0,
        eval_time_s=0.1, client_time_s=1.0, clients=clients,
        head_refresh={"bytes_up": 40},  # the head's recalibration: not an update
    )  # fmt: skip


def test_the_round_record_counts_the_replies_and_their_bytes() -> None:
    record = _round().to_json()
    assert (record["replies"], record["reply_bytes_up"]) == (3, 3 * MODEL)


def test_the_summary_divides_by_the_clients_that_sent() -> None:
    summary = build_summary([_round().to_json()], MODEL, {}, 1.0, {})
    assert summary["bytes_up_per_client_round"] == MODEL
    assert summary["up_fraction_of_full_model"] == 1.0 and summary["client_replies"] == 3
    # a record written before `replies` existed keeps its old meaning (per sampled client)
    old = {k: v for k, v in _round().to_json().items() if k not in ("replies", "reply_bytes_up")}
    assert build_summary([old], MODEL, {}, 1.0, {})["bytes_up_per_client_round"] == (
        (3 * MODEL + 40) / 5
    )


def test_the_tables_divide_by_the_clients_that_sent() -> None:
    record = _round()
    clients = [c.__dict__ | {"status": c.status.value} for c in record.clients]
    cum = {"up": 0.0, "down": 0.0, "wall": 0.0, "sent": 0.0, "senders": 0}
    row = _round_row(record.to_json(), clients, {}, cum)
    assert row["bytes_up_per_client"] == MODEL  # not 1.5 models (3 sent over 2 accepted)
    assert (cum["sent"], cum["senders"]) == (3 * MODEL, 3)
    assert row["bytes_up"] == 3 * MODEL + 40  # the round's total still counts everything
