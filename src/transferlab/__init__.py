"""transferlab: activation-patching behavior-transfer experiments on HF causal LMs."""

from .capture import Activations, capture
from .models import Model, ModelLoadError, load_model
from .sites import HookPoint, SiteError

__version__ = "0.1.0"

__all__ = ["Activations", "capture", "Model", "ModelLoadError", "load_model", "HookPoint", "SiteError", "__version__"]
