"""An unknown hub model or dataset on a machine without the hub fails at once, with one
sentence, instead of after the hub client's retries."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedpeft import hub
from fedpeft.data.sources import hub_dataset
from fedpeft.errors import FedpeftError
from fedpeft.server.config_checks import check_names
from tests.conftest import tiny_config


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """No offline flag, no proxy, and the per-process answer forgotten before and after."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    for name in ("HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    hub.offline_reason.cache_clear()
    yield monkeypatch
    hub.offline_reason.cache_clear()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when this returns


def test_the_offline_flag_is_honoured(fresh: pytest.MonkeyPatch) -> None:
    fresh.setenv("HF_HUB_OFFLINE", "1")
    assert hub.offline_reason() == "HF_HUB_OFFLINE is set"
    assert hub.local_only() is True


def test_an_unreachable_endpoint_is_offline(fresh: pytest.MonkeyPatch) -> None:
    port = _closed_port()
    fresh.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    assert hub.offline_reason() == f"127.0.0.1:{port} cannot be reached"


def test_a_listening_endpoint_is_online(fresh: pytest.MonkeyPatch) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        fresh.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        assert hub.offline_reason() is None
        assert hub.local_only() is False


def test_a_proxy_is_what_must_be_reachable(fresh: pytest.MonkeyPatch) -> None:
    port = _closed_port()
    fresh.setenv("HTTPS_PROXY", f"http://127.0.0.1:{port}")
    assert hub.offline_reason() == f"127.0.0.1:{port} cannot be reached"


def test_an_unknown_hub_model_is_refused_before_anything_loads(
    fresh: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fresh.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    cfg = tiny_config(tmp_path, "model.name='no-such-org/no-such-model'")
    with pytest.raises(FedpeftError) as info:
        check_names(cfg)
    message = str(info.value)
    assert "model `no-such-org/no-such-model` is not in the local Hugging Face cache" in message
    assert "cannot be reached" in message and "\n" not in message
    assert not hub.is_cached("no-such-org/no-such-model")
    check_names(tiny_config(tmp_path))  # registered tiny models never need the hub


@pytest.mark.parametrize(
    ("model", "dataset"),
    [("vit-base", "cifar10"), ("clip-base", "cifar10"), ("vilt-b32", "daquar")],
)
def test_a_registered_hub_model_is_refused_before_its_data_loads(
    fresh: pytest.MonkeyPatch, tmp_path: Path, model: str, dataset: str
) -> None:
    """ViT, CLIP and ViLT are registered but their weights come from the hub: offline and
    uncached they were refused only after the data had loaded; now by check_names."""
    fresh.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    cfg = tiny_config(tmp_path, f"model.name={model!r}", f"data.dataset={dataset!r}")
    with pytest.raises(FedpeftError) as info:
        check_names(cfg)
    message = str(info.value)
    assert "is not in the local Hugging Face cache" in message and "\n" not in message
    assert (
        "weights do not ship with fedpeft" in message and f"`tiny-{model.split('-')[0]}`" in message
    )


def test_a_hub_dataset_is_refused_offline_without_trying(fresh: pytest.MonkeyPatch) -> None:
    fresh.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(FedpeftError, match=r"the hub is offline \(HF_DATASETS_OFFLINE is set\)"):
        hub_dataset("glue", "sst2", "train", "sentence", "label")
