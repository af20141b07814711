"""Performer / FAVOR+: Choromanski et al. 2021, "Rethinking Attention with Performers" (arXiv:2009.14794).

Softmax attention softmax(q kᵀ·scale) v is approximated with positive random
features (Lemma 1, eq. 7): for w ~ N(0, I_H),

    exp(x·y) = E_w[exp(w·x − |x|²/2) · exp(w·y − |y|²/2)],

so with M projections w_1..w_M (rows of `projection`) and x' = x·scale^(1/2),

    phi(x) = exp(W x' − |x'|²/2) / sqrt(M)            [M] features, all > 0
    phi(q)·phi(k) ≈ exp(q·k·scale)                     (unbiased, Lemma 1)

and attention factorises as in linear attention (eq. 4-6):

    out_i = phi(q_i)ᵀ (Σ_j phi(k_j) v_jᵀ) / (phi(q_i)ᵀ Σ_j phi(k_j)).

Orthogonal random features (section 4, "ORFs"; Theorem 2) draw the rows of W in
blocks of H mutually orthogonal directions (QR of a Gaussian matrix) whose norms
are resampled from the chi distribution with H degrees of freedom, so each row is
still marginally N(0, I_H) (the estimator stays unbiased) while the variance drops.

Numerical stabilisation (as in the paper's code): a constant that is common to
every term of a row's numerator and denominator cancels, so the exponents are
shifted before `exp` and never overflow (all features are ≤ 1/sqrt(M)):
  * queries: each row subtracts its own max over the M features;
  * keys (non-causal): one max over all keys and features per (batch, kv head);
  * keys (causal): a row i may only depend on keys j ≤ i, so it uses the prefix
    max μ_i = max_{j≤i} max_m(exponent of k_j). Across chunks the running state
    is kept in the frame of the last processed key and rescaled by exp(μ_old − μ_new) ≤ 1
    (the online-softmax trick); inside a chunk the pair (i, j ≤ i) uses
    phi(k_j)·exp(μ_j − μ_i) with both factors ≤ 1. The frame of row i is thus
    independent of the chunk size and of later tokens (outputs are bit-identical
    when later tokens change).
The shifts are `stop_gradient`-ed (they cancel mathematically). Everything is
computed in float32; the projection W x uses `Precision.HIGHEST` because its
error is exponentiated. The output is cast to q's dtype.

The denominator is floored at `eps` (it only matters for rows whose every
kernel estimate underflows, e.g. huge-norm inputs, where such rows go to ~0).

Redrawing: the projection is an explicit argument (`random_features(key, M, H)`),
so this module holds no state. A model redraws it by passing a new key, e.g.
`jax.random.fold_in(base_key, step // redraw_every)` every `redraw_every`
training steps (the paper redraws periodically), and keeps one fixed projection
at evaluation / decoding time.

Cost (B batch, T query length, S key length, N query heads, K kv heads,
G = N // K, H head dim, Hv value head dim, M features, c chunk size):
  * features: 2·B·(T·N + S·K)·M·H FLOPs (+ exp on B·(T·N + S·K)·M values).
  * non-causal: state Σ_j phi(k_j) v_jᵀ and Σ_j phi(k_j) is B·K·M·(Hv+1) floats;
    FLOPs 2·B·S·K·M·(Hv+1) to build it + 2·B·T·N·M·(Hv+1) to read it out —
    O(T·M·Hv) instead of softmax's O(T·S·H); memory O(B·(T·N + S·K)·M + B·K·M·Hv).
  * causal (prefix sums, `lax.scan` over T/c chunks): carry B·K·M·(Hv+1) floats;
    per chunk the masked quadratic form in feature space [B,K,G,c,c] plus the
    chunk's features [B,c,(N+K),M]: memory O(B·N·c² + B·(N+K)·c·M + B·K·M·Hv) per
    chunk. FLOPs per chunk ≈ 2·B·N·c²·(M + Hv+1) (intra) + 2·B·N·c·M·(Hv+1)
    (inter) + 2·B·K·c·M·(Hv+1) (state update), i.e. O(T·(c·(M+Hv) + M·Hv)) in all.
    Reverse-mode autodiff of the scan saves the carry per chunk: O((T/c)·B·K·M·Hv).

Shape names: B batch, T query length, S key length, N query heads, K kv heads,
G = N // K query heads per kv head, H head dim (q, k), Hv value head dim,
M number of random features, c chunk size.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxformer.attention.api import check_qkv

DEFAULT_CHUNK_SIZE = 64


def _is_positive_int(x) -> bool:
  return not isinstance(x, bool) and isinstance(x, (int, np.integer)) and x >= 1


def random_features(key, num_features: int, head_dim: int, *, orthogonal: bool = True):
  """A FAVOR+ projection W [M, H] (float32) for M = num_features, H = head_dim.

  orthogonal=True (section 4, ORFs): ceil(M / H) independent blocks of H mutually
  orthogonal rows (the Q factor of the QR decomposition of an H×H Gaussian matrix,
  sign-corrected so that it is Haar-distributed); the last block is truncated to
  M mod H rows. Every row is then rescaled by an independent chi(H)-distributed
  norm (the norm of a fresh N(0, I_H) vector), so rows are marginally N(0, I_H)
  and phi(q)·phi(k) stays an unbiased estimate of exp(q·k·scale).
  orthogonal=False: i.i.d. N(0, I_H) rows (Lemma 1 as stated).

  Redraw by calling again with a new key (see the module docstring).
  """
  if not _is_positive_int(num_features):
    raise ValueError(f"num_features must be a positive int; got {num_features!r}")
  if not _is_positive_int(head_dim):
    raise ValueError(f"head_dim must be a positive int; got {head_dim!r}")
  M, H = int(num_features), int(head_dim)
  if not orthogonal:
    return jax.random.normal(key, (M, H), jnp.float32)
  block_key, norm_key = jax.random.split(key)
  num_blocks = -(-M // H)
  gaussian = jax.random.normal(block_key, (num_blocks, H, H), jnp.float32)
  q, r = jnp.linalg.qr(gaussian)  # q [nb, H, H], orthonormal columns
  signs = jnp.where(jnp.diagonal(r, axis1=-2, axis2=-1) < 0, -1.0, 1.0)
  q = q * signs[:, None, :]  # Haar measure (QR's sign convention would bias it)
  rows = jnp.swapaxes(q, -1, -2).reshape(num_blocks * H, H)[:M]  # rows of each block orthonormal
  norms = jnp.linalg.norm(jax.random.normal(norm_key, (M, H), jnp.float32), axis=-1)  # chi(H)
  return rows * norms[:, None]


def _exponents(x, projection, root_scale):
  """x [..., H] -> w_m·x' − |x'|²/2 [..., M] in float32, with x' = x·root_scale."""
  x = x.astype(jnp.float32) * root_scale
  wx = jnp.einsum("...h,mh->...m", x, projection, precision=lax.Precision.HIGHEST)
  return wx - 0.5 * jnp.sum(x * x, axis=-1, keepdims=True)


