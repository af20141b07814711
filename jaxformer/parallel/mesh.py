"""Device meshes, the logical-axis rules table, and placing arrays on a mesh.

jaxformer shards with plain `jax.jit` + `NamedSharding` over a `Mesh` with four
named axes (the GSPMD recipe of Flax's lm1b example and MaxText):

  data      batch rows; parameters replicated (data parallelism)
  fsdp      batch rows too, and parameters / optimizer state split along
            their `embed` dimension (ZeRO-3 / fully sharded data parallelism)
  sequence  the length axis of activations (ring attention, `parallel.ring`)
  tensor    heads, MLP hidden units and the vocabulary (Megatron tensor parallelism)

Modules name the axes of their parameters and activations (`vocab`, `embed`,
`heads`, `kv_heads`, `kv`, `mlp`, `batch`, `length`); `RULES` maps those names to
mesh axes, and nothing else in the library mentions devices. A parameter whose
dimension does not divide by its mesh axes stays replicated along them (logged).
"""
from __future__ import annotations

import logging
import math
from collections.abc import Mapping

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

log = logging.getLogger("jaxformer.parallel")

AXES = ("data", "fsdp", "sequence", "tensor")
BATCH_AXES = ("data", "fsdp")

# Logical axis name -> mesh axes. Flax applies the rules in order and uses a mesh axis at most once
# per array, so activations [batch, length, embed] shard their rows over data+fsdp and keep `embed`
# whole, while a weight [embed, mlp] puts `embed` on fsdp (the FSDP split) and `mlp` on tensor.
RULES = (
    ("batch", BATCH_AXES),
    ("length", "sequence"),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("kv", None),
)


class MeshError(ValueError):
  """A mesh that the devices or the batch cannot form; the message says which setting to change."""


def mesh_sizes(sizes: Mapping[str, int] | None, num_devices: int) -> dict[str, int]:
  """Resolve the config's axis sizes (one may be -1: the devices left over) for `num_devices`."""
  sizes = dict(sizes or {"data": -1})
  unknown = set(sizes) - set(AXES)
  if unknown:
    raise MeshError(f"unknown mesh axes {sorted(unknown)}; the axes are {AXES}")
  sizes = {a: int(sizes.get(a, 1)) for a in AXES}
  free = [a for a, n in sizes.items() if n == -1]
  if len(free) > 1 or any(n == 0 or n < -1 for n in sizes.values()):
    raise MeshError(f"mesh sizes {sizes}: each must be a positive integer, at most one -1 (the rest)")
  fixed = math.prod(n for n in sizes.values() if n != -1)
  if free:
    if num_devices % fixed:
      raise MeshError(f"mesh {sizes} cannot use {num_devices} devices: the fixed axes multiply to {fixed}, "
                      f"which does not divide {num_devices}")
    sizes[free[0]] = num_devices // fixed
  elif fixed != num_devices:
    raise MeshError(f"mesh {sizes} needs {fixed} devices but {num_devices} are present; "
                    f"set one axis to -1 to take the rest (e.g. --config.mesh.data=-1)")
  return sizes


def make_mesh(sizes: Mapping[str, int] | None = None, devices=None) -> Mesh:
  """A mesh with axes `AXES`, all of type Auto (jax 0.10's `jax.make_mesh` would make them Explicit,
  which turns ordinary sharding constraints into errors). Devices are ordered by (process, id), so
  each process owns a contiguous block of the batch rows."""
  devices = sorted(devices if devices is not None else jax.devices(), key=lambda d: (d.process_index, d.id))
  shape = mesh_sizes(sizes, len(devices))
  grid = np.array(devices, dtype=object).reshape([shape[a] for a in AXES])
  return Mesh(grid, AXES, axis_types=(AxisType.Auto,) * len(AXES))


def batch_shards(mesh: Mesh) -> int:
  """How many ways the batch rows are split."""
  return math.prod(mesh.shape[a] for a in BATCH_AXES)


