"""R, the expected gain of a candidate for a client: a prior per method, updated online.

Observed validation gains ``g`` (e.g. the change in accuracy a round brought) are mapped to
``y = clip(½ + g/(2·g_s), 0, 1)`` — no change is ½, a gain of ``g_s`` or more is 1, a loss
of ``g_s`` or more is 0 — and averaged with the prior as a Bayesian mean with a prior
count ``n₀`` (the posterior mean of a Beta prior with ``n₀`` pseudo-observations)::

    r̂_c = (n₀·μ₀(method_c) + Σᵢ yᵢ) / (n₀ + n_c)

with ``μ₀`` the method's own ``MethodSpec.gain_prior`` unless ``gain.prior`` overrides it,
so the prior fades as a candidate collects ``n_c`` observations. The client's data then
scales it: ``R(c, p) = r̂_c · d(p)`` with ``d(p)`` from ``data_scale``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from fedpeft.allocation.catalogue import Candidate
from fedpeft.allocation.cost import check
from fedpeft.config import GainConfig
from fedpeft.data.partition import DataProfile

Unit = float  # a number in [0, 1]


def normalised_gain(gain: float, scale: float) -> Unit:
    """``y = clip(½ + g/(2·g_s), 0, 1)``."""
    return min(1.0, max(0.0, 0.5 + gain / (2.0 * scale)))


@dataclass(frozen=True)
class GainEstimator:
    """Per-candidate posterior means; ``update`` returns a new estimator (inputs unchanged)."""

    config: GainConfig = field(default_factory=GainConfig)
    sums: dict[str, float] = field(default_factory=dict)  # candidate name → Σ y
    counts: dict[str, int] = field(default_factory=dict)  # candidate name → n

    def prior(self, candidate: Candidate) -> Unit:
        """``μ₀``: the configured override, else the method's own prior, else the default."""
        if candidate.method in self.config.prior:
            return self.config.prior[candidate.method]
        own = candidate.spec.gain_prior
        return self.config.default_prior if own is None else own

    def mean(self, candidate: Candidate) -> Unit:
        """``r̂_c = (n₀·μ₀ + Σy) / (n₀ + n_c)``."""
        n0, name = self.config.prior_count, candidate.name
        total = n0 * self.prior(candidate) + self.sums.get(name, 0.0)
        return total / (n0 + self.counts.get(name, 0))

    def update(self, candidate: Candidate, gain: float) -> GainEstimator:
        """The estimator after observing validation gain ``gain`` for ``candidate``."""
        check("gain", math.isfinite(gain), "a finite number", gain)
        y = normalised_gain(gain, self.config.gain_scale)
        name = candidate.name
        sums = self.sums | {name: self.sums.get(name, 0.0) + y}
        counts = self.counts | {name: self.counts.get(name, 0) + 1}
        return GainEstimator(self.config, sums, counts)

    def to_json(self) -> dict[str, object]:
        """State for a checkpoint; ``from_json`` restores it."""
        return {"config": self.config.model_dump(), "sums": self.sums, "counts": self.counts}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> GainEstimator:
        config = GainConfig.model_validate(raw.get("config", {}))
        return cls(config, dict(raw.get("sums", {})), dict(raw.get("counts", {})))


def data_scale(data: DataProfile | None, half_examples: int = 64) -> Unit:
    """``d(p) = n/(n + n_½) · (½ + ½·H/log₂K)``: a client with more examples, and more
    balanced labels (entropy ``H`` in bits over ``K`` classes), can turn a candidate's
    capacity into more gain; one class or few examples gain little. ``None``: 1."""
    if data is None:
        return 1.0
    size = data.num_examples / (data.num_examples + half_examples)
    k = len(data.label_histogram)
    balance = min(1.0, data.label_entropy / math.log2(k)) if k > 1 else 1.0
    return size * (0.5 + 0.5 * balance)