def _default_scale(head_dim, scale):
  return head_dim ** -0.5 if scale is None else scale


def positive_features(x, projection, *, scale: float | None = None):
  """The unstabilised FAVOR+ feature map phi(x) = exp(W x' − |x'|²/2) / sqrt(M) (eq. 7).

  x [..., H], projection [M, H] -> [..., M] float32, x' = x·scale^(1/2) (scale defaults
  to H^-1/2), so that E[phi(q)·phi(k)] = exp(q·k·scale). For analysis and tests:
  it can overflow for large-norm inputs; `performer_attention` uses the stabilised form.
  """
  projection = jnp.asarray(projection, jnp.float32)
  if projection.ndim != 2 or projection.shape[1] != x.shape[-1]:
    raise ValueError(f"projection must be [M, H] with H={x.shape[-1]}; got {projection.shape}")
  root = _default_scale(x.shape[-1], scale) ** 0.5
  return jnp.exp(_exponents(x, projection, root)) * projection.shape[0] ** -0.5


def _query_features(q, projection, root):
  """Row-stabilised query features: exp(a − max_m a) / sqrt(M) ≤ 1/sqrt(M)."""
  a = _exponents(q, projection, root)
  a = a - lax.stop_gradient(jnp.max(a, axis=-1, keepdims=True))
  return jnp.exp(a) * projection.shape[0] ** -0.5


