"""The attention kernel API. Imports nothing from the rest of jaxformer.

Importing a backend module registers it; `attention(implementation=None)` then
picks the first backend in the platform's preference order that supports the call.
"""
from jaxformer.attention import blockwise, cudnn, pallas_gpu, pallas_tpu  # noqa: F401  (register the backends)
from jaxformer.attention.api import (
  Backend,
  Request,
  attention,
  available_backends,
  interpret_mode,
  is_interpret_mode,
  register_backend,
)
from jaxformer.attention.masks import MaskSpec

__all__ = ["attention", "available_backends", "register_backend", "interpret_mode", "is_interpret_mode", "Backend",
           "Request", "MaskSpec"]
