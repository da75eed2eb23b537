"""Per-client PEFT allocation: a cost model, a candidate catalogue, the utility
``U = α·R − β·C + γ·E`` under hard memory and deadline limits, and policies in a registry.

Registered policies: ``utility`` (the default), ``uniform``, ``tiered`` and the published
baselines ``uniform_fit``, ``uniform_large``, ``unconstrained``, ``flexlora``, ``hetlora``,
``fedra`` (``baselines.py``).
"""

from fedpeft.allocation import baselines as _baselines  # noqa: F401 - registers the baselines
from fedpeft.allocation import policies as _policies  # noqa: F401 - registers the policies
from fedpeft.allocation.baselines import pruned_ranks, tail_share
from fedpeft.allocation.catalogue import Candidate, build_catalogue, candidate_of, make_candidate
from fedpeft.allocation.config import make_allocation_config
from fedpeft.allocation.cost import (
    Calibration,
    Cost,
    Workload,
    client_workload,
    forward_flops,
    peak_memory,
    predict_cost,
    step_flops,
    step_seconds,
    update_bytes,
)
from fedpeft.allocation.explain import (
    allocation_rows,
    allocation_to_json,
    explain,
    format_allocations,
)
from fedpeft.allocation.gain import GainEstimator, capacity, coverage, data_scale, work_scale
from fedpeft.allocation.policies import allocate
from fedpeft.allocation.registry import (
    get_policy,
    ignores_limits,
    policy_names,
    register_policy,
)
from fedpeft.allocation.scenario import (
    client_groups,
    federation_devices,
    model_tiers,
    reference_workload,
)
from fedpeft.allocation.utility import (
    Allocation,
    AllocationProblem,
    ClientInfo,
    Evaluation,
    Terms,
    Violation,
    build_problem,
    deadline_risk,
    evaluate,
    fitted_steps,
)
from fedpeft.config import (
    AllocationConfig,
    CandidateConfig,
    CatalogueConfig,
    CostWeights,
    GainConfig,
    RelativeTier,
)
from fedpeft.config.allocation import BaselineConfig

__all__ = [
    "Allocation",
    "AllocationConfig",
    "BaselineConfig",
    "AllocationProblem",
    "Calibration",
    "Candidate",
    "CandidateConfig",
    "CatalogueConfig",
    "ClientInfo",
    "Cost",
    "CostWeights",
    "Evaluation",
    "GainConfig",
    "GainEstimator",
    "RelativeTier",
    "Terms",
    "Violation",
    "Workload",
    "allocate",
    "allocation_rows",
    "allocation_to_json",
    "build_catalogue",
    "build_problem",
    "capacity",
    "client_groups",
    "coverage",
    "deadline_risk",
    "federation_devices",
    "fitted_steps",
    "ignores_limits",
    "model_tiers",
    "pruned_ranks",
    "reference_workload",
    "tail_share",
    "work_scale",
    "candidate_of",
    "client_workload",
    "data_scale",
    "evaluate",
    "explain",
    "format_allocations",
    "forward_flops",
    "get_policy",
    "make_allocation_config",
    "make_candidate",
    "peak_memory",
    "policy_names",
    "predict_cost",
    "register_policy",
    "step_flops",
    "step_seconds",
    "update_bytes",
]
