"""Privacy accounting through opacus's accountants (RDP or PRV), saved as JSON.

Every round of client-level DP is one subsampled Gaussian mechanism: the noise multiplier
σ and the sampling rate q = clients per round / clients. opacus composes them (RDP:
Mironov 2017, Mironov et al. 2019; PRV: Gopi et al. 2021) and converts to (ε, δ). Opacus
assumes Poisson sampling; with q = 1 (every client every round, the default) there is no
amplification to assume.

``Accountant`` wraps one of them with a JSON state (``to_json``/``from_json``: the run's
checkpoint), a budget check that refuses the round that would overspend
(``BudgetExceeded``), and ``noise_for_target_epsilon``, opacus's ``get_noise_multiplier``.
opacus is imported on first use only (``import fedpeft`` never imports it).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

from fedpeft.errors import FedpeftError

Mechanism = Literal["rdp", "prv"]
_VERSION = 1


class BudgetExceeded(FedpeftError):
    """The next private release would spend more ε than the run's budget allows."""


def _opacus_accountant(mechanism: Mechanism) -> Any:
    try:
        from opacus.accountants import create_accountant
    except ImportError:  # pragma: no cover - a dependency of fedpeft
        raise FedpeftError(
            "privacy accounting needs opacus; install it with `pip install opacus==1.6.0`."
        ) from None
    return create_accountant(mechanism=mechanism)


@dataclass
class Accountant:
    """Composition of (σ, q, steps) releases; ``epsilon(δ)`` is opacus's answer."""

    mechanism: Mechanism = "rdp"
    history: list[tuple[float, float, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.mechanism not in ("rdp", "prv"):
            raise FedpeftError(
                f"privacy accountant {self.mechanism!r} is unknown; use 'rdp' or 'prv'."
            )

    def step(self, noise_multiplier: float, sample_rate: float, steps: int = 1) -> None:
        """Records ``steps`` releases of the Gaussian mechanism (σ, q)."""
        _check_release(noise_multiplier, sample_rate, steps)
        if self.history and self.history[-1][:2] == (noise_multiplier, sample_rate):
            sigma, q, n = self.history[-1]
            self.history[-1] = (sigma, q, n + steps)
        else:
            self.history.append((float(noise_multiplier), float(sample_rate), int(steps)))

    def epsilon(self, delta: float) -> float:
        """ε spent so far at δ (0 before any release)."""
        if not self.history:
            return 0.0
        acc = _opacus_accountant(self.mechanism)
        acc.history = list(self.history)
        return float(acc.get_epsilon(delta=delta))

    def epsilon_after(
        self, noise_multiplier: float, sample_rate: float, delta: float, steps: int = 1
    ) -> float:
        """ε if ``steps`` more releases (σ, q) happened (the history is unchanged)."""
        trial = Accountant(self.mechanism, list(self.history))
        trial.step(noise_multiplier, sample_rate, steps)
        return trial.epsilon(delta)

    def ensure_budget(
        self,
        noise_multiplier: float,
        sample_rate: float,
        delta: float,
        target_epsilon: float | None,
        steps: int = 1,
    ) -> None:
        """Raises ``BudgetExceeded`` when the next release would spend more than the target."""
        if target_epsilon is None:
            return
        after = self.epsilon_after(noise_multiplier, sample_rate, delta, steps)
        if after > target_epsilon:
            raise BudgetExceeded(
                f"the next round would spend ε = {after:.3f} > `privacy.target_epsilon` "
                f"{target_epsilon:g} (δ = {delta:g}; {self.epsilon(delta):.3f} spent so far); "
                "the run stops here to keep its privacy budget."
            )

    def to_json(self) -> dict[str, Any]:
        return {
            "version": _VERSION,
            "mechanism": self.mechanism,
            "history": [list(h) for h in self.history],
        }

    @classmethod
    def from_json(cls, raw: object) -> Accountant:
        """The accountant saved by ``to_json``; anything malformed is a ``FedpeftError``."""
        bad = FedpeftError(
            "the saved privacy accountant state is malformed; the run cannot be resumed "
            "with a trustworthy ε (start a new run)."
        )
        if not isinstance(raw, dict) or raw.get("version") != _VERSION:
            raise bad
        mechanism, history = raw.get("mechanism"), raw.get("history")
        if mechanism not in ("rdp", "prv") or not isinstance(history, list):
            raise bad
        acc = cls(mechanism)
        for entry in history:
            if not (isinstance(entry, list) and len(entry) == 3 and _is_int(entry[2])):
                raise bad
            try:
                acc.step(float(entry[0]), float(entry[1]), entry[2])
            except (TypeError, ValueError):
                raise bad from None
        return acc


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_release(noise_multiplier: float, sample_rate: float, steps: int) -> None:
    if not noise_multiplier > 0:
        raise ValueError(f"noise multiplier should be > 0 to account, got {noise_multiplier}.")
    if not 0 < sample_rate <= 1:
        raise ValueError(f"sampling rate should be in (0, 1], got {sample_rate}.")
    if steps < 1:
        raise ValueError(f"steps should be ≥ 1, got {steps}.")


def noise_for_target_epsilon(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    mechanism: Mechanism = "rdp",
) -> float:
    """The smallest σ (to opacus's 0.01-ε tolerance) that spends at most ``target_epsilon``
    over ``steps`` releases at rate q (opacus's ``get_noise_multiplier``)."""
    _opacus_accountant(mechanism)  # a clear error if opacus is missing
    from opacus.accountants.utils import get_noise_multiplier

    _check_release(1.0, sample_rate, steps)
    try:
        with warnings.catch_warnings():  # the search's trial σ, not the run's: not the user's
            warnings.filterwarnings("ignore", "Optimal order is the (largest|smallest) alpha")
            return float(
                get_noise_multiplier(
                    target_epsilon=target_epsilon,
                    target_delta=delta,
                    sample_rate=sample_rate,
                    steps=steps,
                    accountant=mechanism,
                )
            )
    except ValueError as e:
        raise FedpeftError(
            f"`privacy.target_epsilon` {target_epsilon:g} at δ = {delta:g} over {steps} "
            f"releases cannot be met ({e}); raise the target or lower the rounds."
        ) from None