def _check_args(q, k, v, projection, causal, scale, eps, chunk_size):
  check_qkv(q, k, v, "performer_attention", causal)
  H = q.shape[-1]
  if getattr(projection, "ndim", None) != 2 or projection.shape[1] != H or projection.shape[0] < 1:
    raise ValueError(f"projection must be [M, H] with M >= 1 and H={H} (from random_features(key, M, {H})); "
                     f"got shape {getattr(projection, 'shape', None)}")
  if isinstance(scale, (int, float)) and not scale > 0:
    raise ValueError(f"scale must be > 0 (positive features need scale^(1/2)); got {scale}")
  if isinstance(eps, (int, float)) and not eps > 0:
    raise ValueError(f"eps must be > 0; got {eps}")
  if chunk_size is not None and not _is_positive_int(chunk_size):
    raise ValueError(f"chunk_size must be a positive int or None; got {chunk_size!r}")


def performer_attention(q, k, v, projection, *, causal: bool = False, kv_mask=None, scale: float | None = None,
                        eps: float = 1e-6, chunk_size: int | None = None):
  """FAVOR+ attention: q [B,T,N,H], k [B,S,K,H], v [B,S,K,Hv] (GQA: N % K == 0) -> [B,T,N,Hv].

  Approximates softmax(q kᵀ·scale) v (scale defaults to H^-1/2) with the positive random
  features of `projection` [M, H] (from `random_features`; redraw it by passing a new key).
  causal=True (needs T == S) computes the causal prefix sums chunk by chunk (`lax.scan`
  over chunks of `chunk_size`, default min(T, 64)); chunk_size is ignored when not causal.
  kv_mask [B,S] (bool): keys where it is False are left out (padding); a row that sees no key returns 0.
  Packed sequences (several segments in one row) are not separated: pass their padding mask only.
  Output in q's dtype; internals in float32. Costs: see the module docstring.
  """
  _check_args(q, k, v, projection, causal, scale, eps, chunk_size)
  B, T, N, H = q.shape
  S = k.shape[1]
  if kv_mask is None:
    kv_mask = jnp.ones((B, S), bool)
  elif jnp.shape(kv_mask) != (B, S):
    raise ValueError(f"kv_mask must be [B,S]={B, S}; got {jnp.shape(kv_mask)}")
  kv_mask = jnp.asarray(kv_mask, bool)
  projection = jnp.asarray(projection, jnp.float32)
  root = _default_scale(H, scale) ** 0.5
  if causal:
    c = min(T, DEFAULT_CHUNK_SIZE if chunk_size is None else int(chunk_size))
    out = _causal(q, k, v, kv_mask, projection, root, eps, max(c, 1))
  else:
    out = _non_causal(q, k, v, kv_mask, projection, root, eps)
  return out.reshape(B, T, N, v.shape[-1]).astype(q.dtype)


