"""The experiment configuration: small frozen sub-configs, validated when built.

Every field has a default, so an empty TOML file is the embedded default run:
MiniLM-L6 on SST-2, 10 clients, Dirichlet(0.5) label skew, LoRA r=8, FedAvg.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, model_validator


class _Section(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, validate_default=True, allow_inf_nan=False
    )


class RunConfig(_Section):
    name: str = Field("default", pattern=r"^[A-Za-z0-9_.-]+$", max_length=64)
    seed: int = Field(0, ge=0)
    rounds: PositiveInt = 12
    output_dir: str = "runs"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int = Field(0, ge=0, description="torch threads; 0 = one per CPU core")


class ModelConfig(_Section):
    name: str = "sentence-transformers/all-MiniLM-L6-v2"
    max_length: PositiveInt = 64
    image_size: PositiveInt | None = Field(None, description="image models: input side (px)")


class DataConfig(_Section):
    dataset: str = "sst2"
    train_file: str | None = None
    eval_file: str | None = None
    text_column: str = "text"
    label_column: str = "label"
    train_size: PositiveInt | None = Field(2000, description="seeded subset of the train split")
    eval_size: PositiveInt | None = Field(None, description="seeded subset of the eval split")
    num_clients: PositiveInt = 10
    partition: Literal["iid", "dirichlet", "pathological"] = "dirichlet"
    alpha: PositiveFloat = 0.5
    classes_per_client: PositiveInt = 1
    min_partition_size: int = Field(2, ge=1)

    @model_validator(mode="after")
    def _custom_needs_files(self) -> DataConfig:
        if self.dataset == "custom" and self.train_file is None:
            raise ValueError(
                "`data.train_file` is required when `data.dataset` is 'custom' "
                "(a CSV, TSV or JSONL file with text and label columns)"
            )
        return self


class PeftConfig(_Section):
    """``method`` plus that method's own options (e.g. ``r`` for LoRA, ``size`` for
    adapters), which the method's spec in the PEFT registry validates."""

    model_config = ConfigDict(
        extra="allow", frozen=True, validate_default=True, allow_inf_nan=False
    )
    method: str = "lora"

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class ClientConfig(_Section):
    epochs: PositiveInt = 1
    steps: PositiveInt | None = Field(None, description="if set, train this many steps instead")
    batch_size: PositiveInt = 16
    lr: PositiveFloat = 3e-3
    weight_decay: float = Field(0.0, ge=0.0)
    proximal_mu: float = Field(0.0, ge=0.0, description="FedProx term (mu/2)·||θ − θ⁰||²")


class ServerConfig(_Section):
    fraction: float = Field(1.0, gt=0.0, le=1.0, description="fraction of clients per round")
    min_clients: PositiveInt = 1
    aggregator: str = "fedavg"
    optimizer: Literal["none", "fedavgm", "fedadam", "fedyogi"] = "none"
    server_lr: PositiveFloat | None = Field(None, description="None = the optimiser's default")
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="FedAvgM")
    beta1: float = Field(0.9, ge=0.0, lt=1.0, description="FedAdam/FedYogi")
    beta2: float = Field(0.99, ge=0.0, lt=1.0, description="FedAdam/FedYogi")
    tau: PositiveFloat = Field(1e-3, description="FedAdam/FedYogi adaptivity")
    proxy_size: PositiveInt = Field(
        128, description="train examples held out as the server's proxy set (layerwise, kd_fusion)"
    )
    mode: Literal["sync", "async"] = Field("sync", description="async: run.rounds server steps")
    buffer_size: PositiveInt = Field(4, description="async: a server step per K updates (FedBuff)")
    staleness_exponent: float = Field(0.5, ge=0.0, description="async: s(τ) = (1 + τ)^−a")
    async_lr: PositiveFloat = Field(1.0, description="async: server step size η")
    max_concurrency: PositiveInt | None = Field(None, description="async: None = every client")


class ProfilesConfig(_Section):
    """Simulated devices: a tier mix (fractions or one tier name per client) over the
    declared tiers (high/mid/low) and any custom tiers from ``file`` (TOML or JSON)."""

    mix: dict[str, float] | list[str] = Field(
        default_factory=lambda: {"high": 0.3, "mid": 0.4, "low": 0.3}
    )
    file: str | None = None


class SimulationConfig(_Section):
    """In-process runtime: run every client within its ``[profiles]`` device. The thread
    cap is the device's cores (at most this machine's), the memory check and the simulated
    round time (compute from the cost model at the device's FLOP/s, plus the real payload
    bytes over its bandwidth) come from ``fedpeft.allocation``'s cost model, clients past
    ``allocation.deadline_s`` are dropped as stragglers and ``availability`` is drawn per
    round (seeded)."""

    devices: bool = False
    availability: bool = Field(True, description="per-round dropouts from device availability")
    thread_cap: bool = Field(True, description="torch threads = the device's cores")


class EvalConfig(_Section):
    batch_size: PositiveInt = 128


class ExperimentConfig(_Section):
    run: RunConfig = RunConfig()
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    peft: PeftConfig = PeftConfig()
    client: ClientConfig = ClientConfig()
    server: ServerConfig = ServerConfig()
    eval: EvalConfig = EvalConfig()
    profiles: ProfilesConfig = ProfilesConfig()
    simulation: SimulationConfig = SimulationConfig()
    allocation: dict[str, Any] = Field(
        default_factory=dict, description="validated by fedpeft.allocation (policy, α, β, γ, …)"
    )
