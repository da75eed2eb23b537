"""What a Flower client keeps between rounds lives in its node's ClientApp Context state:
through the Context record and the client host's frames unchanged (bf16 bit-exact)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("flwr")

from flwr.app import Context, RecordDict  # noqa: E402

from fedpeft.compression import encode  # noqa: E402
from fedpeft.runtime.flower import keys  # noqa: E402
from fedpeft.runtime.flower.client_app import load_kept, save_kept  # noqa: E402
from fedpeft.runtime.flower.host import join_kept, split_kept  # noqa: E402


def _kept() -> dict[int, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    head = torch.randn(2, 8, generator=g)
    return {
        1: {
            "personal/classifier.weight": head,
            "ef/a.lora_A.weight": torch.randn(3, 4, generator=g),
        },
        2: {"personal/classifier.weight": head.to(torch.bfloat16) * 3},
    }


def _same(a: dict[int, dict[str, torch.Tensor]], b: dict[int, dict[str, torch.Tensor]]) -> None:
    assert a.keys() == b.keys() and all(a[r].keys() == b[r].keys() for r in a)
    for r in a:
        for k in a[r]:
            assert a[r][k].dtype == b[r][k].dtype and torch.equal(a[r][k], b[r][k])


def test_kept_states_live_in_the_context_state_and_are_forgotten_when_empty() -> None:
    context = Context(run_id=1, node_id=2, node_config={}, state=RecordDict(), run_config={})
    assert load_kept(context) == {}
    save_kept(context, _kept())
    assert list(context.state) == [keys.KEPT]
    _same(load_kept(context), _kept())
    save_kept(context, {})
    assert keys.KEPT not in context.state and load_kept(context) == {}


def test_kept_states_ride_behind_the_payload_to_the_client_host_and_back() -> None:
    payload = encode({"x": torch.ones(2)}, {"round": 1})
    tail, body = join_kept(payload, _kept())
    assert tail > 0 and body.startswith(payload)
    back, kept = split_kept(body, tail)
    assert back == payload
    _same(kept, _kept())
    assert join_kept(payload, {}) == (0, payload) and split_kept(payload, 0) == (payload, {})
    for bad in (-1, len(body) + 1, True, "3"):
        with pytest.raises(ValueError, match="kept-state length"):
            split_kept(body, bad)
