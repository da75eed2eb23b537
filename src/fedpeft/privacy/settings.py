"""What a client is told to do for privacy: the ``privacy`` field of its instruction.

The server decides σ (from ``privacy.noise_multiplier`` or ``privacy.target_epsilon``, kept in
its ``PrivacyLedger``) and sends it with S to every client of a client-side mode:

* ``local`` — the client clips its update ``Δ = θ_c − θ_served`` to S and adds
  ``N(0, σ²S²I)`` before encoding (``privatize_local``; Truex et al., 2020, LDP-Fed);
* ``dpsgd`` — the client trains with sample-level DP-SGD at (σ, C = S) through opacus;
* ``central`` under secure aggregation — the client only clips Δ to S before masking (the
  server adds the noise once, to the unmasked sum; ``client/secagg.py``).

The JSON arrives in an instruction, which on Flower crosses the network: ``from_json``
checks every field and raises ``FedpeftError`` rather than trusting it.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import cast

from fedpeft.errors import FedpeftError
from fedpeft.privacy.accountant import Mechanism

CLIENT_MODES = ("local", "dpsgd", "central")


@dataclass(frozen=True)
class ClientDp:
    """A client-side DP mode and its parameters (σ, S, and DP-SGD's δ and accountant)."""

    mode: str  # "local" | "dpsgd" | "central" (clip only: secure aggregation)
    noise_multiplier: float
    clip_norm: float
    delta: float = 1e-5
    accountant: Mechanism = "rdp"

    def __post_init__(self) -> None:
        ok = (
            self.mode in CLIENT_MODES
            and _finite(self.noise_multiplier) >= 0
            and _finite(self.clip_norm) > 0
            and 0 < _finite(self.delta) < 1
            and self.accountant in ("rdp", "prv")
        )
        if not ok:
            raise FedpeftError(
                f"the instruction's privacy settings {asdict(self)} are invalid; the server "
                "must send a mode 'local', 'dpsgd' or 'central' with σ ≥ 0, S > 0, 0 < δ < 1."
            )

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ClientDp | None:
        """The settings in an instruction's ``privacy`` field (None for ``""``: no DP)."""
        if not text:
            return None
        try:
            raw = json.loads(text)
            return cls(
                str(raw["mode"]),
                float(raw["noise_multiplier"]),
                float(raw["clip_norm"]),
                float(raw["delta"]),
                cast(Mechanism, str(raw["accountant"])),
            )
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            raise FedpeftError(
                f"the instruction's privacy field {text[:80]!r} is not valid JSON settings; "
                "the server must send ClientDp.to_json()."
            ) from None


def _finite(x: float) -> float:
    return x if math.isfinite(x) else math.nan
