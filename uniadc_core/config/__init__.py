"""Typed, validated configuration parsed once from ``params.yaml``.

Each pipeline stage has one section and one frozen dataclass (``schema``). ``load_params`` checks
the whole file (``parse``): an unknown or misspelt key, a wrong type or a value outside its allowed
set raises ``ConfigError`` naming the key path (``train.batch_size``) and what is allowed.
"""

from uniadc_core.config.parse import MOVED, apply_overrides, flatten, load_params, merge_params, parse_params, set_key, to_dict
from uniadc_core.config.schema import (
    ClipConfig,
    ConfigError,
    DemoConfig,
    DiffusionConfig,
    EvaluateConfig,
    FitCadaConfig,
    FolderClass,
    FolderConfig,
    IngestConfig,
    MemoryConfig,
    MlflowConfig,
    MtdConfig,
    Params,
    PromoteConfig,
    SourceConfig,
    SynthesizeConfig,
    TimmConfig,
    TorchvisionConfig,
    TrainConfig,
)

__all__ = ["MOVED", "ClipConfig", "ConfigError", "DemoConfig", "DiffusionConfig", "EvaluateConfig", "FitCadaConfig", "FolderClass",
           "FolderConfig", "IngestConfig", "MemoryConfig", "MlflowConfig", "MtdConfig", "Params", "PromoteConfig", "SourceConfig",
           "SynthesizeConfig", "TimmConfig", "TorchvisionConfig", "TrainConfig",
           "apply_overrides", "flatten", "load_params", "merge_params", "parse_params", "set_key", "to_dict"]
