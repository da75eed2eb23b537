"""Frozen, validated experiment configuration."""

from fedpeft.config.allocation import (
    AllocationConfig,
    CandidateConfig,
    CatalogueConfig,
    CostWeights,
    GainConfig,
)
from fedpeft.config.loading import (
    build_config,
    config_fingerprint,
    config_to_toml,
    load_config,
    read_toml,
)
from fedpeft.config.schema import (
    ClientConfig,
    CompressionConfig,
    DataConfig,
    EvalConfig,
    ExperimentConfig,
    ModelConfig,
    PeftConfig,
    ProfilesConfig,
    RunConfig,
    ServerConfig,
    SimulationConfig,
)

__all__ = [
    "AllocationConfig",
    "CandidateConfig",
    "CatalogueConfig",
    "CostWeights",
    "GainConfig",
    "ClientConfig",
    "CompressionConfig",
    "DataConfig",
    "EvalConfig",
    "SimulationConfig",
    "ExperimentConfig",
    "ModelConfig",
    "PeftConfig",
    "ProfilesConfig",
    "RunConfig",
    "ServerConfig",
    "build_config",
    "config_fingerprint",
    "config_to_toml",
    "load_config",
    "read_toml",
]
