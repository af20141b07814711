"""jaxformer: a JAX/Flax research codebase for attention experiments."""
__version__ = "0.1.0"
