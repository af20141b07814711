"""LSH attention: Kitaev, Kaiser & Levskaya 2020, "Reformer: The Efficient Transformer" (arXiv:2001.04451).

Angular locality-sensitive hashing (section 2, "LSH attention"): with a random
matrix R [H, b/2] (b buckets, b even), a vector x falls in bucket

    h(x) = argmax([x R ; −x R])                        (argmax over b values)

so that vectors pointing in similar directions tend to share a bucket. Rows are
sorted by bucket (stable: within a bucket by position), the sorted sequence is
cut into chunks of c, and each query attends to the keys of its own chunk and of
the previous chunk (the chunked set P̃_i of section 2; keys of another bucket
that land in that window are attended too: `attend_across_buckets=True` in Trax).
With n_hashes rounds (independent R's, "multi-round LSH attention") the rounds
are combined by their log-sum-exps (appendix A):

    o_i = Σ_r exp(z_i^r − z_i) o_i^r,    z_i = log Σ_r exp(z_i^r),

and a pair (i, j) found in several rounds is not counted several times: its
logit is lowered by log N_ij, N_ij = number of rounds r' in which j lies in i's
chunk window (the "duplicate count" of appendix A). Hence the combination is
*exactly* softmax attention over the union of the windows ∪_r P̃_i^r (with the
masks below) — in particular exact softmax attention when one chunk holds the
whole sequence, whatever the number of rounds.

Hashing keys, queries following: this function hashes the KEY of every position
(per kv head, with the same R for every batch row and kv head) and sorts a
position's queries (its G query heads) and its key/value with that one
permutation. That is exact Reformer under its shared-QK assumption (section 2:
k_j = q_j / |q_j|, so query and key of a position are in the same bucket; the
model passes the normalised queries as k). With separate q and k it is still a
valid sparse attention: every query attends within the chunk window of its own
position's key bucket.

Choices (each documented where it is implemented):
  * wrap-around: the first chunk's "previous chunk" is the last chunk of the same
    round (as in Trax, which wraps too — though Trax sorts all rounds as one
    sequence, so there the first chunk of round r looks back at round r−1; here
    windows never cross rounds). With a single chunk the previous chunk *is* the
    current one, so the window is that chunk alone (no key is seen twice); with
    two chunks each window is both chunks (again no key twice).
  * masks act on ORIGINAL positions: causal (key position ≤ query position),
    segment_ids (equal ids see each other; every id, 0 included, is an ordinary
    id), padded rows (T is padded to a multiple of c internally; padded keys are
    invisible, padded query rows are dropped).
  * mask_self (section 2, "shared-QK attention"): a position should not attend to
    itself unless nothing else is visible. As in the paper (appendix A, m_ij = 10⁵
    for i = j) the self logit is lowered by 1e5 — a finite penalty, not −inf — so
    a row whose only visible key is itself still returns its own value. The self
    pair also gets its log N_ii correction, so the identity above stays exact.
  * a row that sees no key returns zeros (never NaN); in self-attention a real
    row always sees at least itself (its own chunk, causal- and segment-visible),
    so only padded rows take that path.
  * buckets and sort permutations are integers under `stop_gradient`: gradients
    flow through the logits, the values and the round weights exp(z^r − z) only.

Shape names: B batch, T sequence length (self-attention, S = T), N query heads,
K kv heads, G = N // K query heads per kv head, H head dim (q, k), Hv value head
dim, R = n_hashes rounds, b n_buckets, c chunk size, C = ⌈T/c⌉ chunks, W window
(2c, or c when C = 1).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxformer.attention.api import check_qkv

DEFAULT_CHUNK_SIZE = 32
SELF_PENALTY = 1e5  # subtracted from the self logit when mask_self (Reformer, appendix A)


def _is_positive_int(x) -> bool:
  return not isinstance(x, bool) and isinstance(x, (int, np.integer)) and x >= 1


def lsh_rotations(key, n_hashes: int, head_dim: int, n_buckets: int):
  """Random rotations R [n_hashes, head_dim, n_buckets // 2] (float32, i.i.d. N(0, 1)) for `lsh_attention`.

  One independent R per hash round; n_buckets must be even (h(x) = argmax([xR; −xR]) has
  2·(n_buckets // 2) outcomes). Redraw by calling again with a new key (Reformer draws new
  rotations on every forward pass during training).
  """
  if not _is_positive_int(n_hashes):
    raise ValueError(f"n_hashes must be a positive int; got {n_hashes!r}")
  if not _is_positive_int(head_dim):
    raise ValueError(f"head_dim must be a positive int; got {head_dim!r}")
  if not _is_positive_int(n_buckets) or n_buckets % 2:
    raise ValueError(f"n_buckets must be a positive even int (angular LSH uses [xR; -xR]); got {n_buckets!r}")
  return jax.random.normal(key, (int(n_hashes), int(head_dim), int(n_buckets) // 2), jnp.float32)


def _check_rotations(rotations, head_dim):
  if getattr(rotations, "ndim", None) != 3 or rotations.shape[1] != head_dim or min(rotations.shape) < 1:
    raise ValueError(f"rotations must be [n_hashes, H, n_buckets // 2] with H={head_dim} "
                     f"(from lsh_rotations(key, n_hashes, {head_dim}, n_buckets)); "
                     f"got shape {getattr(rotations, 'shape', None)}")
  if not jnp.issubdtype(rotations.dtype, jnp.floating):
    raise ValueError(f"rotations must be floating point; got dtype {rotations.dtype}")


def lsh_buckets(x, rotations):
  """Angular LSH buckets h(x) = argmax([x R_r ; −x R_r]) for every round r.

  x [..., H], rotations [R, H, b/2] -> int32 [..., R] in [0, b). Computed in float32 with
  `Precision.HIGHEST` (the argmax is a hard decision); the result carries no gradient. The
  direction of x alone decides (positive rescaling of x does not change its buckets).
  """
  x = jnp.asarray(x)
  rotations = jnp.asarray(rotations)
  _check_rotations(rotations, x.shape[-1])
  xr = jnp.einsum("...h,rhm->...rm", x.astype(jnp.float32), rotations.astype(jnp.float32),
                  precision=lax.Precision.HIGHEST)
  return lax.stop_gradient(jnp.argmax(jnp.concatenate([xr, -xr], axis=-1), axis=-1).astype(jnp.int32))


def _check_args(q, k, v, rotations, segment_ids, chunk_size):
  if getattr(q, "ndim", None) == 4 and getattr(k, "ndim", None) == 4 and q.shape[1] != k.shape[1]:
    raise ValueError(f"lsh_attention is self-attention (one sequence is hashed and sorted): needs T == S, "
                     f"got T={q.shape[1]}, S={k.shape[1]}")
  B, T, _, _, _ = check_qkv(q, k, v, "lsh_attention")
  _check_rotations(rotations, q.shape[-1])
  if segment_ids is not None:
    if tuple(segment_ids.shape) != (B, T):
      raise ValueError(f"segment_ids must have shape [B,T]={B, T}; got {tuple(segment_ids.shape)}")
    if not jnp.issubdtype(segment_ids.dtype, jnp.integer):
      raise ValueError(f"segment_ids must be integers; got dtype {segment_ids.dtype}")
  if not _is_positive_int(chunk_size):
    raise ValueError(f"chunk_size must be a positive int; got {chunk_size!r}")


def _attend(logits, visible, values):
  """Masked softmax attention of one window per row, NaN-free for rows that see nothing.

  logits [..., G, c, W], visible [..., 1|G, c, W] (bool), values [..., W, Hv] (same leading dims) ->
  (out [..., G, c, Hv], lse [..., G, c]); a row without a visible key gets out = 0, lse = −inf.
  """
  row_max = jnp.max(jnp.where(visible, logits, -jnp.inf), axis=-1, keepdims=True)
  row_max = lax.stop_gradient(jnp.where(jnp.isfinite(row_max), row_max, 0.0))
  # Masked entries are moved to row_max before exp (so exp never overflows, nor does its gradient), then dropped.
  p = jnp.where(visible, jnp.exp(jnp.where(visible, logits, row_max) - row_max), 0.0)
  denom = jnp.sum(p, axis=-1)
  safe = jnp.where(denom > 0, denom, 1.0)
  out = jnp.einsum("...gij,...jv->...giv", p, values) / safe[..., None]
  lse = jnp.where(denom > 0, row_max[..., 0] + jnp.log(safe), -jnp.inf)
  return out, lse


def _combine_rounds(out, lse, axis):
  """Σ_r exp(lse_r − logsumexp_r lse_r) out_r over `axis` (out [..., Hv], lse [...]); rows where every lse_r
  is −inf give 0."""
  seen = jnp.isfinite(lse)
  top = jnp.max(jnp.where(seen, lse, -jnp.inf), axis=axis, keepdims=True)
  top = lax.stop_gradient(jnp.where(jnp.isfinite(top), top, 0.0))
  e = jnp.where(seen, jnp.exp(jnp.where(seen, lse, top) - top), 0.0)
  total = jnp.sum(e, axis=axis, keepdims=True)
  weights = e / jnp.where(total > 0, total, 1.0)
  return jnp.sum(weights[..., None] * out, axis=axis)


def lsh_attention(q, k, v, rotations, *, causal: bool = False, segment_ids=None,
                  chunk_size: int = DEFAULT_CHUNK_SIZE, scale: float | None = None, mask_self: bool = True):
  """Reformer LSH self-attention (Kitaev et al. 2020, section 2 and appendix A).

  q [B,T,N,H], k [B,T,K,H], v [B,T,K,Hv] (GQA: N % K == 0, query head n uses kv head
  n // G), rotations [R, H, b/2] (from `lsh_rotations`) -> out [B,T,N,Hv] in q's dtype;
  computed in float32 (logit/value matmuls follow jax_default_matmul_precision, hashing
  uses HIGHEST).

  For every round r the keys are hashed (`lsh_buckets(k, rotations)`, per kv head), the
  positions stably sorted by (bucket, position), the sorted sequence cut into chunks of
  c = min(chunk_size, T) (T padded to a multiple of c internally), and every query attends
  to its chunk and the previous one (wrapping around; a lone chunk attends to itself once).
  Logits are q·k·scale (scale defaults to H^-1/2) − log N_ij (N_ij: rounds in which j is in
  i's window) − 1e5·[i = j] (mask_self), restricted to visible pairs: causal (j ≤ i),
  same segment id (segment_ids [B,T] integers), real (not padded) keys. Rounds are combined
  by their log-sum-exps, so the result is exact softmax attention over the union of the
  rounds' windows (the module docstring lists the choices). Exact Reformer when k is the
  normalised q (shared-QK); with separate q, k each query uses its position's key bucket.

  Cost (W = 2c, or c when one chunk; C = ⌈T/c⌉, T' = C·c):
    * hashing: 2·B·T·K·H·R·(b/2) FLOPs; sorting: two argsorts of [B,K,R,T'] (O(T' log T')).
    * attention: per round and head 2·T'·W·(H + Hv) FLOPs, i.e. ≈ 2·B·N·R·T'·2c·(H + Hv)
      in all — O(R·T·c) instead of softmax's O(T²). Logits/probabilities [B,K,R,C,G,c,W]:
      B·N·R·T'·W floats live (linear in T for fixed c); gathered copies of q, k, v per round
      O(B·R·T'·(N·H + 2·K·(H + Hv))).
    * duplicate counts (R > 1 only): R compares per pair, B·K·R²·T'·W int/bool elements.
    * unsorting and combining the rounds: O(B·N·R·T·Hv).
    Reverse-mode autodiff keeps the probabilities: memory O(B·N·R·T·2c), no T×T matrix.

  Raises ValueError for inconsistent shapes, T != S, rotations not [R, H, b/2] for this
  H, a chunk_size that is not a positive int, and segment_ids not integer [B,T].
  """
  q, k, v, rotations = jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), jnp.asarray(rotations)
  if segment_ids is not None:
    segment_ids = jnp.asarray(segment_ids)
  _check_args(q, k, v, rotations, segment_ids, chunk_size)
  B, T, N, H = q.shape
  K, Hv, R = k.shape[2], v.shape[3], rotations.shape[0]
  G, n_buckets = N // K, 2 * rotations.shape[2]
  if T == 0:
    return jnp.zeros((B, T, N, Hv), q.dtype)
  scale = H ** -0.5 if scale is None else scale
  c = min(int(chunk_size), T)
  C = -(-T // c)
  Tp = C * c
  pad = Tp - T

  # Sort order per (batch, kv head, round): padded positions get bucket b, after every real one.
  buckets = jnp.moveaxis(lsh_buckets(k, rotations), 1, -1)  # [B,K,R,T]
  buckets = jnp.pad(buckets, [(0, 0)] * 3 + [(0, pad)], constant_values=n_buckets)
  perm = lax.stop_gradient(jnp.argsort(buckets, axis=-1, stable=True).astype(jnp.int32))  # sorted slot -> position
  rank = lax.stop_gradient(jnp.argsort(perm, axis=-1).astype(jnp.int32))  # position -> sorted slot

  def per_position(x):  # [B,T,K,...] -> [B,K,Tp,...], padded with zeros
    x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
    return jnp.moveaxis(x, 2, 1)

  # gather(x [B,K,Tp,...], idx [B,K,R,Tp]) -> [B,K,R,Tp,...]: x[b, k, idx[b, k, r, t]].
  gather = jax.vmap(jax.vmap(lambda x, idx: x[idx]))

  def chunked(x):  # [B,K,R,Tp,...] -> [B,K,R,C,c,...]
    return x.reshape(x.shape[:3] + (C, c) + x.shape[4:])

  def window(x):  # [B,K,R,C,c,...] -> [B,K,R,C,W,...]: own chunk, then the previous one (wrapping around)
    if C == 1:  # the previous chunk would be this chunk again: keep one copy
      return x
    return jnp.concatenate([x, jnp.roll(x, 1, axis=3)], axis=4)

  qs = chunked(gather(per_position(q.astype(jnp.float32).reshape(B, T, K, G, H)), perm))  # [B,K,R,C,c,G,H]
  ks = window(chunked(gather(per_position(k.astype(jnp.float32)), perm)))  # [B,K,R,C,W,H]
  vs = window(chunked(gather(per_position(v.astype(jnp.float32)), perm)))  # [B,K,R,C,W,Hv]
  logits = jnp.einsum("bkrnigh,bkrnjh->bkrngij", qs, ks) * scale  # [B,K,R,C,G,c,W]

  pos = chunked(perm)  # [B,K,R,C,c] original positions of the sorted slots
  pos_q, pos_k = pos[..., :, None], window(pos)[..., None, :]  # [B,K,R,C,c,1], [B,K,R,C,1,W]
  visible = (pos_q < T) & (pos_k < T)
  if causal:
    visible &= pos_k <= pos_q
  if segment_ids is not None:
    seg = jax.vmap(lambda s, p: s[p])(jnp.pad(segment_ids, [(0, 0), (0, pad)]), perm)  # [B,K,R,Tp]
    seg = chunked(seg)
    visible &= seg[..., :, None] == window(seg)[..., None, :]
  penalty = jnp.zeros(visible.shape, jnp.float32)
  if mask_self:
    penalty += jnp.where(pos_k == pos_q, SELF_PENALTY, 0.0)
  if R > 1:
    # N_ij = Σ_r' [chunk_r'(j) ∈ {chunk_r'(i), chunk_r'(i) − 1 mod C}]: rounds whose window of i holds j (≥ 1 here).
    chunk_of = jnp.moveaxis(rank // c, 2, -1)  # [B,K,Tp,R'] chunk of each position in every round
    ch = chunked(gather(chunk_of, perm))  # [B,K,R,C,c,R']
    ch_q, ch_k = ch[..., :, None, :], window(ch)[..., None, :, :]  # [B,K,R,C,c,1,R'], [B,K,R,C,1,W,R']
    shared = ch_k == ch_q
    if C > 1:
      shared |= ch_k == (ch_q - 1) % C
    penalty += jnp.log(jnp.maximum(jnp.sum(shared, axis=-1), 1).astype(jnp.float32))
  logits = logits - penalty[:, :, :, :, None]
  out, lse = _attend(logits, visible[:, :, :, :, None], vs)  # [B,K,R,C,G,c,Hv], [B,K,R,C,G,c]

  # Back to original positions, then combine the rounds.
  out = gather(jnp.swapaxes(out, 4, 5).reshape(B, K, R * Tp, G, Hv), rank + Tp * jnp.arange(R)[:, None])
  lse = gather(jnp.swapaxes(lse, 4, 5).reshape(B, K, R * Tp, G), rank + Tp * jnp.arange(R)[:, None])
  out = _combine_rounds(out, lse, axis=2)  # [B,K,Tp,G,Hv]
  return jnp.moveaxis(out[:, :, :T], 1, 2).reshape(B, T, N, Hv).astype(q.dtype)