def check_batch(mesh: Mesh, batch_size: int | None, grad_accum: int = 1, seq_len: int | None = None) -> None:
  """Fail before compilation when the batch cannot be split over the mesh (batch_size None: the rows
  vary per batch, as with length bucketing, and are padded to fit)."""
  shards = batch_shards(mesh)
  if shards % jax.process_count():
    raise MeshError(f"data x fsdp = {shards} does not split over {jax.process_count()} processes: each process "
                    "feeds its own block of batch rows, so put the `tensor` / `sequence` axes within a host "
                    "and give data x fsdp a multiple of the process count")
  n = mesh.shape["sequence"]
  if seq_len is not None and seq_len % n:
    raise MeshError(f"sequence length {seq_len} does not split over mesh.sequence={n}")
  if batch_size is None:
    return
  if batch_size % grad_accum or (batch_size // grad_accum) % shards:
    raise MeshError(f"train.batch_size={batch_size} (with train.grad_accum={grad_accum}) does not split over "
                    f"data x fsdp = {shards} devices: each micro-batch of {batch_size // max(grad_accum, 1)} rows "
                    f"must be a multiple of {shards}")


def spec_for(mesh: Mesh, names, shape) -> P:
  """The mesh PartitionSpec of an array with logical axis `names`, dropping (with a log) mesh axes
  that do not divide the dimension and axes of size 1."""
  from flax.linen import logical_to_mesh_axes

  spec = logical_to_mesh_axes(tuple(names), RULES) if names is not None else P()
  out = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    axes = tuple(a for a in ((axes,) if isinstance(axes, str) else (axes or ())) if mesh.shape[a] > 1)
    if axes and dim % math.prod(mesh.shape[a] for a in axes):
      _log_once(f"a dimension of size {dim} (logical {names}) does not divide over mesh axes {axes}: kept whole")
      axes = ()
    out.append(axes[0] if len(axes) == 1 else (axes or None))
  return P(*out)


def tree_shardings(mesh: Mesh, logical_specs, abstract_tree):
  """NamedShardings for a tree of arrays whose logical names are the PartitionSpec tree `logical_specs`
  (as returned with the parameters by `train.step.init_params`)."""
  return jax.tree.map(lambda names, x: NamedSharding(mesh, spec_for(mesh, names, x.shape)),
                      logical_specs, abstract_tree, is_leaf=lambda n: isinstance(n, P) or n is None)


def state_shardings(mesh: Mesh, abstract_state, param_shardings, abstract_params):
  """Shardings for a train state: every leaf that mirrors a parameter (the params themselves, Adam's
  moments, averaging sums...) gets that parameter's sharding, found by the longest matching path
  suffix and equal shape; everything else (step, counts, RNG, factored statistics) is replicated.
  """
  flat = jax.tree_util.tree_flatten_with_path(param_shardings)[0]
  by_path = {path_key(p): (s, x.shape) for (p, s), x in zip(flat, jax.tree.leaves(abstract_params))}
  replicated = NamedSharding(mesh, P())

  def pick(path, leaf):
    key = path_key(path)
    for i in range(len(key)):
      if key[i:] in by_path:
        sharding, shape = by_path[key[i:]]
        return sharding if tuple(shape) == tuple(leaf.shape) else replicated
    return replicated

  return jax.tree_util.tree_map_with_path(pick, abstract_state)


def path_key(path) -> tuple[str, ...]:
  """A pytree key path as plain names (dict keys, attribute names, indices), comparable across trees
  of different node types (a TrainState and the dicts orbax reads back)."""
  return tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def batch_spec(mesh: Mesh, ndim: int) -> P:
  """[B, T, ...] batches: rows over data x fsdp, the length axis over `sequence`."""
  rows = tuple(a for a in BATCH_AXES if mesh.shape[a] > 1) or None
  if ndim == 1:
    return P(rows)
  return P(rows, "sequence" if mesh.shape["sequence"] > 1 else None)


def shard_batch(mesh: Mesh, batch: dict) -> dict:
  """Place this process's rows of a global batch onto the mesh as global arrays."""
  def put(x):
    sharding = NamedSharding(mesh, batch_spec(mesh, np.ndim(x)))
    if jax.process_count() == 1:
      return jax.device_put(x, sharding)
    return jax.make_array_from_process_local_data(sharding, np.asarray(x))
  return {k: put(v) for k, v in batch.items()}


def common_shape(mesh: Mesh, batch: dict, multiple: int = 1) -> dict:
  """Length-bucketed batches vary in shape: pad rows (all padding, so weight 0) up to a multiple of this
  process's batch shards (times `multiple`, e.g. the gradient-accumulation steps) and, with several
  processes, every array to the largest shape any process built for this step (one small host
  all-gather), so the global batch is well formed whatever each process read."""
  step = max(1, batch_shards(mesh) // jax.process_count()) * multiple
  keys = sorted(batch)
  shapes = np.array([(batch[k].shape + (1,))[:2] for k in keys])  # [keys, 2]: rows, length (1 for [B] arrays)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    shapes = np.max(multihost_utils.process_allgather(shapes), axis=0)
  shapes[:, 0] = -(-shapes[:, 0] // step) * step
  out = {}
  for k, shape in zip(keys, shapes):
    x = batch[k]
    pad = [(0, int(n) - d) for n, d in zip(shape[:x.ndim], x.shape[:2])] + [(0, 0)] * (x.ndim - 2)
    out[k] = np.pad(x, pad)
  return out


def put_global_batch(mesh: Mesh, batch: dict) -> dict:
  """A batch that every process holds whole (evaluation batches): rows split over the mesh when they
  divide, else replicated."""
  def put(x):
    x = np.asarray(x)
    spec = batch_spec(mesh, x.ndim)
    if x.shape[0] % batch_shards(mesh) or (x.ndim > 1 and x.shape[1] % mesh.shape["sequence"]):
      spec = P()
    return jax.make_array_from_callback(x.shape, NamedSharding(mesh, spec), lambda index: x[index])
  return {k: put(v) for k, v in batch.items()}


_logged: set[str] = set()


def _log_once(message: str) -> None:
  if message not in _logged:
    _logged.add(message)
    log.warning(message)
