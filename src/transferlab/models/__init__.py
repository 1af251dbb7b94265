"""Models: loading, architecture adapters, tiny random models for tests."""

from ..hooks import SiteHandle
from .adapters import Adapter, make_adapter
from .embedded import EMBEDDED
from .loading import ModelLoadError, load_model
from .model import Model

__all__ = ["Adapter", "SiteHandle", "make_adapter", "EMBEDDED", "ModelLoadError", "load_model", "Model"]
