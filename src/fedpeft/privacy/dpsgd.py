"""Sample-level DP-SGD inside local training, through opacus, on the PEFT parameters only.

DP-SGD (Abadi et al., 2016, "Deep Learning with Differential Privacy"): each step draws a
Poisson batch (every example independently with probability q = B/n), clips every
example's gradient of the trainable parameters to norm C and adds Gaussian noise::

    g̃ = (Σ_{i∈batch} g_i · min(1, C/‖g_i‖₂) + N(0, σ² C² I)) / B

opacus does the per-sample gradients (``GradSampleModule`` hooks, attached only to modules
that own trainable parameters, so the frozen base gets none) and the clipping and noise
(``DPOptimizer``, with a seeded generator). fedpeft adds what opacus's ``DataLoader`` path
would do with our own length-bucketed splits: the Poisson batches, a noise-only step when
a draw is empty (skipping it would reveal that the batch was empty), and the hooks'
removal afterwards (one base model is shared by every simulated client). The FedProx
term ``(μ/2)‖θ − θ⁰‖²`` does not touch data, so its gradient ``μ(θ − θ⁰)`` is added after
the noise at no privacy cost. Each step is one release (σ, q) for the accountant.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from fedpeft.data import Split
from fedpeft.errors import FedpeftError
from fedpeft.privacy.accountant import Accountant, Mechanism


@dataclass(frozen=True)
class DpSgd:
    """DP-SGD settings of a client's local training."""

    noise_multiplier: float  # σ
    max_grad_norm: float  # C, per example
    delta: float = 1e-5
    accountant: Mechanism = "rdp"

    def __post_init__(self) -> None:
        if not (self.noise_multiplier >= 0 and math.isfinite(self.noise_multiplier)):
            raise FedpeftError(
                f"DP-SGD noise multiplier should be ≥ 0, got {self.noise_multiplier}; "
                "set `privacy.noise_multiplier` or `privacy.target_epsilon`."
            )
        if not (self.max_grad_norm > 0 and math.isfinite(self.max_grad_norm)):
            raise FedpeftError(
                f"DP-SGD clip norm should be positive, got {self.max_grad_norm}; "
                "set `privacy.clip_norm`."
            )


