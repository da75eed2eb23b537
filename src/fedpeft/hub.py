"""Is the Hugging Face hub reachable? Decided once per process in at most ~1.5 s, so an
unknown model or dataset on a machine without network fails in a second with one sentence
instead of ~50 s of retries (``huggingface_hub`` retries every request with back-off).

Offline when ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``/``HF_DATASETS_OFFLINE``) is
set, or when a TCP connection to the hub (or to the HTTPS proxy the environment names)
cannot be opened within the timeout. Offline, models load from the local Hugging Face
cache only (``local_files_only=True``), so a model cached earlier still works.
"""

from __future__ import annotations

import os
import socket
import threading
from functools import lru_cache
from urllib.parse import urlsplit

DEFAULT_ENDPOINT = "https://huggingface.co"
CONNECT_TIMEOUT_S = 1.5
_TRUE = {"1", "true", "yes", "on"}


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


def _target() -> tuple[str, int]:
    """(host, port) that a hub request would connect to first: the HTTPS proxy, if any."""
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    url = urlsplit(proxy or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT)
    default = 443 if url.scheme == "https" else 80
    return url.hostname or "huggingface.co", url.port or default


def _connects(host: str, port: int, timeout_s: float) -> bool:
    """A TCP connection within ``timeout_s``, DNS included (which has no timeout of its own,
    hence the thread)."""
    result: list[bool] = []

    def attempt() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout_s):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(timeout_s)
    return bool(result and result[0])


@lru_cache(maxsize=1)
def offline_reason() -> str | None:
    """Why the hub cannot be used from this process (None: it can)."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if _flag(name):
            return f"{name} is set"
    host, port = _target()
    if not _connects(host, port, CONNECT_TIMEOUT_S):
        return f"{host}:{port} cannot be reached"
    return None


def local_only() -> bool:
    """``from_pretrained``'s ``local_files_only``: the local cache only while offline."""
    return offline_reason() is not None


def datasets_offline_reason() -> str | None:
    """As ``offline_reason``, also honouring ``HF_DATASETS_OFFLINE``."""
    if _flag("HF_DATASETS_OFFLINE"):
        return "HF_DATASETS_OFFLINE is set"
    return offline_reason()


def is_cached(repo_id: str, filename: str = "config.json") -> bool:
    """Whether ``filename`` of ``repo_id`` is in the local Hugging Face cache."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, filename)
    except Exception:  # an id the hub would not accept (HFValidationError) is not cached
        return False
    return isinstance(found, str)
