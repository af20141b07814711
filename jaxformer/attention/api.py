"""`attention(...)`: the single door to attention in jaxformer.

Callers describe *what* to compute (masks stay structured); a backend decides
*how*. Each backend registers a `supports(request) -> reason | None` check, so
selection, fallbacks and errors all come from one table.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxformer.attention.masks import MaskSpec
from jaxformer.attention.reference import reference_attention

log = logging.getLogger("jaxformer.attention")


@dataclasses.dataclass(frozen=True)
class Request:
  """The static features of one attention call, as backends see them."""
  platform: str
  dtype: str
  batch: int
  q_len: int  # T
  kv_len: int  # S
  num_heads: int  # N
  num_kv_heads: int  # K
  head_dim: int
  value_head_dim: int
  causal: bool = False
  window: bool = False
  window_size: tuple[int | None, int | None] | None = None  # the (left, right) values, static
  segments: bool = False
  lengths: bool = False
  bias: bool = False
  softcap: bool = False
  dropout: bool = False
  q_offset: bool = False
  q_offset_kind: str = "none"  # "none" (0), "static" (one Python/concrete value), "per_batch" (concrete [B]), "traced"
  return_lse: bool = False
  cross: bool = False  # T != S


@dataclasses.dataclass(frozen=True)
class Backend:
  """fn(q, k, v, *, mask: MaskSpec, bias, softcap, scale, dropout_rate, dropout_rng) -> (out, lse).

  `supports(request)` returns None when the backend can serve the request, else the
  reason it cannot (naming the feature). `interpretable` backends (Pallas kernels) also
  run on any platform inside `interpret_mode()`, which is how they are tested on CPU.
  """
  name: str
  fn: Callable
  supports: Callable[[Request], str | None]
  platforms: tuple[str, ...] = ("cpu", "gpu", "tpu")
  interpretable: bool = False


_BACKENDS: dict[str, Backend] = {}
# Preference order per platform for implementation=None; backends not registered are skipped.
_PREFERENCE = {
    "cpu": ("blockwise", "reference"),
    "gpu": ("cudnn", "pallas_gpu", "blockwise", "reference"),
    "tpu": ("pallas_tpu", "blockwise", "reference"),
}
_logged: set[tuple[str, str]] = set()
_interpret = [False]


@contextlib.contextmanager
def interpret_mode(enabled: bool = True) -> Iterator[None]:
  """Run Pallas backends in interpret mode (on any platform, e.g. for tests on CPU)."""
  previous, _interpret[0] = _interpret[0], enabled
  try:
    yield
  finally:
    _interpret[0] = previous


def is_interpret_mode() -> bool:
  return _interpret[0]


def register_backend(backend: Backend) -> None:
  _BACKENDS[backend.name] = backend


def available_backends() -> list[str]:
  return sorted(_BACKENDS)


register_backend(Backend("reference", reference_attention, lambda req: None))


def _log_once(name: str, reason: str) -> None:
  if (name, reason) not in _logged:
    _logged.add((name, reason))
    log.warning("attention: skipping backend %r: %s", name, reason)


def _unsupported(backend: Backend, request: Request) -> str | None:
  if request.platform not in backend.platforms and not (backend.interpretable and is_interpret_mode()):
    return f"does not run on platform {request.platform!r} (runs on {', '.join(backend.platforms)})"
  return backend.supports(request)


def _preference(request: Request) -> tuple[str, ...]:
  order = _PREFERENCE.get(request.platform, ("reference",))
  if request.q_len == 1:  # one query row (a decoding step against a KV cache): nothing to tile, XLA's einsum wins
    order = ("reference",) + tuple(name for name in order if name != "reference")
  return order


def _choose(request: Request, implementation) -> Backend:
  if isinstance(implementation, str):
    if implementation not in _BACKENDS:
      raise ValueError(f"unknown attention implementation {implementation!r}; "
                       f"available: {available_backends()}")
    backend = _BACKENDS[implementation]
    reason = _unsupported(backend, request)
    if reason:
      raise ValueError(f"attention implementation {implementation!r} cannot serve this call: {reason}. "
                       "Choose another implementation or None to pick automatically.")
    return backend
  if implementation is not None:
    unknown = [name for name in implementation if name not in _BACKENDS]
    if unknown:
      raise ValueError(f"unknown attention implementation(s) {unknown}; available: {available_backends()}")
  names = implementation if implementation is not None else _preference(request)
  reasons = {}
  for name in names:
    backend = _BACKENDS.get(name)
    if backend is None:  # not built into this install (e.g. a preference entry with no module)
      continue
    reason = _unsupported(backend, request)
    if reason is None:
      return backend
    reasons[name] = reason
    _log_once(name, reason)
  raise ValueError(f"no attention implementation in {list(names)} supports this call: {reasons}")


def _offset_kind(q_offset) -> str:
  if isinstance(q_offset, int):
    return "none" if q_offset == 0 else "static"
  try:
    values = np.asarray(q_offset)
  except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
    return "traced"
  if values.size == 0 or np.all(values == 0):
    return "none"
  return "static" if np.all(values == values.flat[0]) else "per_batch"


def check_qkv(q, k, v, name: str = "attention", causal: bool = False) -> tuple[int, int, int, int, int]:
  """The shape rules every attention function shares (GQA included; causal = self-attention, T == S).
  Returns (B, T, N, S, K)."""
  if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
    raise ValueError(f"{name} expects q [B,T,N,D], k [B,S,K,D], v [B,S,K,Dv]; "
                     f"got ranks {q.ndim}, {k.ndim}, {v.ndim}")
  B, T, N, D = q.shape
  if k.shape[0] != B or v.shape[0] != B:
    raise ValueError(f"batch sizes differ: q {q.shape}, k {k.shape}, v {v.shape}")
  if k.shape[1] != v.shape[1] or k.shape[2] != v.shape[2]:
    raise ValueError(f"k {k.shape} and v {v.shape} must agree on [B, S, K]")
  if k.shape[3] != D:
    raise ValueError(f"q head dim {D} != k head dim {k.shape[3]}")
  if k.shape[2] == 0 or N % k.shape[2]:
    raise ValueError(f"query heads N={N} must be a multiple of kv heads K={k.shape[2]}")
  if causal and T != k.shape[1]:
    raise ValueError(f"causal {name} is self-attention: needs T == S, got T={T}, S={k.shape[1]}")
  return B, T, N, k.shape[1], k.shape[2]


def _check_shapes(q, k, v, mask: MaskSpec, bias):
  B, T, N, S, _ = check_qkv(q, k, v)
  if mask.q_segment_ids is not None and (mask.q_segment_ids.shape != (B, T)
                                         or mask.kv_segment_ids.shape != (B, S)):
    raise ValueError(f"segment ids must be [B,T]={B, T} and [B,S]={B, S}; got "
                     f"{mask.q_segment_ids.shape} and {mask.kv_segment_ids.shape}")
  for name in ("q_lengths", "kv_lengths"):
    lengths = getattr(mask, name)
    if lengths is not None and lengths.shape != (B,):
      raise ValueError(f"{name} must have shape [B]={B,}; got {lengths.shape}")
  check_bias(bias, (B, N, T, S))


def check_bias(bias, shape: tuple[int, int, int, int]) -> None:
  """An additive attention bias must broadcast to [B, N, T, S] = `shape` (None: no bias)."""
  if bias is not None:
    try:
      jnp.broadcast_shapes(jnp.shape(bias), shape)
    except ValueError:
      raise ValueError(f"bias {jnp.shape(bias)} does not broadcast to [B,N,T,S]={shape}") from None


def attention(q, k, v, *, causal: bool = False, segment_ids=None, q_lengths=None, kv_lengths=None,
              window: tuple[int | None, int | None] | None = None, bias=None, softcap: float | None = None,
              scale: float | None = None, q_offset=0, dropout_rate: float = 0.0, dropout_rng=None,
              implementation: str | Sequence[str] | None = None, return_lse: bool = False):
  """Multi-head attention softmax(q kᵀ · scale + bias) v with structured masks.

  q [B,T,N,D], k [B,S,K,D], v [B,S,K,Dv]; N must be a multiple of K (GQA/MQA).
  segment_ids: [B,T] (self-attention, T == S) or a pair ([B,T], [B,S]).
  Returns out [B,T,N,Dv] in q's dtype, and lse [B,N,T] (float32) if return_lse.
  Query rows that can see no key return zeros (and lse = -inf), never NaN.
  """
  if segment_ids is not None:
    q_seg, kv_seg = segment_ids if isinstance(segment_ids, (tuple, list)) else (segment_ids, segment_ids)
    q_seg, kv_seg = jnp.asarray(q_seg), jnp.asarray(kv_seg)
  else:
    q_seg = kv_seg = None
  if window is not None and not isinstance(window, (tuple, list)):
    raise ValueError(f"window must be a (left, right) pair, got {window!r}")
  as_array = lambda x: None if x is None else jnp.asarray(x)  # noqa: E731
  mask = MaskSpec(causal=causal, window=tuple(window) if window is not None else None,
                  q_segment_ids=q_seg, kv_segment_ids=kv_seg, q_lengths=as_array(q_lengths),
                  kv_lengths=as_array(kv_lengths), q_offset=q_offset)
  _check_shapes(q, k, v, mask, bias)
  if dropout_rate > 0.0 and dropout_rng is None:
    raise ValueError("dropout_rate > 0 needs dropout_rng")
  request = Request(
      platform=jax.default_backend(), dtype=jnp.dtype(q.dtype).name, batch=q.shape[0], q_len=q.shape[1],
      kv_len=k.shape[1], num_heads=q.shape[2], num_kv_heads=k.shape[2], head_dim=q.shape[-1],
      value_head_dim=v.shape[-1], causal=causal, window=window is not None, window_size=mask.window,
      segments=q_seg is not None, lengths=q_lengths is not None or kv_lengths is not None,
      bias=bias is not None, softcap=softcap is not None, dropout=dropout_rate > 0.0,
      q_offset=not (isinstance(q_offset, int) and q_offset == 0), q_offset_kind=_offset_kind(q_offset),
      return_lse=return_lse,
      cross=q.shape[1] != k.shape[1])
  backend = _choose(request, implementation)
  scale = q.shape[-1] ** -0.5 if scale is None else scale
  out, lse = backend.fn(q, k, v, mask=mask, bias=bias, softcap=softcap, scale=scale,
                        dropout_rate=dropout_rate, dropout_rng=dropout_rng)
  return (out, lse) if return_lse else out
