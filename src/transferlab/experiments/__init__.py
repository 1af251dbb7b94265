"""Experiments: config schema, presets, work units, the runner and its run store."""

from .config import ConfigError, ExperimentConfig, apply_overrides, load_config, validate_config
from .exports import load_results
from .presets import list_presets, preset_path
from .runner import finalize, run_experiment
from .units import WorkUnit

__all__ = [
    "ConfigError",
    "ExperimentConfig",
    "apply_overrides",
    "load_config",
    "validate_config",
    "load_results",
    "list_presets",
    "preset_path",
    "finalize",
    "run_experiment",
    "WorkUnit",
]
