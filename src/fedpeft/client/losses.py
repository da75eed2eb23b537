"""Client objectives for label skew: a client that never sees a class must not learn to
push that class's logit down for everyone.

Each rule rewrites the logits ``z`` (shape (B, C)) before the cross-entropy, from the
client's own label counts ``n_c`` (nothing leaves the client); evaluation uses the plain
logits. Classes the client has none of are the ones that suffer under skew:

- ``logit_adjust`` — logit-adjusted loss (Menon et al., 2021, "Long-tail learning via logit
  adjustment", ICLR, eq. 10; Balanced Softmax, Ren et al., 2020, at τ = 1):
  ``ℓ = CE(z + τ·log π, y)`` with π the client's label prior ``π_c = n_c / n``. The model
  then learns logits for a balanced prior; a class the client lacks (π_c = 0) leaves the
  softmax altogether (the restricted softmax of FedRS with α = 0).
- ``fedlc`` — FedLC (Zhang et al., 2022, "Federated Learning with Label Distribution Skew
  via Logits Calibration", ICML, eq. 8): ``ℓ = CE(z − τ·n_c^{−1/4}, y)``; a class with
  ``n_c = 0`` leaves the softmax as in its reference code.
- ``fedrs`` — FedRS (Li & Zhan, 2021, "FedRS: Federated Learning with Restricted Softmax for
  Label Distribution Non-IID Data", KDD, §4): ``z_c ← α·z_c`` for every class the client
  lacks, ``α = τ`` ∈ [0, 1].

Written here because no library we use ships them (they are a few lines each).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

LabelSkew = Literal["none", "logit_adjust", "fedlc", "fedrs"]
LABEL_SKEW_RULES: tuple[str, ...] = get_args(LabelSkew)

Loss = Callable[[Tensor, Tensor], Tensor]  # (logits (B, C), labels (B,)) → scalar


@dataclass(frozen=True)
class LabelSkewLoss:
    """A label-skew rule and its strength ``tau`` (τ; FedRS's α), checked when built."""

    rule: str = "none"
    tau: float = 1.0

    def __post_init__(self) -> None:
        if self.rule not in LABEL_SKEW_RULES:
            raise ValueError(
                f"`rule` should be one of {', '.join(LABEL_SKEW_RULES)}, got {self.rule!r}."
            )
        if not (np.isfinite(self.tau) and self.tau >= 0):
            raise ValueError(f"`tau` should be a non-negative number, got {self.tau}.")
        if self.rule == "fedrs" and self.tau > 1:
            raise ValueError(f"FedRS's `tau` (its α) should be in [0, 1], got {self.tau}.")

    @property
    def active(self) -> bool:
        return self.rule != "none"

    def for_client(self, labels: np.ndarray) -> Loss:
        """The loss of a client holding ``labels`` (its class ids); the number of classes is
        read from the logits (the shift and scale are built once per class count)."""
        cache: dict[int, tuple[Tensor | None, Tensor | None]] = {}

        def loss(logits: Tensor, target: Tensor) -> Tensor:
            classes = logits.shape[-1]
            if classes not in cache:
                counts = torch.from_numpy(np.bincount(labels, minlength=classes)).double()
                if len(counts) != classes:
                    raise ValueError(f"labels go up to {len(counts) - 1} but {classes} logits")
                cache[classes] = (
                    _shifts(self.rule, self.tau, counts),
                    _scales(self.rule, self.tau, counts),
                )
            shift, scale = cache[classes]
            return F.cross_entropy(calibrate(logits, shift, scale), target)

        return loss


def calibrate(logits: Tensor, shift: Tensor | None, scale: Tensor | None) -> Tensor:
    """``z·scale + shift`` per class (either may be None); −inf shifts drop a class."""
    out = logits
    if scale is not None:
        out = out * scale.to(out.dtype).to(out.device)
    if shift is not None:
        out = out + shift.to(out.dtype).to(out.device)
    return out


def _shifts(rule: str, tau: float, counts: Tensor) -> Tensor | None:
    seen = counts > 0
    if rule == "logit_adjust":
        prior = counts / counts.sum()
        return torch.where(seen, tau * prior.clamp_min(1e-300).log(), -torch.inf)
    if rule == "fedlc":
        return torch.where(seen, -tau * counts.clamp_min(1).pow(-0.25), -torch.inf)
    return None


def _scales(rule: str, tau: float, counts: Tensor) -> Tensor | None:
    if rule == "fedrs":
        return torch.where(counts > 0, 1.0, tau).double()
    return None
