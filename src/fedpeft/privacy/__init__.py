"""Privacy: client-level DP (clipping, noise, adaptive clipping), the accountant, sample-level
DP-SGD (opacus), membership-inference audits, and secure aggregation (``privacy.secagg``).

Importing this package is cheap: opacus is imported only where it is used (the accountant's
``epsilon``, DP-SGD), ``cryptography`` only by ``privacy.secagg``.
"""

from fedpeft.privacy.accountant import Accountant, BudgetExceeded, noise_for_target_epsilon
from fedpeft.privacy.adaptive import (
    default_count_noise,
    delta_noise_multiplier,
    next_clip_norm,
    noisy_unclipped_fraction,
)
from fedpeft.privacy.clip import (
    ClipReport,
    add_noise,
    clip_delta,
    delta,
    dp_fedavg,
    gaussian_noise,
    l2_norm,
    privatize_local,
)
from fedpeft.privacy.ledger import PrivacyLedger
from fedpeft.privacy.plan import (
    LINEAR_AGGREGATORS,
    DpPlan,
    check_privacy,
    check_secure_aggregator,
    clients_per_round,
    dp_plan,
    dpsgd_noise,
    dpsgd_release,
)

__all__ = [
    "LINEAR_AGGREGATORS",
    "Accountant",
    "BudgetExceeded",
    "ClipReport",
    "DpPlan",
    "PrivacyLedger",
    "add_noise",
    "check_privacy",
    "check_secure_aggregator",
    "clients_per_round",
    "clip_delta",
    "default_count_noise",
    "delta",
    "delta_noise_multiplier",
    "dp_fedavg",
    "dp_plan",
    "dpsgd_noise",
    "dpsgd_release",
    "gaussian_noise",
    "l2_norm",
    "next_clip_norm",
    "noise_for_target_epsilon",
    "noisy_unclipped_fraction",
    "privatize_local",
]
