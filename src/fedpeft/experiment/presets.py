"""The proposal's baselines and ablations, by name: each is a set of config keys (what a
run of it sets on top of the experiment's base and grid), its source, and the role the
report gives it. ``[variants]`` in an experiment file picks them by name, changes their
keys, or builds new variants on them.

A baseline with ``stages`` is several runs in sequence, each starting from the one before
(SLoRA: a sparse stage, then LoRA from the SVD of its update); the results table joins
their rounds into one curve.

Roles (``report.outcomes``): ``full`` (full fine-tuning, the communication and cost
reference), ``peft`` (an existing federated PEFT method, what the non-IID gain is measured
against), ``centralised`` (one client with every example), ``proposed`` (this system),
``ablation`` (a part of it removed or swapped), ``personal`` (personalisation: clients
keep part of the module; outcome 4 is computed for ``experiment.personalised``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from fedpeft.errors import FedpeftError

Role = Literal["full", "peft", "centralised", "proposed", "ablation", "personal", "other"]


@dataclass(frozen=True)
class Stage:
    """One run of a staged baseline: its share of the rounds and its config keys; a later
    stage's ``from_previous`` key is set to the previous stage's run folder."""

    fraction: float
    keys: dict[str, Any]
    from_previous: str | None = None


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    keys: dict[str, Any]
    role: Role = "peft"
    cite: str = ""
    stages: tuple[Stage, ...] = ()
    needs: str = ""  # what must exist in this build for the preset to run (checked up front)
    masks: frozenset[str] = frozenset()  # keys that mean nothing for it (dropped, not applied)


# One place for the learning rates per method family: the ones BENCHMARKS.md's method
# table used on MiniLM (not tuned per baseline).
LR = {"lora": 3e-3, "full": 5e-5, "bitfit": 3e-3, "houlsby": 3e-3, "prompt": 3e-2, "sparse": 1e-3}
LORA = {"peft.method": "lora", "client.lr": LR["lora"]}
# clients scored on a held-out fifth of their data, beside the local-only and fully
# personalised baselines (each client's whole PEFT module fine-tuned from the global)
SCORED = {"data.client_test_fraction": 0.2, "personalization.baselines": True}
PLUS = {**LORA, "server.aggregator": "exact_lora_svd"}  # the proposed aggregation
# the partition keys the centralised reference overrides (so the split axes do not apply)
ONE_CLIENT = {
    "data.num_clients": 1,
    "data.partition": "iid",
    "data.alpha": 0.5,
    "data.classes_per_client": 1,
    "server.fraction": 1.0,
    "server.min_clients": 1,
}

_PRESETS = [
    Preset(
        "fedavg_full",
        "FedAvg of full fine-tuning: every parameter trains and travels",
        {"peft.method": "full", "client.lr": LR["full"], "server.aggregator": "fedavg"},
        role="full",
        cite="McMahan et al., 2017",
    ),
    Preset(
        "fedavg_lora",
        "FedAvg of LoRA r=8 on query/value (A and B averaged separately)",
        {**LORA, "server.aggregator": "fedavg"},
        cite="Hu et al., 2021; McMahan et al., 2017",
    ),
    Preset(
        "fedprox_lora",
        "FedProx (μ = 0.01) on LoRA",
        {**LORA, "client.proximal_mu": 0.01},
        cite="Li et al., 2020",
    ),
    Preset(
        "fedpeft_bias",
        "FedPEFT, bias tuning: BitFit of the frozen backbone + head, FedAvg",
        {"peft.method": "bitfit", "client.lr": LR["bitfit"]},
        cite="Sun et al., 2022",
    ),
    Preset(
        "fedpeft_adapter",
        "FedPEFT, adapter tuning: Houlsby adapters (size 64) + head, FedAvg",
        {"peft.method": "houlsby", "client.lr": LR["houlsby"]},
        cite="Sun et al., 2022",
    ),
    Preset(
        "fedpeft_prompt",
        "FedPEFT, prompt tuning: 20 soft prompt tokens + head, FedAvg",
        {"peft.method": "prompt", "client.lr": LR["prompt"]},
        cite="Sun et al., 2022",
    ),
    Preset(
        "slora",
        "SLoRA: sparse fine-tuning on a 1 % random mask for the first quarter of the rounds, "
        "then LoRA from the SVD of that update",
        {},
        cite="Babakniya et al., 2023",
        stages=(
            Stage(
                0.25,
                {
                    "peft.method": "sparse",
                    "peft.density": 0.01,
                    "peft.target_modules": ["query", "value"],
                    "client.lr": LR["sparse"],
                },
            ),
            Stage(0.75, {**LORA, "peft.method": "slora"}, from_previous="peft.init_from"),
        ),
    ),
    Preset(
        "federa",
        "FeDeRA: LoRA with A and B from the SVD of W₀ (residual frozen), FedAvg",
        {**LORA, "peft.method": "federa"},
        cite="Yan et al., 2024",
    ),
    Preset(
        "ffa_lora",
        "FFA-LoRA: A frozen at its random init, only B trained and averaged",
        {**LORA, "server.aggregator": "ffa_lora"},
        cite="Sun et al., 2024",
    ),
    Preset(
        "flora",
        "FLoRA: each round the stacked modules' exact product Σ p_c B_c A_c is merged into the "
        "model and the LoRA restarts (B = 0, a fresh A); the merged sum goes down dense",
        {**LORA, "peft.method": "flora", "server.aggregator": "flora"},
        cite="Wang et al., 2024",
    ),
    Preset(
        "flexlora",
        "FlexLoRA: the full-size product averaged and re-factored per client rank",
        {**LORA, "server.aggregator": "flexlora"},
        cite="Bai et al., 2024",
        needs="aggregator:flexlora",
    ),
    Preset(
        "hetlora",
        "HetLoRA: ranks zero-padded, clients weighted by n_c·‖B_c A_c‖",
        {**LORA, "server.aggregator": "hetlora"},
        cite="Cho et al., 2024",
    ),
    Preset(
        "fedsa_lora",
        "FedSA-LoRA: A aggregated, B kept by each client (personalisation.mode = lora_b)",
        {**LORA, **SCORED, "personalization.mode": "lora_b"},
        role="personal",
        cite="Guo et al., 2025",
    ),
    Preset(
        "centralised",
        "Centralised reference: one client holding every training example, same rounds and "
        "local epochs (so the same examples seen), LoRA, on no simulated device",
        # no simulated device: one client with every example missed a mid-tier device's
        # round deadline in every round of AG News in the full study, and never trained
        {**LORA, **ONE_CLIENT, "simulation.devices": False},
        role="centralised",
        masks=frozenset({"data.min_partition_size"}),
    ),
    Preset(
        "fedpeft_plus",
        "This system's specialised aggregation: LoRA with the exact product Σ p_c B_c A_c "
        "re-factored by SVD (exact_lora_svd)",
        PLUS,
        role="proposed",
    ),
    Preset(
        "fedpeft_plus_personal",
        "This system with personalisation: each client keeps its own task head (FedPer) "
        "beside the shared LoRA; clients scored on a held-out fifth of their data against "
        "the local-only and fully personalised baselines",
        {**PLUS, **SCORED, "personalization.mode": "head"},
        role="personal",
        cite="Arivazhagan et al., 2019",
    ),
    Preset(
        "fedpeft_plus_no_personal",
        "Personalisation removed: the same runs as fedpeft_plus_personal with nothing kept "
        "local, the global scored on each client's held-out data",
        {**PLUS, **SCORED},
        role="ablation",
    ),
    Preset(
        "fedpeft_plus_adaptive",
        "This system with adaptive allocation: per-client PEFT configurations by the utility "
        "policy on simulated mixed-tier devices",
        {
            **LORA,
            "allocation.enabled": True,
            "allocation.policy": "utility",
            "simulation.devices": True,
        },
        role="ablation",
    ),
]
PRESETS: dict[str, Preset] = {p.name: p for p in _PRESETS}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise FedpeftError(
            f"`preset` {name!r} is not a known baseline; expected one of: {', '.join(PRESETS)} "
            '(or `preset = "none"` for a variant built from config keys alone).'
        )
    return PRESETS[name]
