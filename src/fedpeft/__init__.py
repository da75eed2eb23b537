"""fedpeft — FedPEFT+: federated parameter-efficient fine-tuning of foundation models.

Importing the package is cheap and never imports ``flwr``, ``opacus`` or ``matplotlib``.
It sets ``OMP_WAIT_POLICY=PASSIVE`` (unless already set) before torch loads: OpenMP then
reads it, and its idle threads sleep instead of spinning (``runtime/local/threads.py``).
"""

import os
import sys

_TORCH_FIRST = "torch" in sys.modules  # OpenMP already read its settings: too late to set
if not _TORCH_FIRST:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
_WAIT_POLICY = os.environ.get("OMP_WAIT_POLICY", "")


def omp_wait_policy() -> str:
    """OpenMP's wait policy as this process's OpenMP runtime read it at torch's import."""
    if _TORCH_FIRST:
        return f"{_WAIT_POLICY or 'unset'} (torch was imported before fedpeft)"
    return _WAIT_POLICY or "default"


from fedpeft.errors import FedpeftError  # noqa: E402  (after the environment is set)

__version__ = "0.1.0"
__all__ = ["FedpeftError", "__version__", "omp_wait_policy"]
