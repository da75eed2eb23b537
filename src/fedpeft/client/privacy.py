"""The client half of differential privacy: what an instruction's ``privacy`` field asks.

``local``: after training, the reply carries ``θ_served + clip(Δ, S) + N(0, σ²S²I)``
instead of ``θ_c`` (``privacy.privatize_local``; Truex et al., 2020, LDP-Fed), so the
server never sees a clean update. Keys a strategy freezes (FFA-LoRA's A) stay as served:
their Δ is 0 and they are public. ``dpsgd``: training itself is DP-SGD through opacus
(``privacy.dpsgd``), set up by ``client.train``.

The noise comes from a generator seeded by (run seed, round, client), like every random
draw here, so simulated runs are reproducible and resume exactly. That seed is known to
the server: this simulates local DP; a deployment that does not trust its server must
draw the client's noise from a secret the server does not hold (docs/privacy.md).
"""

from __future__ import annotations

from dataclasses import replace

import torch

from fedpeft.client.train import derive_seed
from fedpeft.privacy.clip import delta, privatize_local
from fedpeft.privacy.dpsgd import DpSgd
from fedpeft.privacy.settings import ClientDp
from fedpeft.types import AdapterState, ClientUpdate, TrainInstruction

_LOCAL_NOISE = 0x10CA1  # the local-DP noise stream of (seed, round, client)


def dpsgd_settings(dp: ClientDp | None) -> DpSgd | None:
    """DP-SGD's settings when the instruction asks for it."""
    if dp is None or dp.mode != "dpsgd":
        return None
    return DpSgd(dp.noise_multiplier, dp.clip_norm, dp.delta, dp.accountant)


def local_dp(
    update: ClientUpdate, served: AdapterState, dp: ClientDp, ins: TrainInstruction
) -> ClientUpdate:
    """``θ_served + clip(Δ, S) + N(0, σ²S²I)`` on the keys the client trains."""
    gen = torch.Generator().manual_seed(
        derive_seed(ins.seed, ins.round, ins.client_id, _LOCAL_NOISE)
    )
    trained = {k: v for k, v in update.state.items() if not any(p in k for p in ins.freeze)}
    d = delta(trained, {k: served[k] for k in trained})
    noisy = privatize_local(d, dp.clip_norm, dp.noise_multiplier, gen)
    state = {
        k: (served[k].to(torch.float64) + noisy[k]).to(v.dtype) if k in noisy else served[k]
        for k, v in update.state.items()
    }
    metrics = {**update.metrics, "dp_local_clipped": float(_norm(d) > dp.clip_norm)}
    return replace(update, state=state, metrics=metrics)


def _norm(d: AdapterState) -> float:
    return float(sum(v.pow(2).sum() for v in d.values()) ** 0.5)
