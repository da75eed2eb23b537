"""fedpeft — FedPEFT+: federated parameter-efficient fine-tuning of foundation models.

Importing the package is cheap and never imports ``flwr``, ``opacus`` or ``matplotlib``.
"""

from fedpeft.errors import FedpeftError

__version__ = "0.1.0"
__all__ = ["FedpeftError", "__version__"]
