"""Frozen, validated experiment configuration."""

from fedpeft.config.allocation import (
    AllocationConfig,
    BaselineConfig,
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
from fedpeft.config.personal import PersonalizationConfig
from fedpeft.config.profiles import ProfilesConfig, RelativeTier
from fedpeft.config.schema import (
    ClientConfig,
    CompressionConfig,
    DataConfig,
    EvalConfig,
    ExperimentConfig,
    ModelConfig,
    PeftConfig,
    PrivacyConfig,
    RunConfig,
    ServerConfig,
    SimulationConfig,
)

__all__ = [
    "AllocationConfig",
    "BaselineConfig",
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
    "PrivacyConfig",
    "PersonalizationConfig",
    "ProfilesConfig",
    "RelativeTier",
    "RunConfig",
    "ServerConfig",
    "build_config",
    "config_fingerprint",
    "config_to_toml",
    "load_config",
    "read_toml",
]
