"""R, the expected gain of a candidate for a client: a prior from capacity and data, and a
correction learned from gains credited to the configurations that produced them.

The prior of candidate ``c`` is its method's prior scaled by its capacity::

    μ₀(c) = μ(method_c) · κ(c),   κ(c) = cov(c)^a · ρ(c)^b

with ``cov`` the share of the model's trainable layers it adapts (blocks, plus the task head
where one trains) and ``ρ = log₂(1+r)/log₂(1+r_max)`` its LoRA rank against the catalogue's
largest (1 for other methods). ``a`` is measured (``benchmarks/capacity_prior.py``: MiniLM
on SST-2 and AG News, ranks 4/16 × the top 1/3/6 blocks, one client holding all the data,
fitted over the LoRA points): ``a = 0.046`` — depth moved accuracy by about the noise
(±2 points) there, and what depth is worth in a federation is learned from the credited
gains below and rewarded through ``E``. The same centralised grid put rank within the noise
too (``b = 0.009``; Hu et al., 2021, Table 6: r = 1…64 within a point on GLUE), but
federated runs say otherwise (BENCHMARKS, issue 13): on SmolLM2-135M answering in words,
r = 16 learned far faster than r = 4 on the same blocks, and on MiniLM with its calibrated
head, on tier-skewed (natural) splits where `utility` and `uniform_fit` trained the same
top block and differed only in the weak tiers' rank (r = 4–8 against 16), r = 16 for all
was ahead in 9 of 11 paired runs (by 1.0–1.8 points on the mean of each setting). A prior that
makes rank nearly free lets a few bytes decide; ``b = 1`` (κ grows with ``log₂(1+r)``) makes
rank win the bytes it costs wherever the link is not the binding limit.

Each round the group's validation gain ``g`` is centred on the running mean of past gains
(``ḡ ← (1−λ)·ḡ + λ·g``), so a round that was bad for everyone (a skewed sample, one
unlucky straggler) is not blamed on the configurations that happened to train in it::

    y = clip(½ + (g − ḡ)/(2·g_s), 0, 1)

and credited to each configuration by its share ``w_c`` of the examples that produced the
update. The correction is a shrunk mean of the credited deviations, with the prior's weight
``n₀`` in rounds of full credit (a Beta-style posterior on the deviation)::

    δ_c = Σᵢ w_ic·(yᵢ − ½) / (n₀ + Σᵢ w_ic),      r̂_c = clip(μ₀(c) + δ_c, 0, 1)

A configuration that trained one client in one bad round moves by ``w·(y−½)/(n₀+w)``, a few
hundredths at most. The client's data and work then scale it:
``R(c, p, s) = r̂_c · d(p) · (s/S)^w`` with ``d(p)`` from ``data_scale`` and ``s/S`` the
share of its local steps it is asked to run (diminishing returns of local steps).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fedpeft.allocation.catalogue import Candidate
from fedpeft.allocation.cost import check
from fedpeft.config import GainConfig
from fedpeft.data.partition import DataProfile
from fedpeft.peft import Architecture, MethodSpec
from fedpeft.peft.lora import LoraSpec

Unit = float  # a number in [0, 1]


def normalised_gain(gain: float, scale: float, centre: float = 0.0) -> Unit:
    """``y = clip(½ + (g − ḡ)/(2·g_s), 0, 1)``."""
    return min(1.0, max(0.0, 0.5 + (gain - centre) / (2.0 * scale)))


def trained_blocks(arch: Architecture, spec: MethodSpec) -> int:
    """Transformer blocks with trained parameters: LoRA's adapted blocks, else every block
    from the lowest trained one up (``MethodSpec.lowest_trained_block``)."""
    if isinstance(spec, LoraSpec):
        return len({lin.layer for lin, _ in spec.targets(arch) if lin.layer is not None})
    lowest = spec.lowest_trained_block(arch)
    return 0 if lowest is None else arch.layers - lowest


def coverage(arch: Architecture, spec: MethodSpec) -> Unit:
    """``cov = (blocks + h)/(L + h)``, ``h = 1`` where a task head trains (it is a layer too)."""
    head = 1 if arch.head_params > 0 else 0
    return (trained_blocks(arch, spec) + head) / (arch.layers + head)


def capacity(
    arch: Architecture, candidates: Sequence[Candidate], cfg: GainConfig
) -> dict[str, Unit]:
    """``κ(c) = cov(c)^a · ρ(c)^b`` for every candidate, ``ρ`` against the largest LoRA rank."""
    b = cfg.rank_exponent
    ranks = [c.spec.r for c in candidates if isinstance(c.spec, LoraSpec)]
    top = math.log2(1 + max(ranks)) if ranks else 1.0
    out = {}
    for c in candidates:
        rho = math.log2(1 + c.spec.r) / top if isinstance(c.spec, LoraSpec) else 1.0
        out[c.name] = coverage(arch, c.spec) ** cfg.depth_exponent * rho**b
    return out


@dataclass(frozen=True)
class GainEstimator:
    """What the allocation has learned so far; every update returns a new estimator.

    ``sums``/``counts``: per configuration, ``Σ w·(y − ½)`` and ``Σ w``; ``mean_gain``: ``ḡ``;
    ``client_ranks``: the rank each client pruned itself to (HetLoRA's self-pruning)."""

    config: GainConfig = field(default_factory=GainConfig)
    sums: dict[str, float] = field(default_factory=dict)
    counts: dict[str, float] = field(default_factory=dict)
    mean_gain: float = 0.0
    rounds: int = 0
    client_ranks: dict[int, int] = field(default_factory=dict)

    def prior(self, candidate: Candidate) -> Unit:
        """``μ(method)``: the configured override, else the method's own, else the default."""
        if candidate.method in self.config.prior:
            return self.config.prior[candidate.method]
        own = candidate.spec.gain_prior
        return self.config.default_prior if own is None else own

    def deviation(self, candidate: Candidate) -> float:
        """``δ_c = Σ w·(y − ½) / (n₀ + Σ w)``: 0 before any credit."""
        name = candidate.name
        return self.sums.get(name, 0.0) / (self.config.prior_count + self.counts.get(name, 0.0))

    def mean(self, candidate: Candidate, capacity: Unit = 1.0) -> Unit:
        """``r̂_c = clip(μ(method)·κ(c) + δ_c, 0, 1)``."""
        return min(1.0, max(0.0, self.prior(candidate) * capacity + self.deviation(candidate)))

    def observe(self, shares: Mapping[str, float], gain: float) -> GainEstimator:
        """The estimator after a round whose group gained ``gain``, credited to each
        configuration by ``shares`` (its share of the examples; normalised here)."""
        check("gain", math.isfinite(gain), "a finite number", gain)
        total = sum(shares.values())
        check("shares", total > 0 and min(shares.values()) >= 0, "non-negative, not all 0", shares)
        y = normalised_gain(gain, self.config.gain_scale, self.mean_gain)
        sums, counts = dict(self.sums), dict(self.counts)
        for name, share in shares.items():
            w = share / total
            sums[name] = sums.get(name, 0.0) + w * (y - 0.5)
            counts[name] = counts.get(name, 0.0) + w
        lam = self.config.gain_decay
        centre = gain if self.rounds == 0 else (1 - lam) * self.mean_gain + lam * gain
        return GainEstimator(self.config, sums, counts, centre, self.rounds + 1, self.client_ranks)

    def update(self, candidate: Candidate, gain: float) -> GainEstimator:
        """``observe`` with all the credit to ``candidate``."""
        return self.observe({candidate.name: 1.0}, gain)

    def with_ranks(self, ranks: Mapping[int, int]) -> GainEstimator:
        """The estimator with clients' pruned ranks replaced by ``ranks`` where given."""
        merged = self.client_ranks | dict(ranks)
        return GainEstimator(
            self.config, self.sums, self.counts, self.mean_gain, self.rounds, merged
        )

    def to_json(self) -> dict[str, object]:
        """State for a checkpoint; ``from_json`` restores it."""
        return {
            "config": self.config.model_dump(),
            "sums": self.sums,
            "counts": self.counts,
            "mean_gain": self.mean_gain,
            "rounds": self.rounds,
            "client_ranks": {str(k): v for k, v in sorted(self.client_ranks.items())},
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> GainEstimator:
        config = GainConfig.model_validate(raw.get("config", {}))
        ranks = {int(k): int(v) for k, v in dict(raw.get("client_ranks", {})).items()}
        return cls(
            config,
            {str(k): float(v) for k, v in dict(raw.get("sums", {})).items()},
            {str(k): float(v) for k, v in dict(raw.get("counts", {})).items()},
            float(raw.get("mean_gain", 0.0)),
            int(raw.get("rounds", 0)),
            ranks,
        )


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


def work_scale(steps: int, full_steps: int, exponent: float) -> Unit:
    """``(s/S)^w``: the share of its local steps a client runs, with diminishing returns."""
    return (min(steps, full_steps) / max(1, full_steps)) ** exponent
