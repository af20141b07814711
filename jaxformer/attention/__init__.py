"""The attention kernel API. Imports nothing from the rest of jaxformer."""
from jaxformer.attention.api import Backend, Request, attention, available_backends, register_backend
from jaxformer.attention.masks import MaskSpec

__all__ = ["attention", "available_backends", "register_backend", "Backend", "Request", "MaskSpec"]
