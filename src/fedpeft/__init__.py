"""fedpeft — FedPEFT+: federated parameter-efficient fine-tuning of foundation models.

Importing the package is cheap and never imports ``flwr``, ``opacus`` or ``matplotlib``.
It sets ``OMP_WAIT_POLICY=PASSIVE`` (unless already set) before torch loads: OpenMP then
reads it, and its idle threads sleep instead of spinning (``runtime/local/threads.py``).
It also caps the two caches that torch's oneDNN path keeps per input shape at 64 entries
each, unless set: oneDNN's primitive cache (``ONEDNN_PRIMITIVE_CACHE_CAPACITY``) and
ideep's operator cache above it (``LRU_CACHE_CAPACITY``); both are read at their first use,
so this works after torch is imported too. Under bf16 autocast on a CPU every new batch
shape adds an entry with its buffers, and at the defaults of 1,024 a run with dynamic
padding grew by hundreds of MiB a process past float32's peak; at 64 it does not, at the
same speed (BENCHMARKS, issue 19, 2026-12-06).
"""

import os
import sys

_TORCH_FIRST = "torch" in sys.modules  # OpenMP already read its settings: too late to set
if not _TORCH_FIRST:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
_WAIT_POLICY = os.environ.get("OMP_WAIT_POLICY", "")
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "64")
os.environ.setdefault("LRU_CACHE_CAPACITY", "64")


def omp_wait_policy() -> str:
    """OpenMP's wait policy as this process's OpenMP runtime read it at torch's import."""
    if _TORCH_FIRST:
        return f"{_WAIT_POLICY or 'unset'} (torch was imported before fedpeft)"
    return _WAIT_POLICY or "default"


from fedpeft.errors import FedpeftError  # noqa: E402  (after the environment is set)

__version__ = "0.1.0"
__all__ = ["FedpeftError", "__version__", "omp_wait_policy"]
