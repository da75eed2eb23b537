"""The server's privacy state across rounds: accountants, the clip norm, the budget.

``PrivacyLedger`` is what a round loop keeps (in its checkpointed state, as JSON) to run
DP. Per round::

    ledger.check_budget(sampled, sizes)        # before configuring: BudgetExceeded refuses
    # central:  new, info = ledger.aggregate(served, states, len(sampled), generator)
    #           (under secure aggregation: mean_delta = ledger.release_sum(sum, m, generator))
    # local/dpsgd: clients privatise; the server aggregates as usual
    metrics = ledger.record(sampled, client_metrics)   # ε so far → metrics.jsonl

Central DP: one accountant, one release (σ, q = m/N) per round; with adaptive clipping
the deltas get σ_Δ and the clip norm moves (``adaptive``). Local DP: one accountant per
client, a release (σ, q = 1) for every round it takes part in. DP-SGD: one accountant per
client, its reported steps at its reported (σ, q). The reported ε is the largest over
clients (client-level guarantees hold per client).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from fedpeft.config import ExperimentConfig
from fedpeft.errors import FedpeftError
from fedpeft.privacy.accountant import Accountant, Mechanism
from fedpeft.privacy.adaptive import (
    default_count_noise,
    delta_noise_multiplier,
    next_clip_norm,
    noisy_unclipped_fraction,
)
from fedpeft.privacy.clip import add_noise, dp_fedavg
from fedpeft.privacy.plan import clients_per_round, dp_plan, dpsgd_noise
from fedpeft.types import AdapterState

_VERSION = 1


@dataclass
class PrivacyLedger:
    mode: str  # "central" | "local" | "dpsgd"
    noise_multiplier: float
    sample_rate: float  # central: m/N; local: 1; dpsgd: unused (clients report theirs)
    clip_norm: float
    delta: float
    mechanism: Mechanism
    target_epsilon: float | None = None
    adaptive: dict[str, float] = field(default_factory=dict)  # γ, η, σ_b when adaptive
    server: Accountant | None = None  # central
    clients: dict[int, Accountant] = field(default_factory=dict)  # local, dpsgd

    @classmethod
    def start(cls, cfg: ExperimentConfig, client_sizes: Sequence[int]) -> PrivacyLedger | None:
        """A fresh ledger for the configured DP (None when ``privacy.mode`` is "none")."""
        p = cfg.privacy
        if p.mode == "none":
            return None
        if p.mode == "dpsgd":
            sigma, q = dpsgd_noise(cfg, list(client_sizes)), 0.0
        else:
            plan = dp_plan(cfg)
            sigma, q = plan.noise_multiplier, plan.sample_rate
        ledger = cls(p.mode, sigma, q, p.clip_norm, p.delta, p.accountant, p.target_epsilon)
        if p.mode == "central":
            ledger.server = Accountant(p.accountant)
        if p.adaptive_clipping:
            m = clients_per_round(cfg)
            sigma_b = p.count_noise_multiplier
            sigma_b = default_count_noise(m) if sigma_b is None else sigma_b
            try:
                delta_noise_multiplier(sigma, sigma_b)
            except ValueError as e:
                raise FedpeftError(f"`privacy.adaptive_clipping`: {e}") from None
            ledger.adaptive = {"quantile": p.target_quantile, "lr": p.clip_lr, "count": sigma_b}
        return ledger

    def check_budget(
        self, sampled: Sequence[int], planned: Mapping[int, tuple[int, float]] | None = None
    ) -> None:
        """Raises ``BudgetExceeded`` if this round would take anyone past the target ε.
        ``planned``: DP-SGD (steps, sampling rate) of each sampled client (``dpsgd_release``)."""
        if self.target_epsilon is None:
            return
        sigma, delta, target = self.noise_multiplier, self.delta, self.target_epsilon
        if self.server is not None:
            self.server.ensure_budget(sigma, self.sample_rate, delta, target)
            return
        for cid in sampled:
            acc = self.clients.get(cid, Accountant(self.mechanism))
            if self.mode == "local":
                acc.ensure_budget(sigma, 1.0, delta, target)
            elif planned and cid in planned:
                steps, q = planned[cid]
                acc.ensure_budget(sigma, q, delta, target, steps)

    def aggregate(
        self,
        served: AdapterState,
        states: Sequence[AdapterState],
        sampled: int,
        generator: torch.Generator,
        frozen: tuple[str, ...] = (),
    ) -> tuple[AdapterState, dict[str, float]]:
        """Central DP-FedAvg of this round's updates (and the adaptive clip norm's step)."""
        if self.mode != "central":
            raise ValueError("only central DP aggregates at the server")
        sigma = self.noise_multiplier
        if self.adaptive:
            sigma = delta_noise_multiplier(sigma, self.adaptive["count"])
        clip = self.clip_norm
        state, report = dp_fedavg(served, states, clip, sigma, generator, sampled, frozen)
        info = {"clip_norm": clip, "clipped": float(report.clipped)}
        if self.adaptive:
            frac = noisy_unclipped_fraction(
                report.norms, clip, self.adaptive["count"], generator, sampled
            )
            q, lr = self.adaptive["quantile"], self.adaptive["lr"]
            self.clip_norm = next_clip_norm(clip, frac, q, lr)
            info["noisy_unclipped_fraction"] = frac
        return state, info

    def release_sum(
        self,
        summed: AdapterState,
        sampled: int,
        generator: torch.Generator,
        frozen: tuple[str, ...] = (),
    ) -> AdapterState:
        """Central DP on a sum of clipped deltas the server got from secure aggregation
        (clients clipped to ``clip_norm`` before masking): ``(Σ Δ̃_c + N(0, σ²S²)) / m`` —
        the noise is added once, to the sum. Float64 out."""
        if self.mode != "central" or self.adaptive:
            raise ValueError("release_sum is central DP with a fixed clip norm")
        private = {k: v for k, v in summed.items() if not any(part in k for part in frozen)}
        noisy = summed | add_noise(private, self.noise_multiplier * self.clip_norm, generator)
        return {k: v.to(torch.float64) / sampled for k, v in noisy.items()}

    def record(
        self, sampled: Sequence[int], client_metrics: Mapping[int, Mapping[str, float]]
    ) -> dict[str, float]:
        """Accounts this round's releases; returns ``{"epsilon", "delta"}`` so far (the
        largest over clients for local DP and DP-SGD)."""
        if self.server is not None:
            self.server.step(self.noise_multiplier, self.sample_rate)
            return {"epsilon": self.server.epsilon(self.delta), "delta": self.delta}
        for cid in sampled:
            acc = self.clients.setdefault(cid, Accountant(self.mechanism))
            if self.mode == "local":
                acc.step(self.noise_multiplier, 1.0)
                continue
            m = client_metrics.get(cid, {})
            if m.get("dp_steps", 0) >= 1 and m.get("dp_noise_multiplier", 0) > 0:
                acc.step(m["dp_noise_multiplier"], m["dp_sample_rate"], int(m["dp_steps"]))
        worst = max((a.epsilon(self.delta) for a in self.clients.values()), default=0.0)
        return {"epsilon": worst, "delta": self.delta}

    def to_json(self) -> dict[str, Any]:
        return {
            "version": _VERSION,
            "mode": self.mode,
            "noise_multiplier": self.noise_multiplier,
            "sample_rate": self.sample_rate,
            "clip_norm": self.clip_norm,
            "delta": self.delta,
            "mechanism": self.mechanism,
            "target_epsilon": self.target_epsilon,
            "adaptive": self.adaptive,
            "server": None if self.server is None else self.server.to_json(),
            "clients": {str(c): a.to_json() for c, a in sorted(self.clients.items())},
        }

    @classmethod
    def from_json(cls, raw: object) -> PrivacyLedger:
        """The ledger saved by ``to_json``; malformed state is a ``FedpeftError``."""
        bad = FedpeftError(
            "the saved privacy ledger is malformed; the run cannot be resumed with a "
            "trustworthy ε (start a new run)."
        )
        if not isinstance(raw, dict) or raw.get("version") != _VERSION:
            raise bad
        try:
            ledger = cls(
                str(raw["mode"]),
                float(raw["noise_multiplier"]),
                float(raw["sample_rate"]),
                float(raw["clip_norm"]),
                float(raw["delta"]),
                raw["mechanism"],
                None if raw["target_epsilon"] is None else float(raw["target_epsilon"]),
                {str(k): float(v) for k, v in dict(raw["adaptive"]).items()},
                None if raw["server"] is None else Accountant.from_json(raw["server"]),
                {int(c): Accountant.from_json(a) for c, a in dict(raw["clients"]).items()},
            )
        except (KeyError, TypeError, ValueError):
            raise bad from None
        if ledger.mode not in ("central", "local", "dpsgd") or ledger.mechanism not in (
            "rdp",
            "prv",
        ):
            raise bad
        return ledger
