"""Per-client PEFT allocation: a cost model, a candidate catalogue, the utility
``U = α·R − β·C + γ·E`` under hard memory and deadline limits, and policies in a registry.

Registered policies: ``uniform``, ``tiered``, ``utility``.
"""

from fedpeft.allocation import policies as _policies  # noqa: F401 - registers the policies
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
from fedpeft.allocation.gain import GainEstimator, data_scale
from fedpeft.allocation.policies import allocate
from fedpeft.allocation.registry import get_policy, policy_names, register_policy
from fedpeft.allocation.utility import (
    Allocation,
    AllocationProblem,
    ClientInfo,
    Evaluation,
    Terms,
    Violation,
    build_problem,
    evaluate,
)
from fedpeft.config import (
    AllocationConfig,
    CandidateConfig,
    CatalogueConfig,
    CostWeights,
    GainConfig,
)

__all__ = [
    "Allocation",
    "AllocationConfig",
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
    "Terms",
    "Violation",
    "Workload",
    "allocate",
    "allocation_rows",
    "allocation_to_json",
    "build_catalogue",
    "build_problem",
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
