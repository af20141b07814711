"""Suite-wide settings."""
import os

# 8 simulated CPU devices for the sharding tests (must be set before JAX starts; other tests use device 0).
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
# The 8 devices share 2 cores: when another process loads them, one device can reach a collective (an all-reduce of
# a data-parallel step) long after the others, and XLA:CPU aborts the process (SIGABRT, "Fatal Python error:
# Aborted") past its rendezvous timeout. Seen with a training job running beside the suite; a longer limit is harmless.
if "xla_cpu_collective_call_terminate_timeout_seconds" not in os.environ["XLA_FLAGS"]:
  os.environ["XLA_FLAGS"] += " --xla_cpu_collective_call_terminate_timeout_seconds=1200"

import jax  # noqa: E402

if jax.default_backend() == "gpu":
  # Parity tests compare float32 kernels at ~1e-5; GPUs would otherwise run float32 matmuls in TF32.
  jax.config.update("jax_default_matmul_precision", "highest")
