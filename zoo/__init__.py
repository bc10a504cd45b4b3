"""zoo: self-supervised and self-improving speech, vision and multimodal models behind one registry."""
from zoo.version import __version__
from zoo import errors
from zoo.api import load, list_models, model_info
from zoo.registry import Family, get_family, list_families, register_family

__all__ = [
    "__version__", "errors", "load", "list_models", "model_info",
    "Family", "get_family", "list_families", "register_family",
]
