"""Models: loading, architecture adapters, tiny random models for tests."""

from .adapters import Adapter, SiteHandle, make_adapter
from .loading import EMBEDDED, ModelLoadError, load_model
from .model import Model

__all__ = ["Adapter", "SiteHandle", "make_adapter", "EMBEDDED", "ModelLoadError", "load_model", "Model"]
