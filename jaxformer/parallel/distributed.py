"""Multi-host start-up: `jax.distributed.initialize` from the config or the environment.

Every process runs the same command; JAX then sees all devices of all hosts as one
`jax.devices()` list and each process feeds its own rows of every batch.

  config.distributed.coordinator_address  "host:port" of process 0 (or $JAX_COORDINATOR_ADDRESS)
  config.distributed.num_processes        (or $JAX_NUM_PROCESSES)
  config.distributed.process_id           (or $JAX_PROCESS_ID)
  config.distributed.initialize           True: let JAX detect the cluster (Cloud TPU pod slices,
                                          SLURM, Open MPI, Kubernetes) with no addresses given
"""
from __future__ import annotations

import logging
import os

import jax

log = logging.getLogger("jaxformer.parallel")


def initialize_distributed(dist_cfg=None) -> bool:
  """Join the process group when the config or the environment asks for it; returns whether it did.
  Must run before anything touches a JAX device."""
  cfg = dist_cfg.to_dict() if hasattr(dist_cfg, "to_dict") else dict(dist_cfg or {})
  unknown = set(cfg) - {"coordinator_address", "num_processes", "process_id", "initialize"}
  if unknown:
    raise ValueError(f"unknown distributed settings {sorted(unknown)}; known: coordinator_address, num_processes, "
                     "process_id, initialize")
  address = cfg.get("coordinator_address") or os.environ.get("JAX_COORDINATOR_ADDRESS", "")
  num = int(cfg.get("num_processes") or os.environ.get("JAX_NUM_PROCESSES", 0))
  pid = cfg.get("process_id")
  pid = int(os.environ.get("JAX_PROCESS_ID", -1)) if pid is None or pid < 0 else int(pid)
  if not (address or cfg.get("initialize")):
    return False
  if jax.distributed.is_initialized():
    return True
  if address and (num <= 0 or pid < 0):
    raise ValueError(f"distributed coordinator {address!r} given without the process count and this process's "
                     "id: set distributed.num_processes and distributed.process_id (or $JAX_NUM_PROCESSES and "
                     "$JAX_PROCESS_ID)")
  try:  # CPU processes talk through gloo (GPUs and TPUs bring their own collectives)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  except (AttributeError, ValueError):
    pass
  kwargs = dict(coordinator_address=address, num_processes=num, process_id=pid) if address else {}
  jax.distributed.initialize(**kwargs)
  log.info("process %d of %d; %d local / %d global devices", jax.process_index(), jax.process_count(),
           jax.local_device_count(), jax.device_count())
  return True


def sync(name: str) -> None:
  """A barrier across processes (a no-op with one): e.g. after process 0 wrote a file the others read."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def is_main_process() -> bool:
  """Only process 0 writes logs, metrics and results."""
  return jax.process_index() == 0
