"""Linear attention: Katharopoulos et al. 2020, "Transformers are RNNs" (arXiv:2006.16236).

Softmax similarity exp(q·k) is replaced by a kernel phi(q)·phi(k) (eq. 4), so the
attention of row i factorises (eq. 5):

    out_i = phi(q_i)ᵀ (Σ_j phi(k_j) v_jᵀ) / (phi(q_i)ᵀ Σ_j phi(k_j))

and the two sums are computed once for all rows: time and memory linear in the
sequence length. With phi(x) = elu(x) + 1 (eq. 7) the similarity is positive.
The causal form (section 3.3, eq. 8-11) keeps running sums S_i = Σ_{j≤i} phi(k_j) v_jᵀ
and z_i = Σ_{j≤i} phi(k_j) (the RNN view of section 3.4); here they advance a chunk
of rows at a time. Gradients come from JAX autodiff through a rematerialised scan,
not the hand-written backward of section 3.3.1.

Shape names: B batch, T query length, S key length, N query heads, K kv heads,
G = N // K query heads per kv head, H head dim (q, k), Hv value head dim,
M number of segments, c chunk size.
"""
from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxformer.attention.api import check_qkv

DEFAULT_CHUNK_SIZE = 64

_FEATURE_MAPS: dict[str, Callable] = {
    "elu1": lambda x: jax.nn.elu(x) + 1.0,  # the paper's eq. 7
    "relu": jax.nn.relu,
}


def _feature_map(feature_map) -> Callable:
  if callable(feature_map):
    return feature_map
  if feature_map not in _FEATURE_MAPS:
    raise ValueError(f"unknown feature_map {feature_map!r}; choose one of {sorted(_FEATURE_MAPS)} or pass a callable")
  return _FEATURE_MAPS[feature_map]


def _check_args(q, k, v, causal, segment_ids, eps, chunk_size):
  B, T, N, S, _ = check_qkv(q, k, v, "linear_attention", causal)
  if segment_ids is not None:
    if T != S:
      raise ValueError(f"segment_ids are for self-attention: needs T == S, got T={T}, S={S}")
    if tuple(segment_ids.shape) != (B, T):
      raise ValueError(f"segment_ids must have shape [B,T]={B, T}; got {tuple(segment_ids.shape)}")
    if not jnp.issubdtype(segment_ids.dtype, jnp.integer):
      raise ValueError(f"segment_ids must be integers; got dtype {segment_ids.dtype}")
  if isinstance(eps, (int, float)) and eps < 0:
    raise ValueError(f"eps must be >= 0; got {eps}")
  if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer))
                                 or chunk_size < 1):
    raise ValueError(f"chunk_size must be a positive int or None; got {chunk_size!r}")


def _num_segments(segment_ids, num_segments) -> int:
  if num_segments is not None:
    if isinstance(num_segments, bool) or not isinstance(num_segments, (int, np.integer)) or num_segments < 1:
      raise ValueError(f"num_segments must be a positive int; got {num_segments!r}")
    return int(num_segments)
  try:
    values = np.asarray(segment_ids)
  except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
    raise ValueError("segment_ids are traced (e.g. under jit), so their number cannot be read: pass "
                     "num_segments (static: ids are taken from [0, num_segments))") from None
  return max(int(values.max(initial=-1)) + 1, 1)


def _read(fq, state, norm, onehot):
  """Numerator and denominator of phi(q_t) against a state. fq [B,t,K,G,H] ->
  ([B,t,K,G,Hv], [B,t,K,G]). state [B,K,H,Hv], norm [B,K,H]; with segments
  (onehot [B,t,M]) state [B,K,M,H,Hv], norm [B,K,M,H] and each row reads its own segment's sums."""
  if onehot is None:
    return jnp.einsum("btkgh,bkhv->btkgv", fq, state), jnp.einsum("btkgh,bkh->btkg", fq, norm)
  num = jnp.einsum("btm,btkgmv->btkgv", onehot, jnp.einsum("btkgh,bkmhv->btkgmv", fq, state))
  den = jnp.einsum("btm,btkgm->btkg", onehot, jnp.einsum("btkgh,bkmh->btkgm", fq, norm))
  return num, den


def _sums(fk, v, onehot):
  """Σ_s phi(k_s) v_sᵀ [B,K,H,Hv] and Σ_s phi(k_s) [B,K,H] (per segment: [B,K,M,H,Hv], [B,K,M,H])."""
  if onehot is None:
    return jnp.einsum("bskh,bskv->bkhv", fk, v), jnp.sum(fk, axis=1)
  return jnp.einsum("bsm,bskh,bskv->bkmhv", onehot, fk, v), jnp.einsum("bsm,bskh->bkmh", onehot, fk)


def _non_causal(fq, fk, v, onehot, eps):
  state, norm = _sums(fk, v, onehot)
  num, den = _read(fq, state, norm, onehot)
  return num / (den[..., None] + eps)


