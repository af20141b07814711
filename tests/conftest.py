"""Suite-wide settings."""
import os

# 8 simulated CPU devices for the sharding tests (must be set before JAX starts; other tests use device 0).
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import jax  # noqa: E402

if jax.default_backend() == "gpu":
  # Parity tests compare float32 kernels at ~1e-5; GPUs would otherwise run float32 matmuls in TF32.
  jax.config.update("jax_default_matmul_precision", "highest")
