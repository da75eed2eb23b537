"""Frozen, validated experiment configuration."""

from fedpeft.config.loading import build_config, config_to_toml, load_config, read_toml
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
    "config_to_toml",
    "load_config",
    "read_toml",
]
