"""transferlab: activation-patching behavior-transfer experiments on HF causal LMs.

Importing the package is cheap: its public names (``load_model``, ``generate``,
``Plan``, ``tl.metrics``, ...) are imported on first use (PEP 562), so that
the command line starts without torch when a command needs none (``transferlab
run --server`` hands the run to a warm process). Using any of them imports the
stack it needs; a model imports the engine (its runtime) when first used
(:func:`transferlab.models.model.runtime`).
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_WHERE = {  # public name -> the module that defines it
    "Generation": ".engine",
    "generate": ".engine",
    "Applied": ".engine",
    "apply": ".engine",
    "Activations": ".engine",
    "PromptActivations": ".engine",
    "load_activations": ".engine",
    "capture": ".engine",
    "build_steering": ".engine",
    "build_steering_from_bank": ".engine",
    "load_steering": ".interventions",
    "save_steering": ".interventions",
    "Ablate": ".interventions",
    "HeadPatch": ".interventions",
    "Hook": ".interventions",
    "HookCall": ".interventions",
    "KVSplice": ".interventions",
    "Noise": ".interventions",
    "Patch": ".interventions",
    "Plan": ".interventions",
    "Steer": ".interventions",
    "Model": ".models",
    "ModelLoadError": ".models",
    "load_model": ".models",
    "load_results": ".experiments",
    "HookPoint": ".sites",
    "SiteError": ".sites",
}
_SUBPACKAGES = (  # reached as tl.metrics, tl.stats, ... (imported on first use)
    "metrics",
    "stats",
    "engine",
    "models",
    "interventions",
    "sites",
    "hooks",
    "prompts",
    "rng",
    "timings",
    "experiments",
    "report",
)

__all__ = [*_WHERE, "__version__"]


def __getattr__(name: str):
    if name in _SUBPACKAGES:
        return importlib.import_module(f".{name}", __name__)
    if name not in _WHERE:
        raise AttributeError(f"module 'transferlab' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name], __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*__all__, *_SUBPACKAGES])