def _causal_chunked(fq, fk, v, onehot, eps, c):
  """Eq. 8-11 as a scan over chunks of c rows: inside a chunk the masked quadratic
  form, across chunks the running sums (state, norm) carried by the scan."""
  B, T, K, G, H = fq.shape
  Hv = v.shape[-1]
  nc = -(-T // c)
  pad = nc * c - T  # padded rows sit after every real row, so causality keeps them out of the real outputs

  def chunks(x):  # [B,T,...] -> [nc,B,c,...]
    x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
    return jnp.moveaxis(x.reshape((B, nc, c) + x.shape[2:]), 1, 0)

  xs = (chunks(fq), chunks(fk), chunks(v), None if onehot is None else chunks(onehot))
  below = jnp.tril(jnp.ones((c, c), dtype=bool))  # [t,s]: s <= t

  @jax.checkpoint  # backward recomputes the chunk: only the carry (T/c states) is saved, never the c×c scores
  def step(carry, x):
    state, norm = carry
    fq_c, fk_c, v_c, oh_c = x
    scores = jnp.einsum("btkgh,bskh->bkgts", fq_c, fk_c)  # [B,K,G,c,c]
    visible = below[None]
    if oh_c is not None:
      visible = visible & (jnp.einsum("btm,bsm->bts", oh_c, oh_c) > 0)
    scores = jnp.where(visible[:, None, None], scores, 0.0)
    num, den = _read(fq_c, state, norm, oh_c)
    num = num + jnp.einsum("bkgts,bskv->btkgv", scores, v_c)
    den = den + jnp.moveaxis(jnp.sum(scores, axis=-1), -1, 1)  # [B,K,G,c] -> [B,c,K,G]
    d_state, d_norm = _sums(fk_c, v_c, oh_c)
    return (state + d_state, norm + d_norm), num / (den[..., None] + eps)

  M = () if onehot is None else (onehot.shape[-1],)
  init = (jnp.zeros((B, K) + M + (H, Hv), jnp.float32), jnp.zeros((B, K) + M + (H,), jnp.float32))
  _, out = lax.scan(step, init, xs)  # [nc,B,c,K,G,Hv]
  return jnp.moveaxis(out, 0, 1).reshape(B, nc * c, K, G, Hv)[:, :T]


def linear_attention(q, k, v, *, causal: bool = False, feature_map: str | Callable = "elu1", segment_ids=None,
                     num_segments: int | None = None, eps: float = 1e-6, chunk_size: int | None = None):
  """Linear attention (Katharopoulos et al. 2020, eq. 4-6; causal: section 3.3, eq. 8-11).

  q [B,T,N,H], k [B,S,K,H], v [B,S,K,Hv] (GQA/MQA: N a multiple of K) -> [B,T,N,Hv]
  in q's dtype; computed in float32 (matmul precision follows jax_default_matmul_precision).

    out_i = phi(q_i)·(Σ_j phi(k_j) v_jᵀ) / (phi(q_i)·Σ_j phi(k_j) + eps)

  with j over all keys (causal=False) or j ≤ i (causal=True, needs T == S). No
  1/sqrt(H) scale: phi(q)·phi(k) is the (unnormalised) similarity of eq. 4.

  feature_map: "elu1" (phi(x) = elu(x) + 1, the paper's eq. 7), "relu", or a
    callable applied elementwise to float32 q and k. With "relu" a row whose
    similarities are all 0 returns 0 (eps keeps it finite).
  segment_ids: [B,T] integer ids for packed sequences (self-attention, T == S),
    supported in both forms: keys of another segment contribute nothing. The sums
    are kept per segment through a one-hot over ids in [0, M), M = num_segments;
    num_segments may be omitted when segment_ids are concrete (M = max id + 1),
    and must be given under jit. Rows whose id is outside [0, M) (e.g. -1 for
    padding) see no key and return 0. Ids need not be contiguous.
  chunk_size: causal form only (ignored otherwise): rows per chunk c, default
    min(64, T); T needs not be a multiple (it is padded internally).

  Cost (B batch; per-segment sums multiply state sizes and read-out work by M):
    * non-causal: FLOPs ≈ 2·B·S·K·H·Hv (sums) + 2·B·T·N·H·(Hv + 1) (read-out),
      i.e. O((T + S)·H·Hv) per head; memory beyond inputs/outputs is the state
      O(B·K·H·Hv) (with segments also an O(B·T·N·M·Hv) read-out intermediate).
    * causal, chunked: a `lax.scan` over T/c chunks; within a chunk the masked
      quadratic form (2·B·N·c²·(H + Hv) FLOPs), across chunks the running sums
      S = Σ phi(k) vᵀ [B,K,H,Hv] and z = Σ phi(k) [B,K,H] (2·B·c·(N + K)·H·Hv).
      Total FLOPs ≈ 2·B·T·(N·c·(H + Hv) + (N + K)·H·Hv): linear in T. Forward
      memory is O(B·K·H·Hv + B·N·c²) live; under reverse-mode autodiff the scan
      saves one carry per chunk and recomputes the chunk (jax.checkpoint), so
      O(T/c·B·K·H·Hv + B·N·c²) — never the [T, H, Hv] cumulative sums.

  Raises ValueError for inconsistent shapes, an unknown feature_map, a bad
  chunk_size / eps / num_segments, causal or segment_ids with T != S, and
  traced segment_ids without num_segments.
  """
  q, k, v = jnp.asarray(q), jnp.asarray(k), jnp.asarray(v)
  if segment_ids is not None:
    segment_ids = jnp.asarray(segment_ids)
  _check_args(q, k, v, causal, segment_ids, eps, chunk_size)
  phi = _feature_map(feature_map)
  B, T, N, H = q.shape
  K, Hv = k.shape[2], v.shape[3]
  G = N // K
  fq = phi(q.astype(jnp.float32)).reshape(B, T, K, G, H)
  fk = phi(k.astype(jnp.float32))
  vf = v.astype(jnp.float32)
  onehot = None
  if segment_ids is not None:
    onehot = jax.nn.one_hot(segment_ids, _num_segments(segment_ids, num_segments), dtype=jnp.float32)  # [B,T,M]
  if T == 0 or k.shape[1] == 0:
    out = jnp.zeros((B, T, K, G, Hv), jnp.float32)
  elif causal:
    out = _causal_chunked(fq, fk, vf, onehot, eps, min(chunk_size or DEFAULT_CHUNK_SIZE, T))
  else:
    out = _non_causal(fq, fk, vf, onehot, eps)
  return out.reshape(B, T, N, Hv).astype(q.dtype)