def _non_causal(q, k, v, kv_mask, projection, root, eps):
  B, T, N, _ = q.shape
  K = k.shape[2]
  M = projection.shape[0]
  qf = _query_features(q, projection, root).reshape(B, T, K, N // K, M)
  a = _exponents(k, projection, root)  # [B,S,K,M]
  keep = kv_mask[:, :, None, None]
  frame = lax.stop_gradient(jnp.max(jnp.where(keep, a, -jnp.inf), axis=(1, 3), keepdims=True))  # [B,1,K,1]
  frame = jnp.where(jnp.isfinite(frame), frame, 0.0)  # no key at all
  kf = jnp.where(keep, jnp.exp(jnp.where(keep, a, frame) - frame), 0.0) * M ** -0.5
  state = jnp.einsum("bskm,bskd->bkmd", kf, v.astype(jnp.float32))  # [B,K,M,Hv]
  z = jnp.sum(kf, axis=1)  # [B,K,M]
  num = jnp.einsum("btkgm,bkmd->btkgd", qf, state)
  den = jnp.einsum("btkgm,bkm->btkg", qf, z)
  return num / jnp.maximum(den, eps)[..., None]


def _causal(q, k, v, kv_mask, projection, root, eps, c):
  """Chunked causal FAVOR+; see the module docstring for the per-row stabiliser μ_i."""
  B, T, N, H = q.shape
  K, Hv = k.shape[2], v.shape[-1]
  G, M = N // K, projection.shape[0]
  num_chunks = -(-T // c)
  pad = num_chunks * c - T
  if pad:
    widths = ((0, 0), (0, pad), (0, 0), (0, 0))
    q, k, v = jnp.pad(q, widths), jnp.pad(k, widths), jnp.pad(v, widths)
    kv_mask = jnp.pad(kv_mask, ((0, 0), (0, pad)))  # padded keys invisible
  chunks = lambda x: jnp.moveaxis(x.reshape(B, num_chunks, c, *x.shape[2:]), 1, 0)  # [nc,B,c,...]
  tril = jnp.tril(jnp.ones((c, c), bool))  # [i, j]: j <= i

  def step(carry, xs):
    state, z, m = carry  # [B,K,M,Hv], [B,K,M] in frame m [B,K]
    qc, kc, vc, valid_c = xs
    vc = vc.astype(jnp.float32)
    qf = _query_features(qc, projection, root).reshape(B, c, K, G, M)
    a = _exponents(kc, projection, root)  # [B,c,K,M]
    alpha = jnp.where(valid_c[:, :, None], jnp.max(a, axis=-1), -jnp.inf)  # [B,c,K]
    mu_seen = lax.stop_gradient(jnp.maximum(m[:, None], lax.cummax(alpha, axis=1)))  # prefix max, [B,c,K]
    mu = jnp.where(jnp.isfinite(mu_seen), mu_seen, 0.0)  # rows with no visible key yet (their sums stay 0)
    keep = valid_c[:, :, None, None]
    kf = jnp.where(keep, jnp.exp(jnp.where(keep, a, mu[..., None]) - mu[..., None]), 0.0) * M ** -0.5  # frame μ_j
    # Inter-chunk: the state (frame m) seen by row i in frame μ_i ≥ m.
    r = jnp.exp(m[:, None] - mu)[..., None]  # [B,c,K,1]
    num = jnp.einsum("bikgm,bkmd->bikgd", qf, state) * r[..., None]
    den = jnp.einsum("bikgm,bkm->bikg", qf, z) * r
    # Intra-chunk: masked quadratic form in feature space, pair (i, j<=i) rescaled by exp(μ_j − μ_i) ≤ 1.
    mu_t = jnp.swapaxes(mu, 1, 2)  # [B,K,c]
    pairs = tril & valid_c[:, None, None, :]  # [B,1,i,j]; an invisible j may sit in the floored frame 0
    shift = jnp.where(pairs, mu_t[:, :, None, :] - mu_t[:, :, :, None], 0.0)  # [B,K,i,j]
    scores = jnp.einsum("bikgm,bjkm->bkgij", qf, kf)
    weights = jnp.where(tril, scores * jnp.exp(shift)[:, :, None], 0.0)  # [B,K,G,i,j]
    num = num + jnp.einsum("bkgij,bjkd->bikgd", weights, vc)
    den = den + jnp.moveaxis(jnp.sum(weights, axis=-1), 3, 1)  # [B,c,K,G]
    out = num / jnp.maximum(den, eps)[..., None]
    # Carry the state into the frame of the chunk's last position.
    m_new = mu_seen[:, -1]  # [B,K]; -inf while no key was visible
    m_frame = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
    decay = jnp.exp(m - m_frame)  # ≤ 1 (0 before the first visible key)
    kf_new = kf * jnp.exp(mu - m_frame[:, None])[..., None]
    state = state * decay[..., None, None] + jnp.einsum("bjkm,bjkd->bkmd", kf_new, vc)
    z = z * decay[..., None] + jnp.sum(kf_new, axis=1)
    return (state, z, m_new), out

  init = (jnp.zeros((B, K, M, Hv), jnp.float32), jnp.zeros((B, K, M), jnp.float32),
          jnp.full((B, K), -jnp.inf, jnp.float32))
  masks = jnp.moveaxis(kv_mask.reshape(B, num_chunks, c), 1, 0)  # [nc,B,c]
  _, out = lax.scan(step, init, (chunks(q), chunks(k), chunks(v), masks))  # [nc,B,c,K,G,Hv]
  return jnp.moveaxis(out, 0, 1).reshape(B, num_chunks * c, N, Hv)[:, :T]
