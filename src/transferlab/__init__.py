"""transferlab: activation-patching behavior-transfer experiments on HF causal LMs."""

from . import metrics as metrics  # subpackages users reach as tl.metrics, tl.stats
from . import stats as stats
from .engine import Activations, Applied, Generation, apply, capture, generate
from .interventions import Ablate, HeadPatch, KVSplice, Noise, Patch, Plan, Steer
from .models import Model, ModelLoadError, load_model
from .sites import HookPoint, SiteError

__version__ = "0.1.0"

__all__ = [
    "Generation",
    "generate",
    "Applied",
    "apply",
    "Ablate",
    "HeadPatch",
    "KVSplice",
    "Noise",
    "Patch",
    "Plan",
    "Steer",
    "Activations",
    "capture",
    "Model",
    "ModelLoadError",
    "load_model",
    "HookPoint",
    "SiteError",
    "__version__",
]