def sample_rate(num_examples: int, batch_size: int) -> float:
    """Poisson rate q = B / n (1 when the client holds fewer than B examples)."""
    return min(1.0, batch_size / max(num_examples, 1))


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Expected batches per pass: ⌈n / B⌉ (the non-private loop's count)."""
    return max(1, -(-num_examples // batch_size))


class PrivateTraining:
    """opacus attached to ``model`` for one client's local training (see the module doc).

    Use ``optimizer`` instead of the plain optimizer and ``batches`` instead of the split's
    ``train_batches``; ``close()`` removes the hooks and returns the privacy metrics.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        config: DpSgd,
        num_examples: int,
        batch_size: int,
        seed: int,
        proximal: tuple[Sequence[torch.Tensor], float] = ((), 0.0),
    ) -> None:
        from opacus import GradSampleModule
        from opacus.optimizers import DPOptimizer

        params = [p for group in optimizer.param_groups for p in group["params"]]
        _check_samplable(model)
        # a frozen base's first adapted layer gets inputs that need no gradient: torch warns
        # that its full backward hook sees the outputs' gradients only, which is all opacus's
        # per-example gradients of that layer's own weights need; not the user's concern
        warnings.filterwarnings("ignore", "Full backward hook is firing", UserWarning)
        try:
            self.module = GradSampleModule(model, loss_reduction="mean", strict=True)
        except NotImplementedError as e:
            raise FedpeftError(
                f"DP-SGD cannot compute per-example gradients for this PEFT method ({e}); "
                "use `privacy.mode` 'central' or 'local' (client-level DP) instead."
            ) from None
        device = params[0].device
        self.config = config
        self.rate = sample_rate(num_examples, batch_size)
        self.batch_size = batch_size
        self.steps = 0
        self.optimizer = DPOptimizer(
            optimizer,
            noise_multiplier=config.noise_multiplier,
            max_grad_norm=config.max_grad_norm,
            expected_batch_size=min(batch_size, num_examples),
            generator=torch.Generator(device=device).manual_seed(seed),
        )
        self._params = params
        self._trainable = [p for p in model.parameters() if p.requires_grad]
        self._anchor, self._mu = proximal
        self.optimizer.attach_step_hook(self._after_noise)
        self._closed = False

    def probe(self, split: Split, indices: np.ndarray, device: torch.device) -> None:
        """One forward/backward on two examples (no step; the global RNG untouched): every
        trainable parameter must get per-example gradients, else a ``FedpeftError`` (hooks
        removed). opacus's hooks only record in training mode."""
        idx = indices[: min(2, len(indices))]
        was_training = self.module.training
        self.module.train()
        try:
            with torch.random.fork_rng(devices=[]):
                out = self.module(**split.collate(idx).to(device).model_inputs())
                out.loss.backward()
            names = {id(p): n for n, p in self.module._module.named_parameters()}
            bad = [names[id(p)] for p in self._trainable if _batch_rows(p) != len(idx)]
        except (RuntimeError, ValueError) as e:
            self.close()
            raise _unsupported(str(e).split("\n")[0]) from None
        finally:
            self.module.train(was_training)
        self._clear()
        if bad:
            self.close()
            raise _unsupported(f"no per-example gradient for {bad[0]!r}")

    def __enter__(self) -> PrivateTraining:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is not None:
            self.close()  # a failed local run must not leave hooks on the shared model

    def _after_noise(self, optimizer: Any) -> None:
        """Counts the release, adds the data-free proximal gradient, clears per-sample grads
        (the loop zeroes ``.grad`` only)."""
        self.steps += 1
        if self._mu > 0:
            for p, a in zip(self._params, self._anchor, strict=True):
                p.grad = p.grad + self._mu * (p.detach() - a)
        self._clear(grads=False)

    def _clear(self, grads: bool = True) -> None:
        for p in self._trainable:  # also those a strategy keeps fixed (not in the optimizer)
            if grads:
                p.grad = None
            p.grad_sample = None  # type: ignore[attr-defined]
            p.summed_grad = None  # type: ignore[attr-defined]

    def batches(self, split: Split, indices: np.ndarray, rng: np.random.Generator) -> Iterator[Any]:
        """One pass: ⌈n/B⌉ Poisson draws at rate q; an empty draw is a noise-only step."""
        for _ in range(steps_per_epoch(len(indices), self.batch_size)):
            chosen = indices[rng.random(len(indices)) < self.rate]
            if len(chosen) == 0:
                self._noise_only_step()
                continue
            yield split.collate(chosen)

    def _noise_only_step(self) -> None:
        for p in self._params:
            p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def close(self) -> dict[str, float]:
        """Removes opacus's hooks from the shared model (once); this local run's metrics."""
        if not self._closed:
            self.module.cleanup()
            self._closed = True
        metrics = {
            "dp_steps": float(self.steps),
            "dp_sample_rate": self.rate,
            "dp_noise_multiplier": self.config.noise_multiplier,
        }
        if self.steps and self.config.noise_multiplier > 0:
            acc = Accountant(self.config.accountant)
            acc.step(self.config.noise_multiplier, self.rate, self.steps)
            metrics["dp_epsilon"] = acc.epsilon(self.config.delta)
        return metrics


def _batch_rows(p: torch.Tensor) -> int:
    g = getattr(p, "grad_sample", None)
    if isinstance(g, list):
        return sum(len(x) for x in g)
    return -1 if g is None else len(g)


def _unsupported(why: str) -> FedpeftError:
    return FedpeftError(
        f"DP-SGD cannot compute per-example gradients for this PEFT method on this model "
        f"({why}); use `privacy.mode` 'central' or 'local' (client-level DP) instead."
    )


def _check_samplable(model: nn.Module) -> None:
    """Trainable parameters held directly in a ParameterDict/List (e.g. PEFT's IA3 vectors)
    are used by their parent's forward, so opacus's hooks on the container never fire."""
    for name, module in model.named_modules():
        own = [p for p in module.parameters(recurse=False) if p.requires_grad]
        if own and isinstance(module, nn.ParameterDict | nn.ParameterList):
            raise FedpeftError(
                f"DP-SGD cannot compute per-example gradients of {name!r} (parameters held in "
                "a container, outside any layer opacus can hook); use `privacy.mode` "
                "'central' or 'local' (client-level DP) with this PEFT method."
            )
