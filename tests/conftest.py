"""Suite-wide settings."""
import jax

if jax.default_backend() == "gpu":
  # Parity tests compare float32 kernels at ~1e-5; GPUs would otherwise run float32 matmuls in TF32.
  jax.config.update("jax_default_matmul_precision", "highest")
