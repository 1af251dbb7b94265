"""transferlab: activation-patching behavior-transfer experiments on HF causal LMs."""

from .capture import Activations, capture
from .models import Model, ModelLoadError, load_model
from .sites import HookPoint, SiteError
from . import metrics, stats  # noqa: E402  (subpackages users reach as tl.metrics, tl.stats)

__version__ = "0.1.0"

from .generation import Generation, generate
from .interventions import Ablate, HeadPatch, KVSplice, Noise, Patch, Plan, Steer

__all__ = ["Generation", "generate", "Ablate", "HeadPatch", "KVSplice", "Noise", "Patch", "Plan", "Steer", "Activations", "capture", "Model", "ModelLoadError", "load_model", "HookPoint", "SiteError", "__version__"]
